//! `gantry logs [-f] ID`: a job's output.

use std::io::Write;
use std::process::ExitCode;

use super::error::{Error, api};
use super::server::ServerArgs;
use crate::client::{Client, ClientError, blocking};

/// `gantry logs [-f] ID`.
pub async fn logs(
    server: &ServerArgs,
    id: String,
    follow: bool,
    attempt: Option<u32>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let client = server.client()?;
    if follow {
        return follow_live(client, &id, attempt, out).await;
    }
    let path = match attempt {
        Some(a) => format!("/v1/jobs/{id}/logs?attempt={a}"),
        None => format!("/v1/jobs/{id}/logs"),
    };
    let text = blocking(move || client.get_raw(&path)).await.map_err(api)?;
    out.write_all(&text).map_err(|source| Error::Io {
        context: "writing output".into(),
        source,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `gantry logs -f`: the job's output live over `/v1/jobs/{id}/logs/ws`, attempt after attempt,
/// until the job ends.
async fn follow_live(
    client: Client,
    id: &str,
    attempt: Option<u32>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let path = match attempt {
        Some(a) => format!("/v1/jobs/{id}/logs/ws?attempt={a}"),
        None => format!("/v1/jobs/{id}/logs/ws"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = blocking(move || -> Result<(), ClientError> {
        let mut socket = client.websocket(&path)?;
        loop {
            let message = match socket.read() {
                Ok(message) => message,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(());
                }
                Err(e) => {
                    return Err(ClientError::Unreachable {
                        url: path.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            match message {
                tungstenite::Message::Text(text) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(data) = value["data"].as_str() {
                        let _ = tx.send(data.to_owned());
                    }
                    if value["end"] == true {
                        let _ = socket.close(None);
                        return Ok(());
                    }
                }
                tungstenite::Message::Close(frame) => {
                    return match frame {
                        Some(f) if !f.reason.is_empty() => Err(ClientError::Unreachable {
                            url: path.clone(),
                            reason: f.reason.to_string(),
                        }),
                        _ => Ok(()),
                    };
                }
                _ => {}
            }
        }
    });
    let printer = async {
        while let Some(data) = rx.recv().await {
            out.write_all(data.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| Error::Io {
                    context: "writing output".into(),
                    source,
                })?;
        }
        Ok::<(), Error>(())
    };
    let (read, printed) = futures::join!(reader, printer);
    printed?;
    read.map_err(api)?;
    Ok(ExitCode::SUCCESS)
}
