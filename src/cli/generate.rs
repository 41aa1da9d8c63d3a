//! `idguard gen`: a synthetic registry export and a check workload, deterministic for a seed; with
//! `--national`, the registry at national steady state.

use clap::Args;

use super::CliError;
use crate::tools::national::{Population, write_national_export, write_national_queries};
use crate::tools::synthetic::{Format, Generator, generate};

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Directory for `events.ndjson` / `events.csv` and `queries.csv`; created when missing.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of events; with `--national`, of citizens.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// The registry at national steady state: every citizen's current card issued, a year's
    /// losses, thefts, revocations, cancellations and withdrawals, and a workload that presents
    /// current cards (see `--current-fraction`).
    #[arg(long)]
    pub national: bool,
    /// With `--national`: the share of checks that present a citizen's current card; the rest
    /// present cards that should be refused.
    #[arg(long, default_value_t = 0.9999)]
    pub current_fraction: f64,
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
    /// Share of the checks that present a card the export reports lost, stolen or revoked
    /// (without `--national`).
    #[arg(long, default_value_t = 0.01)]
    pub hit_fraction: f64,
}

fn parse_day(text: &str) -> Result<time::Date, String> {
    crate::card::parse_date(text).map_err(|rule| rule.to_string())
}

pub(super) fn run(args: &GenArgs) -> Result<u8, CliError> {
    let started = std::time::Instant::now();
    let generator = Generator::new(args.seed, args.as_of);
    let written = if args.national {
        generate_national(&args.out, &Population::new(generator, args.count), args)
    } else {
        generate(
            &args.out,
            &generator,
            args.count,
            &args.format,
            args.queries,
            args.hit_fraction,
        )
        .map(|()| args.count)
    }
    .map_err(|source| CliError::Write {
        path: args.out.clone(),
        source,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {written} events and {} queries to {} in {seconds:.1} s ({:.0} events/s)",
        args.queries,
        args.out.display(),
        written as f64 / seconds.max(1e-9)
    );
    Ok(0)
}

/// The national export in each format, and its workload; returns the number of events.
fn generate_national(
    dir: &std::path::Path,
    population: &Population,
    args: &GenArgs,
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    for &format in &args.format {
        let file = std::fs::File::create(dir.join(format.file_name()))?;
        written = write_national_export(population, format, file)?;
    }
    write_national_queries(
        population,
        args.queries,
        args.current_fraction,
        std::fs::File::create(dir.join("queries.csv"))?,
    )?;
    Ok(written)
}
