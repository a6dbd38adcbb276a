//! `gantry demo`: starts the embedded system and shows it doing real work — one job succeeds,
//! one fails and is retried until it is dead-lettered, one is cancelled while it runs — then
//! verifies the event log and stops.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use gantry_events::{EmbeddedLog, verify_log};
use serde_json::{Value, json};

use super::error::{Error, api};
use super::output::out_line as say;
use super::server::follow_job;
use crate::client::{Client, blocking};
use crate::up::{ExecutorChoice, UpOptions, up};

async fn submit(client: &Client, spec: Value) -> Result<String, Error> {
    let c = client.clone();
    let reply = blocking(move || c.post("/v1/jobs", &spec))
        .await
        .map_err(api)?;
    Ok(reply["id"].as_str().unwrap_or_default().to_owned())
}

pub async fn demo(
    data: PathBuf,
    executor: ExecutorChoice,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = UpOptions {
        data: data.clone(),
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|e| Error::Usage(format!("{e}")))?,
        executor,
        fake_gpus: None,
        max_body_bytes: 1 << 20,
        edge: crate::edge::EdgeOptions::default(),
        s3: Default::default(),
        profiles: Default::default(),
        retention: Default::default(),
        snapshot_every: crate::up::SNAPSHOT_EVERY_EVENTS,
        views_cache_bytes: gantry_projections::DEFAULT_CACHE_BYTES,
        audit: Default::default(),
    };
    let system = actix_rt::spawn(async move {
        up(options, Some(started_tx), async {
            let _ = stop_rx.await;
        })
        .await
    });
    let addr = match started_rx.await {
        Ok(addr) => addr,
        Err(_) => {
            return match system.await {
                Ok(Err(e)) => Err(Error::Usage(format!("gantry did not start: {e}"))),
                _ => Err(Error::Usage("gantry did not start".into())),
            };
        }
    };
    let client = Client::new(&format!("http://{addr}"));
    say(
        out,
        format!(
            "gantry is running on http://{addr} (data in {})",
            data.display()
        ),
    )?;

    let hello = submit(
        &client,
        json!({
            "name": "hello", "image": "busybox",
            "command": ["sh", "-c", "echo hello from gantry; echo the time is $(date -u +%T)"],
        }),
    )
    .await?;
    let flaky = submit(
        &client,
        json!({
            "name": "flaky", "image": "busybox",
            "command": ["sh", "-c", "echo trying once more; exit 3"],
            "retry": { "max_attempts": 3, "backoff_initial_ms": 200, "retry_user_failures": true },
        }),
    )
    .await?;
    let sleeper = submit(
        &client,
        json!({
            "name": "sleeper", "image": "busybox",
            "command": ["sh", "-c", "echo going to sleep; sleep 600"],
        }),
    )
    .await?;
    say(
        out,
        "submitted: hello (succeeds), flaky (exits 3, retried twice, then dead-lettered), sleeper (cancelled while it runs)",
    )?;

    // Cancel the sleeper once it runs.
    for _ in 0..100 {
        let c = client.clone();
        let path = format!("/v1/jobs/{sleeper}");
        let job = blocking(move || c.get(&path)).await.map_err(api)?;
        if job["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client.clone();
    let path = format!("/v1/jobs/{sleeper}/cancel");
    blocking(move || c.post(&path, &json!({ "reason": "demo" })))
        .await
        .map_err(api)?;

    for (name, id) in [("hello", &hello), ("flaky", &flaky), ("sleeper", &sleeper)] {
        say(out, format!("{name}:"))?;
        follow_job(&client, id, false, true, out).await?;
    }
    let c = client.clone();
    let path = format!("/v1/jobs/{hello}/logs");
    let logs = blocking(move || c.get_raw(&path)).await.map_err(api)?;
    say(out, "output of hello:")?;
    for line in String::from_utf8_lossy(&logs).lines() {
        say(out, format!("  {line}"))?;
    }

    let _ = stop_tx.send(());
    match system.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Usage(format!("gantry failed: {e}"))),
        Err(e) => return Err(Error::Usage(format!("gantry failed: {e}"))),
    }
    let log = EmbeddedLog::open_read_only(&data).await?;
    let verified = verify_log(&log, 1, None).await?;
    match &verified {
        Ok(v) => say(
            out,
            format!(
                "event log verified: {} events, head {} = {}",
                v.count, v.last_seq, v.head
            ),
        )?,
        Err(b) => say(
            out,
            format!("event log BROKEN at sequence {}: {}", b.seq, b.fault),
        )?,
    }
    say(out, "see every event with: gantry log tail")?;
    Ok(if verified.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
