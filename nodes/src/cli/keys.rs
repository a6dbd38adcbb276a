//! `gantry keys create|list|revoke`: API keys, through the gateway (admins only; the first
//! admin key with the bootstrap token `gantry up` wrote).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::error::{Error, api, io_context};
use super::output::out_line;
use super::server::{ServerArgs, get_for_table};
use crate::client::blocking;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (shown this once: it is stored only as a keyed hash).
    Create(CreateArgs),
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a key: requests with it are refused from now on.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        key_id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// admin (keys, nodes, every group), operator (nodes, cancel any job of its group),
    /// submitter (submit, cancel its own jobs) or viewer (read).
    #[arg(long)]
    pub role: String,
    /// The group whose jobs the key sees and touches.
    #[arg(long, default_value = "default")]
    pub group: String,
    /// A name to tell keys apart.
    #[arg(long)]
    pub name: Option<String>,
    /// Use the one-time bootstrap token `gantry up` wrote (the first admin key).
    #[arg(long)]
    pub bootstrap_token_file: Option<PathBuf>,
}

pub async fn keys(command: KeysCommand, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    match command {
        KeysCommand::Create(args) => create(args, out).await,
        KeysCommand::List { server } => list(&server, out).await,
        KeysCommand::Revoke { server, key_id } => {
            let client = server.client()?;
            let path = format!("/v1/keys/{key_id}/revoke");
            let reply = blocking(move || client.post(&path, &serde_json::json!({})))
                .await
                .map_err(api)?;
            out_line(out, format!("{key_id}: revoked"))?;
            if server.json {
                out_line(out, &reply)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(args: CreateArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let client = match &args.bootstrap_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(io_context(format!(
                "reading the bootstrap token {}",
                path.display()
            )))?;
            crate::client::Client::new(&args.server.server).with_key(Some(token.trim().to_owned()))
        }
        None => args.server.client()?,
    };
    let body = serde_json::json!({
        "role": args.role,
        "group": args.group,
        "name": args.name,
    });
    let reply = blocking(move || client.post("/v1/keys", &body))
        .await
        .map_err(api)?;
    if args.server.json {
        out_line(out, &reply)?;
    } else {
        eprintln!(
            "created key {} ({} of group {}); it is shown once, keep it secret:",
            reply["key_id"].as_str().unwrap_or(""),
            reply["role"].as_str().unwrap_or(""),
            reply["group"].as_str().unwrap_or(""),
        );
        out_line(out, reply["key"].as_str().unwrap_or(""))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(server: &ServerArgs, out: &mut (dyn Write + Send)) -> Result<ExitCode, Error> {
    let Some(reply) = get_for_table(server, "/v1/keys".into(), out).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    out_line(
        out,
        format!(
            "{:<16}  {:<20}  {:<9}  {:<16}  {}",
            "KEY ID", "NAME", "ROLE", "GROUP", "STATUS"
        ),
    )?;
    for k in reply["keys"].as_array().into_iter().flatten() {
        out_line(
            out,
            format!(
                "{:<16}  {:<20}  {:<9}  {:<16}  {}",
                k["key_id"].as_str().unwrap_or(""),
                k["name"].as_str().unwrap_or(""),
                k["role"].as_str().unwrap_or(""),
                k["group"].as_str().unwrap_or(""),
                if k["revoked_ns"].is_null() {
                    "active"
                } else {
                    "revoked"
                },
            ),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
