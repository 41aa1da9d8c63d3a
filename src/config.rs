//! Typed configuration of the server, from flags and `IDGUARD_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How `idguard serve` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on for gRPC; port 0 picks a free port (printed at start-up).
    #[arg(long, env = "IDGUARD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the RocksDB registry; created when missing.
    #[arg(long, env = "IDGUARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// RocksDB's block cache in MiB: recent reads of records kept in memory. Checks of numbers
    /// without records never use it.
    #[arg(long, env = "IDGUARD_BLOCK_CACHE_MB", default_value_t = 256)]
    pub block_cache_mb: usize,
}
