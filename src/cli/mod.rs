//! The `idguard` command line: the server, and client commands for shell users and scripts, one
//! file per command; [`client`] reaches a server, [`render`] prints what it answers.
//!
//! Exit codes, so scripts can act on the outcome: 0 success (card valid); 1 card invalid;
//! 2 bad input (a usage error or `INVALID_ARGUMENT`); 3 server unreachable or unavailable;
//! 4 no record (`NOT_FOUND`); 5 `report_id` already used for other content (`ALREADY_EXISTS`);
//! 6 any other server error; 7 not authenticated or not permitted.

mod admin;
mod bench;
mod check;
mod client;
mod error;
mod generate;
mod import;
mod record;
mod render;
mod report;
mod serve;
mod submit;
mod verdict_file;
mod verify;

use clap::{Parser, Subcommand};

pub use error::CliError;

use crate::config::ServeConfig;

/// The whole command line: global options, then one command.
#[derive(Debug, Parser)]
#[command(
    name = "idguard",
    version,
    about = "National registry of invalid resident identity cards"
)]
pub struct Cli {
    /// Log lines as text (coloured on a terminal) or as JSON objects; the level comes from
    /// `RUST_LOG` (default `info`).
    #[arg(
        long,
        global = true,
        env = "IDGUARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What `idguard` is asked to do; each command's arguments and code are in its own file.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service on an embedded RocksDB data dir.
    Serve(ServeConfig),
    /// Ask whether a card may be accepted (exit 0 valid, 1 invalid).
    Check(check::CheckArgs),
    /// Save the server's verdict signing keys as JSON, for `idguard verify`.
    SigningKeys(verify::SigningKeysArgs),
    /// Check a saved verdict's signature offline (exit 0 genuine, 1 not).
    Verify(verify::VerifyArgs),
    /// Have the server write a consistent backup of the registry while it keeps serving (admin).
    Backup(admin::BackupArgs),
    /// Restore a backup into a new data dir, offline; start `idguard serve` on it afterwards.
    Restore(admin::RestoreArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// Read a bearer token on standard input and print its SHA-256, as the access policy's
    /// `token_sha256` holds it.
    HashToken,
    /// Send a registry event (one subcommand per kind).
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Send export files (NDJSON, or CSV by a `.csv` name) over `Submit`, as a reporter replaying
    /// a backlog would; refused records are listed with their line (exit 2 if any).
    Submit(submit::SubmitArgs),
    /// Bulk-load export files into a data dir, offline (no server may be running on it); refused
    /// records are listed in a reject file (exit 2 if any).
    Import(import::ImportArgs),
    /// Write a synthetic registry export and a check workload (deterministic for a seed).
    Gen(generate::GenArgs),
    /// Drive a running server with a check workload and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Show every card known for a number and every event that touched it.
    Record(record::RecordArgs),
}

/// Parses the command line, with the `--config` file's settings (or `IDGUARD_CONFIG`'s) as the
/// defaults of `serve`. Exits, as clap does, on a usage error.
pub fn parse(args: &[String]) -> Result<Cli, crate::config::ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let serving = args.iter().skip(1).any(|arg| arg == "serve");
    if let (true, Some(path)) = (serving, crate::config::config_file_in(args)) {
        let serve = serve::serve_command();
        let (serve, _) = crate::config::with_file_defaults(serve, &path)?;
        command = command.mut_subcommand("serve", |_| serve);
    }
    let matches = command.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit()))
}

/// Runs a command; `Ok` carries the exit code of a command that ran (1: the card is invalid).
pub async fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Serve(config) => serve::run(config).await,
        Command::Check(args) => check::run(args).await,
        Command::SigningKeys(args) => verify::save_keys(args).await,
        Command::Verify(args) => verify::run(&args),
        Command::Backup(args) => admin::backup(args).await,
        Command::Restore(args) => admin::restore(args).await,
        Command::Config(serve::ConfigCommand::Check { file }) => serve::check_config(&file),
        Command::HashToken => admin::hash_token(),
        Command::Report(report) => report::run(report).await,
        Command::Submit(args) => submit::run(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Gen(args) => generate::run(&args),
        Command::Bench(args) => bench::run(args).await,
        Command::Record(args) => record::run(args).await,
    }
}
