//! Golden files: one encoded entry per event type and version, checked in under
//! `events/testdata/golden/`. Each must keep decoding, and keep hashing to the value recorded in
//! `hashes.txt`, in every future build. Add files (only for a new type or version, never to
//! paper over a change) with `GANTRY_BLESS=1 cargo test -p gantry-events --test golden`;
//! blessing never overwrites an existing file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use gantry_events::event::{
    ALL_TYPES, ArtifactStored, AuditCheckpointed, FailureCause, Gpu, GpuRequest, InputRef,
    JobCancelRequested, JobCancelled, JobDeadLettered, JobFailed, JobPlaced, JobRetryScheduled,
    JobSpec, JobStarted, JobSubmitted, JobSucceeded, JobWaiting, KeyCreated, KeyRevoked, Network,
    NodeCordoned, NodeDrained, NodeGpusObserved, NodeJoined, NodeLost, NodeUncordoned,
    PendingReason, Resources, RetryPolicy, SecretDeleted, SecretRef, SecretSet,
};
use gantry_events::event::{
    ArtifactPruned, PipelineCancelled, PipelineStage, PipelineStageSkipped, PipelineSubmitted,
    RunIf, StageInput, StageOf, WebhookCreated, WebhookDeleted,
};
use gantry_events::{Entry, Event, Hash, NewEvent, Source, seal};
use uuid::Uuid;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn gpu() -> Gpu {
    Gpu {
        uuid: "GPU-5f1e7c2a-0000-4000-8000-000000000001".into(),
        name: "NVIDIA A100-SXM4-80GB".into(),
        memory_bytes: 80 << 30,
        utilisation_pct: Some(12),
        driver_version: Some("550.54.15".into()),
    }
}

/// One sample of every event type, with every optional field filled in.
fn samples() -> Vec<Event> {
    let job = Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
    let spec = JobSpec {
        name: "train-resnet".into(),
        image: "registry.example.com/ml/train:1.4".into(),
        command: vec!["python".into()],
        args: vec!["train.py".into(), "--epochs=3".into()],
        env: BTreeMap::from([("SEED".into(), "7".into())]),
        working_dir: Some("/work".into()),
        resources: Resources {
            cpu_millis: 4000,
            memory_bytes: 16 << 30,
            gpus: GpuRequest {
                count: 1,
                model: Some("A100".into()),
                min_memory_bytes: Some(40 << 30),
            },
        },
        timeout_secs: Some(3600),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            retry_user_failures: true,
        },
        priority: 5,
        queue: "research".into(),
        labels: BTreeMap::from([("team".into(), "vision".into())]),
        network: Network::Bridge,
        idempotency_key: Some("train-2026-11-22".into()),
        secrets: BTreeMap::new(),
        inputs: Vec::new(),
        artifact_ttl_secs: None,
    };
    let pipeline = Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0002);
    let stage_spec = JobSpec {
        name: "prepare".into(),
        image: "registry.example.com/ml/prep:2".into(),
        command: vec!["sh".into(), "-c".into(), "make data".into()],
        args: Vec::new(),
        env: BTreeMap::new(),
        working_dir: None,
        resources: Resources::default(),
        timeout_secs: None,
        retry: RetryPolicy::default(),
        priority: 0,
        queue: "default".into(),
        labels: BTreeMap::new(),
        network: Network::None,
        idempotency_key: None,
        secrets: BTreeMap::new(),
        inputs: Vec::new(),
        artifact_ttl_secs: None,
    };
    vec![
        // `by` and `group` (and the other `by` fields below) came later as optional fields
        // written only when set; these v1 samples keep them unset so their files stay as they
        // were written. `optional_fields_round_trip` covers them set (and `pipeline`).
        JobSubmitted {
            job_id: job,
            spec: Box::new(spec),
            by: None,
            group: None,
            pipeline: None,
        }
        .into(),
        JobPlaced {
            job_id: job,
            attempt: 1,
            node_id: "node-a".into(),
            gpu_uuids: vec![gpu().uuid],
        }
        .into(),
        JobStarted {
            image: None,
            job_id: job,
            attempt: 1,
            node_id: "node-a".into(),
            handle: Some("c0ffee".into()),
            limits_enforced: None,
        }
        .into(),
        JobSucceeded {
            job_id: job,
            attempt: 2,
            duration_ms: 61_234,
        }
        .into(),
        JobFailed {
            job_id: job,
            attempt: 1,
            cause: FailureCause::NonZeroExit { code: 137 },
            duration_ms: Some(1200),
        }
        .into(),
        JobRetryScheduled {
            job_id: job,
            next_attempt: 2,
            not_before_ms: 1_795_000_000_000,
        }
        .into(),
        JobCancelRequested {
            job_id: job,
            reason: Some("superseded".into()),
            by: None,
        }
        .into(),
        JobCancelled {
            job_id: job,
            attempt: Some(2),
        }
        .into(),
        JobDeadLettered {
            job_id: job,
            attempts: 3,
            last_cause: FailureCause::ImageUnavailable {
                image: "registry.example.com/ml/train:1.4".into(),
                reason: "pull refused".into(),
            },
        }
        .into(),
        NodeJoined {
            node_id: "node-a".into(),
            hostname: "gpu-host-01".into(),
            cpu_millis: 64_000,
            memory_bytes: 512 << 30,
            gpus: vec![gpu()],
            executor: "docker".into(),
            labels: BTreeMap::from([("zone".into(), "eu-1".into())]),
        }
        .into(),
        NodeGpusObserved {
            node_id: "node-a".into(),
            gpus: vec![gpu()],
        }
        .into(),
        NodeLost {
            node_id: "node-a".into(),
            reason: "no heartbeat for 30s".into(),
        }
        .into(),
        NodeDrained {
            node_id: "node-a".into(),
            reason: "maintenance".into(),
            by: None,
        }
        .into(),
        ArtifactStored {
            job_id: job,
            attempt: 2,
            name: "model.pt".into(),
            location: "artifacts/0192/model.pt".into(),
            sha256: Hash::of(b"model"),
            size_bytes: 5,
            content_type: Some("application/octet-stream".into()),
        }
        .into(),
        AuditCheckpointed {
            through_seq: 1000,
            through_hash: Hash::of(b"head"),
            events_verified: 1000,
            root: None,
            note: None,
        }
        .into(),
        // Added after the first golden files: new samples go last, so earlier files keep
        // their sequence numbers and hashes.
        JobWaiting {
            job_id: job,
            reason: PendingReason {
                code: "no_gpu_model".into(),
                message: "no node has a GPU matching model 'A100' (the fleet has: H100 ×2)".into(),
                unschedulable: true,
            },
        }
        .into(),
        NodeCordoned {
            node_id: "node-a".into(),
            reason: "disk replacement".into(),
            by: None,
        }
        .into(),
        NodeUncordoned {
            node_id: "node-a".into(),
            by: None,
        }
        .into(),
        KeyCreated {
            key_id: "5f1e7c2a00000001".into(),
            name: "ci".into(),
            role: "submitter".into(),
            group: "vision".into(),
            hash: Hash::of(b"keyed hash"),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        KeyRevoked {
            key_id: "5f1e7c2a00000001".into(),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        SecretSet {
            name: "vision/hf-token".into(),
            hash: Hash::of(b"keyed value hash"),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        SecretDeleted {
            name: "vision/hf-token".into(),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        ArtifactPruned {
            job_id: job,
            attempt: 1,
            name: "ckpt/model.pt".into(),
            sha256: Hash::of(b"model"),
            reason: "ttl 7d after the job ended".into(),
        }
        .into(),
        PipelineSubmitted {
            pipeline_id: pipeline,
            name: "prepare-then-train".into(),
            stages: vec![
                PipelineStage {
                    name: "prepare".into(),
                    after: Vec::new(),
                    run_if: RunIf::OnSuccess,
                    inputs: Vec::new(),
                    spec: Box::new(stage_spec.clone()),
                },
                PipelineStage {
                    name: "train".into(),
                    after: vec!["prepare".into()],
                    run_if: RunIf::Always,
                    inputs: vec![StageInput {
                        stage: "prepare".into(),
                        artifact: "data.csv".into(),
                        path: "data/train.csv".into(),
                    }],
                    spec: Box::new(stage_spec),
                },
            ],
            by: Some("5f1e7c2a00000000".into()),
            group: Some("vision".into()),
        }
        .into(),
        PipelineStageSkipped {
            pipeline_id: pipeline,
            stage: "train".into(),
            reason: "dependency prepare did not succeed (dead_lettered)".into(),
        }
        .into(),
        PipelineCancelled {
            pipeline_id: pipeline,
            reason: Some("superseded".into()),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        WebhookCreated {
            webhook_id: "a1b2c3d4e5f60718".into(),
            url: "https://hooks.example.com/gantry".into(),
            types: vec!["job.succeeded".into(), "job.dead_lettered".into()],
            job: None,
            queue: Some("research".into()),
            group: "vision".into(),
            secret_hash: Hash::of(b"keyed webhook secret"),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
        WebhookDeleted {
            webhook_id: "a1b2c3d4e5f60718".into(),
            by: Some("5f1e7c2a00000000".into()),
        }
        .into(),
    ]
}

#[test]
fn optional_fields_round_trip() {
    let job = Uuid::from_u128(7);
    let submitted = JobSubmitted {
        job_id: job,
        spec: Box::new(JobSpec {
            name: "n".into(),
            image: "i".into(),
            command: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            resources: Resources::default(),
            timeout_secs: None,
            retry: RetryPolicy::default(),
            priority: 0,
            queue: "default".into(),
            labels: BTreeMap::new(),
            network: Network::None,
            idempotency_key: None,
            secrets: BTreeMap::from([(
                "HF_TOKEN".into(),
                SecretRef {
                    name: "vision/hf-token".into(),
                    hash: Hash::of(b"keyed"),
                },
            )]),
            inputs: vec![InputRef {
                from: Uuid::from_u128(6),
                artifact: "ckpt/model.pt".into(),
                path: "model.pt".into(),
                sha256: Hash::of(b"model"),
                size_bytes: 5,
                location: format!("sha256/{}", Hash::of(b"model").to_hex()),
            }],
            artifact_ttl_secs: Some(7 * 24 * 3600),
        }),
        by: Some("5f1e7c2a00000001".into()),
        group: Some("vision".into()),
        pipeline: Some(StageOf {
            pipeline_id: Uuid::from_u128(8),
            stage: "train".into(),
        }),
    };
    for event in [
        Event::from(submitted),
        JobCancelRequested {
            job_id: job,
            reason: None,
            by: Some("k".into()),
        }
        .into(),
        NodeCordoned {
            node_id: "n".into(),
            reason: "r".into(),
            by: Some("k".into()),
        }
        .into(),
    ] {
        let (entry, _) = sealed(0, event.clone());
        assert_eq!(entry.open().expect("decode").event, event);
    }
}

fn sealed(i: usize, event: Event) -> (Entry, Hash) {
    let new = NewEvent {
        id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0001_0000 + i as u128),
        time_ns: 1_795_000_000_000_000_000 + i as u64,
        source: Source::new("node-a", "golden"),
        event,
    };
    seal(i as u64 + 1, &Hash::of(b"golden prev"), &new).expect("seal")
}

fn file_name(type_name: &str, version: u32) -> String {
    format!("{type_name}.v{version}.bin")
}

fn recorded_hashes() -> BTreeMap<String, Hash> {
    let text = std::fs::read_to_string(dir().join("hashes.txt")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (file, hash) = line.split_once(' ').expect("`file hash` lines");
            (
                file.to_owned(),
                Hash::from_hex(hash.trim()).expect("hex hash"),
            )
        })
        .collect()
}

fn bless() {
    let mut recorded = recorded_hashes();
    for (i, event) in samples().into_iter().enumerate() {
        let name = file_name(event.type_name(), event.version());
        let path = dir().join(&name);
        if !path.exists() {
            let (entry, hash) = sealed(i, event);
            std::fs::create_dir_all(dir()).expect("mkdir");
            std::fs::write(&path, &entry.bytes).expect("write golden");
            recorded.insert(name, hash);
        }
    }
    let mut lines =
        vec!["# golden file, then the chain hash it must keep (see ../../FORMAT.md)".to_owned()];
    lines.extend(recorded.iter().map(|(f, h)| format!("{f} {h}")));
    std::fs::write(dir().join("hashes.txt"), lines.join("\n") + "\n").expect("write hashes");
}

#[test]
fn samples_cover_every_type() {
    let covered: BTreeSet<_> = samples()
        .iter()
        .map(|e| (e.type_name(), e.version()))
        .collect();
    let all: BTreeSet<_> = ALL_TYPES.iter().copied().collect();
    assert_eq!(covered, all, "add a sample for every new event type");
}

#[test]
fn golden_files_decode_and_hash_as_recorded() {
    if std::env::var_os("GANTRY_BLESS").is_some() {
        bless();
    }
    let recorded = recorded_hashes();
    // Every type and version this build writes has a golden file.
    for (type_name, version) in ALL_TYPES {
        let name = file_name(type_name, *version);
        assert!(recorded.contains_key(&name), "no golden file for {name}");
    }
    // Every golden file ever recorded still decodes and hashes the same.
    for (name, hash) in &recorded {
        let bytes = std::fs::read(dir().join(name)).expect("golden file present");
        let entry = Entry {
            seq: 0,
            bytes: bytes.into(),
        };
        let view = entry.view().expect("envelope decodes");
        assert_eq!(entry.stored_hash().expect("hash"), *hash, "{name}: stored");
        assert_eq!(
            Hash::chain(&view.prev, entry.record().expect("record")),
            *hash,
            "{name}: recomputed"
        );
        let envelope = entry.open().expect("payload decodes");
        assert_eq!(envelope.source, Source::new("node-a", "golden"), "{name}");
        assert!(
            name.starts_with(&format!("{}.v{}.", envelope.type_name, envelope.version)),
            "{name}"
        );
    }
    // Today's encoder still writes the current versions byte for byte.
    for (i, event) in samples().into_iter().enumerate() {
        let name = file_name(event.type_name(), event.version());
        let (entry, _) = sealed(i, event.clone());
        let golden = std::fs::read(dir().join(&name)).expect("golden file present");
        assert_eq!(
            entry.bytes.as_ref(),
            &golden[..],
            "{name}: encoding changed"
        );
        assert_eq!(
            entry.open().expect("decode").event,
            event,
            "{name}: round trip"
        );
    }
}
