//! `gantry logs [-f] ID`: a job's output.

use std::io::Write;
use std::process::ExitCode;

use super::error::{Error, api};
use super::server::ServerArgs;
use super::server::follow_job;
use crate::client::blocking;

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
        follow_job(&client, &id, true, false, out).await?;
        return Ok(ExitCode::SUCCESS);
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
