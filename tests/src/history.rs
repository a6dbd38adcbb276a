//! Logs of job histories written straight into a data dir, for benchmarks that need a long
//! history without waiting for gantry to make one.

use std::path::Path;

use gantry_actors::spec::{GpuAsk, Limits, ResourceRequest, SubmitRequest};
use gantry_events::event::{JobId, JobPlaced, JobStarted, JobSubmitted, JobSucceeded, NodeJoined};
use gantry_events::{EmbeddedLog, Event, EventLog, NewEvent, Source};

/// The node the written jobs ran on.
pub const NODE: &str = "bench-node";

/// The request of job `i`: images, commands and labels vary (`team=t0`…`t4`); every 100th job
/// asks for a GPU no node has, so it stays queued (live state to carry over).
pub fn request(i: usize) -> SubmitRequest {
    SubmitRequest {
        name: format!("train-{i}"),
        image: format!("registry.example.com/team-{}/train:{}", i % 7, i % 3),
        command: vec!["python".into(), "train.py".into(), format!("--seed={i}")],
        env: [("EPOCHS".to_owned(), "10".to_owned())].into(),
        labels: [("team".to_owned(), format!("t{}", i % 5))].into(),
        resources: ResourceRequest {
            cpus: Some(1.0),
            memory_bytes: Some(1 << 30),
            gpus: (i % 100 == 99).then_some(GpuAsk {
                count: 1,
                ..GpuAsk::default()
            }),
        },
        ..SubmitRequest::default()
    }
}

/// Writes `events` events of job histories (submitted, placed, started, succeeded; every
/// 100th job only submitted) into the log of the data dir `data`. Returns the jobs' ids, in
/// order.
pub async fn write_job_histories(data: &Path, events: usize) -> Vec<JobId> {
    let log = EmbeddedLog::open(data).await.expect("log");
    let source = Source::new("bench", "scheduler");
    let node: Event = NodeJoined {
        node_id: NODE.into(),
        hostname: "bench".into(),
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        gpus: Vec::new(),
        executor: "process".into(),
        labels: Default::default(),
    }
    .into();
    let mut batch = vec![NewEvent::new(source.clone(), node)];
    let (mut written, mut jobs) = (1, 0);
    let mut ids = Vec::new();
    while written < events {
        let spec =
            gantry_actors::spec::validate(&request(jobs), &Limits::default()).expect("valid");
        let job_id = uuid::Uuid::now_v7();
        let live = jobs % 100 == 99;
        ids.push(job_id);
        jobs += 1;
        let mut history: Vec<Event> = vec![
            JobSubmitted {
                job_id,
                spec: Box::new(spec),
                by: None,
                group: None,
                pipeline: None,
            }
            .into(),
        ];
        if !live {
            history.push(
                JobPlaced {
                    job_id,
                    attempt: 1,
                    node_id: NODE.into(),
                    gpu_uuids: vec![],
                }
                .into(),
            );
            history.push(
                JobStarted {
                    image: None,
                    job_id,
                    attempt: 1,
                    node_id: NODE.into(),
                    handle: Some(format!("pid-{jobs}")),
                    limits_enforced: None,
                }
                .into(),
            );
            history.push(
                JobSucceeded {
                    job_id,
                    attempt: 1,
                    duration_ms: 1234,
                }
                .into(),
            );
        }
        for event in history {
            batch.push(NewEvent::new(source.clone(), event));
            written += 1;
        }
        if batch.len() >= 900 {
            log.append(std::mem::take(&mut batch))
                .await
                .expect("append");
        }
    }
    if !batch.is_empty() {
        log.append(batch).await.expect("append");
    }
    log.close().await.expect("close");
    ids
}
