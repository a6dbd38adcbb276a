//! The `gantry` binary: parses arguments, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use gantry_nodes::cli::{self, Cli};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // One actix System: the actors, the gateway and every command run inside it.
    actix_rt::System::new().block_on(async move {
        let mut stdout = std::io::stdout();
        match cli::run(cli, &mut stdout).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("gantry: {error}");
                ExitCode::from(cli::EXIT_ERROR)
            }
        }
    })
}
