//! `idguard import`: the command line of the offline bulk load ([`crate::app::import`]).

use clap::Args;

use super::CliError;
use crate::app::import::{ImportPlan, import};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Export files (NDJSON, or CSV by a `.csv` name), loaded in order.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// The registry to load into: a new (empty) one, or an existing one.
    #[arg(long, env = "IDGUARD_DATA_DIR", default_value = "idguard-data")]
    pub data_dir: std::path::PathBuf,
    /// Where refused records are listed, one `FILE:LINE: reason` per line [default: the first
    /// file's name with `.rejects` added].
    #[arg(long)]
    pub rejects: Option<std::path::PathBuf>,
    /// Temporary files (sort runs and SSTs, about twice the input's size); keep it on the data
    /// dir's file system so SSTs are moved, not copied [default: DATA_DIR.import].
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Memory for each sort's buffer, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: usize,
}

/// Exit 0 when every record loaded (or was a duplicate), 2 when any was refused.
pub(super) async fn run(args: ImportArgs) -> Result<u8, CliError> {
    let plan = ImportPlan {
        rejects: args.rejects.unwrap_or_else(|| {
            let mut name = args.files[0].clone().into_os_string();
            name.push(".rejects");
            name.into()
        }),
        work_dir: args.work_dir.unwrap_or_else(|| {
            let mut name = args.data_dir.clone().into_os_string();
            name.push(".import");
            name.into()
        }),
        files: args.files,
        data_dir: args.data_dir,
        memory_bytes: args.memory_mb.max(1) << 20,
        store: crate::store::StoreOptions::default(),
    };
    let report =
        tokio::task::spawn_blocking(move || import(&plan).map(|report| (report, plan.rejects)))
            .await
            .map_err(CliError::task_failed)??;
    let (report, rejects) = report;
    println!(
        "{} records read: {} events accepted, {} duplicates, {} rejected (listed in {}); \
         last sequence {}, {} numbers with a record; {:.1} s ({:.0} records/s)",
        report.records,
        report.bulk.accepted,
        report.bulk.duplicates,
        report.rejected(),
        rejects.display(),
        report.bulk.last_sequence,
        report.bulk.numbers,
        report.seconds,
        report.records as f64 / report.seconds.max(1e-9)
    );
    Ok(if report.rejected() == 0 { 0 } else { 2 })
}
