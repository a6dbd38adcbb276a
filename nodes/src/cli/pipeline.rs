//! `gantry pipeline submit FILE [--dry-run] [--wait]`, `gantry pipeline show ID`,
//! `gantry pipeline cancel ID`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use gantry_actors::pipeline::PipelineRequest;
use serde_json::Value;

use super::error::{Error, api};
use super::output::out_line;
use super::server::{ServerArgs, get_for_table, post_with_reason};
use crate::client::blocking;

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Submit a pipeline from a file (JSON, or TOML when it ends in .toml).
    Submit {
        #[command(flatten)]
        server: ServerArgs,
        file: PathBuf,
        /// Check it and print the order and the resolved stages, without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Wait for the pipeline to end; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Show a pipeline and its stages.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Cancel a pipeline: no stage starts any more, running stages are cancelled.
    Cancel {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        reason: Option<String>,
        id: String,
    },
}

pub async fn pipeline(
    command: PipelineCommand,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    match command {
        PipelineCommand::Submit {
            server,
            file,
            dry_run,
            wait,
        } => submit(&server, &file, dry_run, wait, out).await,
        PipelineCommand::Show { server, id } => {
            let Some(view) = get_for_table(&server, format!("/v1/pipelines/{id}"), out).await?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            print_view(&view, out)?;
            Ok(ExitCode::SUCCESS)
        }
        PipelineCommand::Cancel { server, reason, id } => {
            post_with_reason(
                &server,
                format!("/v1/pipelines/{id}/cancel"),
                reason,
                "state",
                out,
            )
            .await
        }
    }
}

/// Reads a pipeline file (unknown fields refused, as the gateway does).
pub fn read_pipeline(path: &PathBuf) -> Result<PipelineRequest, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("reading {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    } else {
        serde_json::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
    }
}

async fn submit(
    server: &ServerArgs,
    file: &PathBuf,
    dry_run: bool,
    wait: bool,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    let request = read_pipeline(file)?;
    let body = serde_json::to_value(&request).map_err(|e| Error::Usage(e.to_string()))?;
    let client = server.client()?;
    let path = if dry_run {
        "/v1/pipelines?dry_run=true"
    } else {
        "/v1/pipelines"
    };
    let c = client.clone();
    let reply = blocking(move || c.post(path, &body)).await.map_err(api)?;
    if server.json && !wait {
        out_line(out, &reply)?;
        return Ok(ExitCode::SUCCESS);
    }
    let order: Vec<&str> = reply["order"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if dry_run {
        out_line(out, format!("order: {}", order.join(" → ")))?;
        out_line(
            out,
            serde_json::to_string_pretty(&reply["stages"]).unwrap_or_default(),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let id = reply["id"].as_str().unwrap_or_default().to_owned();
    if !server.json {
        out_line(
            out,
            format!("submitted pipeline {id}: {}", order.join(" → ")),
        )?;
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        let c = client.clone();
        let path = format!("/v1/pipelines/{id}");
        let view = blocking(move || c.get(&path)).await.map_err(api)?;
        let line = stage_line(&view);
        if !server.json && line != last {
            out_line(out, format!("  {line}"))?;
            last = line;
        }
        if view["state"] != "running" {
            if server.json {
                out_line(out, &view)?;
            }
            return Ok(if view["state"] == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `name: state` for each stage, on one line.
fn stage_line(view: &Value) -> String {
    view["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}: {}",
                s["name"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_view(view: &Value, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    out_line(
        out,
        format!(
            "pipeline {} ({}): {}",
            view["id"].as_str().unwrap_or(""),
            view["name"].as_str().unwrap_or(""),
            view["state"].as_str().unwrap_or("")
        ),
    )?;
    out_line(
        out,
        format!(
            "{:<24}  {:<14}  {:<36}  {}",
            "STAGE", "STATE", "JOB", "AFTER"
        ),
    )?;
    for s in view["stages"].as_array().into_iter().flatten() {
        let after: Vec<&str> = s["after"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out_line(
            out,
            format!(
                "{:<24}  {:<14}  {:<36}  {}",
                s["name"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
                s["job_id"].as_str().unwrap_or("-"),
                after.join(",")
            ),
        )?;
        if let Some(reason) = s["skipped"].as_str() {
            out_line(out, format!("{:<24}  skipped: {reason}", ""))?;
        }
    }
    Ok(())
}
