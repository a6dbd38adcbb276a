//! The `gantry` binary: parses arguments, sets up logging, runs the command.

use std::process::ExitCode;

use gantry_nodes::cli;

fn main() -> ExitCode {
    cli::main()
}
