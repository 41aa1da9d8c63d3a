//! `idguard bench`: drives a running server with a check workload and reports throughput and
//! latency, one run or a sweep of rates below the closed-loop maximum.

use clap::Args;

use super::CliError;
use super::client::{ServerArgs, endpoint};
use crate::tools::loadgen::{LoadPlan, Mode, read_workload, run as run_load, svg_plot};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The workload: a `queries.csv` written by `idguard gen`.
    #[arg(long)]
    pub queries: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "unary")]
    pub mode: Mode,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Concurrent callers (or streams), spread over the connections.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// Cards per `CheckBatch` call.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Requests in flight on each `CheckStream`.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Offer this many checks/s (open loop); default closed loop, as fast as answers come.
    #[arg(long)]
    pub rate: Option<f64>,
    /// After a closed-loop run, run at 10% to 90% of its throughput too.
    #[arg(long)]
    pub sweep: bool,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write a latency-versus-throughput SVG of the sweep here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(args: BenchArgs) -> Result<u8, CliError> {
    let cards = std::sync::Arc::new(read_workload(&args.queries)?);
    let plan = LoadPlan {
        mode: args.mode,
        connections: args.connections,
        workers: args.workers,
        batch_size: args.batch_size.max(1),
        window: args.window.max(1),
        duration: std::time::Duration::from_secs_f64(args.seconds),
        rate: args.rate,
    };
    let server = endpoint(&args.server)?;
    let first = run_load(&server, plan.clone(), std::sync::Arc::clone(&cards)).await?;
    println!("{first}");
    let mut reports = vec![first];
    if args.sweep {
        let max = reports[0].checks_per_second;
        for share in [0.1, 0.25, 0.5, 0.75, 0.9] {
            let plan = LoadPlan {
                rate: Some(max * share),
                ..plan.clone()
            };
            let report = run_load(&server, plan, std::sync::Arc::clone(&cards)).await?;
            println!("{report}");
            reports.push(report);
        }
        reports.sort_by(|a, b| a.checks_per_second.total_cmp(&b.checks_per_second));
    }
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text).map_err(|source| CliError::Write {
            path: path.to_owned(),
            source,
        })
    };
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&reports).map_err(|error| CliError::Write {
            path: path.clone(),
            source: error.into(),
        })?;
        write(path, json)?;
    }
    if let Some(path) = &args.plot {
        let title = format!("idguard {:?}: latency per call vs throughput", args.mode);
        write(path, svg_plot(&title, &reports))?;
    }
    Ok(0)
}
