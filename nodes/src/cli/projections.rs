//! `gantry projections rebuild`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use gantry_events::{EmbeddedLog, EventLog};

use super::error::Error;
use super::output::write_out;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Delete the views and rebuild them from the log (with `gantry up` stopped).
    Rebuild {
        #[arg(long, env = "GANTRY_DATA", default_value = "gantry-data")]
        data: PathBuf,
    },
}

pub(crate) async fn rebuild(
    data: PathBuf,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    // The writable open takes the lock: refuses while `gantry up` runs on this data.
    let log = EmbeddedLog::open(&data).await?;
    let views = gantry_projections::Projections::open(data.join("views"))
        .map_err(|e| Error::Usage(e.to_string()))?;
    views.clear().map_err(|e| Error::Usage(e.to_string()))?;
    let head = log.head().await?.seq;
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let checkpoint = views
        .catch_up(&log, |seq, _| bar.set_position(seq))
        .await
        .map_err(|e| Error::Usage(e.to_string()))?;
    bar.finish_and_clear();
    log.close().await?;
    write_out(
        out,
        format_args!(
            "rebuilt the views from {} events in {:.2?}, checkpoint {} = {}\n",
            checkpoint.seq,
            started.elapsed(),
            checkpoint.seq,
            checkpoint.hash
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}
