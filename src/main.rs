//! The `idguard` binary: parses the command line, sets up logging and runs the command.

use std::process::ExitCode;

use idguard::cli::{parse, run};

/// mimalloc instead of glibc's malloc. A batch of checks decodes thousands of small strings and
/// frees them together; glibc's free lists (chunk unlinking, fast-bin consolidation) took about a
/// fifth of the server's CPU time on `CheckBatch`. The load harness (`idguard bench`) gets it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cli = match parse(&args) {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("idguard: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idguard: cannot start the async runtime: {error}");
            return ExitCode::from(6);
        }
    };
    // Inside the runtime: an OpenTelemetry exporter's channel lives on it.
    let telemetry = match runtime.block_on(async { idguard::telemetry::init(cli.log_format) }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("idguard: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("idguard: {error}");
            ExitCode::from(error.exit_code())
        }
    };
    // Sends the spans still queued while the runtime still runs the exporter's channel.
    drop(telemetry);
    code
}
