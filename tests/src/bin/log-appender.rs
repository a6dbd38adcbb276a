//! Test helper process: appends events as fast as it can and prints one line per acknowledged
//! event (`<seq> <hash>`), so a test can `kill -9` it and check that every acknowledged event
//! survived.
//!
//! Usage: `log-appender --data DIR` or `log-appender --nats URL`.

use std::io::Write;
use std::sync::Arc;

use gantry_events::Source;
use gantry_events::event::NodeLost;
use gantry_nodes::cli::{Access, StoreArgs, open_log};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut store = StoreArgs {
        data: "gantry-data".into(),
        nats: None,
        stream: "GANTRY_EVENTS".into(),
    };
    match args.get(1).map(String::as_str) {
        Some("--data") => store.data = args.get(2).cloned().unwrap_or_default().into(),
        Some("--nats") => store.nats = args.get(2).cloned(),
        _ => anyhow::bail!("usage: log-appender --data DIR | --nats URL"),
    }
    let log = open_log(&store, Access::ReadWrite).await?;
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let log = log.clone();
        let stdout = stdout.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let size = 1 + (i % 3) as usize;
                let batch = (0..size)
                    .map(|j| {
                        gantry_events::NewEvent::new(
                            Source::new(format!("appender-{writer}"), "test"),
                            NodeLost {
                                node_id: format!("{writer}:{i}:{j}"),
                                reason: "kill -9 test".into(),
                            },
                        )
                    })
                    .collect();
                let appended = log.append(batch).await?;
                let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
                for a in appended {
                    writeln!(out, "{} {}", a.seq, a.hash)?;
                }
                out.flush()?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
