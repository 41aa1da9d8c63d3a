//! `idguard gen`: a synthetic registry export and a check workload, deterministic for a seed.

use clap::Args;

use super::CliError;
use crate::tools::synthetic::{Format, Generator, generate};

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Directory for `events.ndjson` / `events.csv` and `queries.csv`; created when missing.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The day the registry is generated as of, YYYYMMDD (fixed by default, for determinism).
    #[arg(long, value_parser = parse_day, default_value = "20261101")]
    pub as_of: time::Date,
    /// Export formats to write (repeat for both).
    #[arg(long, value_enum, default_values_t = [Format::Ndjson])]
    pub format: Vec<Format>,
    /// Number of checks in `queries.csv`.
    #[arg(long, default_value_t = 1_000_000)]
    pub queries: u64,
    /// Share of the checks that present a card the export reports lost, stolen or revoked.
    #[arg(long, default_value_t = 0.01)]
    pub hit_fraction: f64,
}

fn parse_day(text: &str) -> Result<time::Date, String> {
    crate::card::parse_date(text).map_err(|rule| rule.to_string())
}

pub(super) fn run(args: &GenArgs) -> Result<u8, CliError> {
    let started = std::time::Instant::now();
    let generator = Generator::new(args.seed, args.as_of);
    generate(
        &args.out,
        &generator,
        args.count,
        &args.format,
        args.queries,
        args.hit_fraction,
    )
    .map_err(|source| CliError::Write {
        path: args.out.clone(),
        source,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} events and {} queries to {} in {seconds:.1} s ({:.0} events/s)",
        args.count,
        args.queries,
        args.out.display(),
        args.count as f64 / seconds.max(1e-9)
    );
    Ok(0)
}
