//! The `idguard` binary: parses the command line, sets up logging and runs the command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use idguard::cli::{Cli, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idguard: cannot start the async runtime: {error}");
            return ExitCode::from(6);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("idguard: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
