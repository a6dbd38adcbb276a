//! `gantry cancel ID`.

use std::io::Write;
use std::process::ExitCode;

use super::error::Error;
use super::server::{ServerArgs, post_with_reason};

/// `gantry cancel ID`.
pub async fn cancel(
    server: &ServerArgs,
    id: String,
    reason: Option<String>,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    post_with_reason(
        server,
        format!("/v1/jobs/{id}/cancel"),
        reason,
        "state",
        out,
    )
    .await
}
