//! `gantry secrets set|list|delete`: the secrets of the key's group, through the gateway.
//! A value is read from stdin or a file, never from a flag (which the process list shows).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::error::{Error, api, io_context};
use super::output::out_line;
use super::server::ServerArgs;
use crate::client::blocking;

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store (or replace) a secret; the value comes from stdin or --from-file.
    Set {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
        /// Read the value from this file instead of stdin (a trailing newline is dropped).
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// The names of the group's secrets (never their values).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a secret: jobs naming it can no longer start.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
    },
}

pub async fn secrets(
    command: SecretsCommand,
    out: &mut (dyn Write + Send),
) -> Result<ExitCode, Error> {
    match command {
        SecretsCommand::Set {
            server,
            name,
            from_file,
        } => {
            let mut value = match &from_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(io_context(format!("reading {}", path.display())))?,
                None => {
                    let mut value = String::new();
                    std::io::stdin()
                        .read_to_string(&mut value)
                        .map_err(io_context("reading the value from stdin"))?;
                    value
                }
            };
            if value.ends_with('\n') {
                value.pop();
            }
            let client = server.client()?;
            let path = format!("/v1/secrets/{name}");
            let body = serde_json::json!({ "value": value });
            let reply = blocking(move || client.put(&path, &body))
                .await
                .map_err(api)?;
            out_line(out, format!("{name}: stored"))?;
            if server.json {
                out_line(out, &reply)?;
            }
        }
        SecretsCommand::List { server } => {
            let client = server.client()?;
            let reply = blocking(move || client.get("/v1/secrets"))
                .await
                .map_err(api)?;
            if server.json {
                out_line(out, &reply)?;
            } else {
                for name in reply["secrets"].as_array().into_iter().flatten() {
                    out_line(out, name.as_str().unwrap_or(""))?;
                }
            }
        }
        SecretsCommand::Delete { server, name } => {
            let client = server.client()?;
            let path = format!("/v1/secrets/{name}");
            blocking(move || client.delete(&path)).await.map_err(api)?;
            out_line(out, format!("{name}: deleted"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
