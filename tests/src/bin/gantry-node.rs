//! The `gantry` binary under a test-only name, so integration tests can run it as a process
//! (cargo only hands a package's tests the paths of its own binaries).

fn main() -> std::process::ExitCode {
    gantry_nodes::cli::main()
}
