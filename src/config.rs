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
    /// PEM certificate chain the server presents; with `--tls-key`, every connection is TLS.
    /// Without them, only a loopback address may be served.
    #[arg(long, env = "IDGUARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "IDGUARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the CA that issues client certificates: clients must present one
    /// (mutual TLS).
    #[arg(long, env = "IDGUARD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The access policy (TOML): principals, their roles, scopes, disclosure and rates. Without
    /// one, only a loopback address may be served, and every caller is the admin `local`.
    #[arg(long, env = "IDGUARD_ACCESS")]
    pub access: Option<PathBuf>,
    /// The verdict signing keys (TOML): with it, every verdict carries an Ed25519 signature.
    #[arg(long, env = "IDGUARD_SIGNING_KEYS")]
    pub signing_keys: Option<PathBuf>,
    /// Calls answered at once; past it, new calls are refused at once with UNAVAILABLE (load
    /// shedding) rather than queued.
    #[arg(long, env = "IDGUARD_MAX_IN_FLIGHT", default_value_t = crate::server::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Address of the Prometheus metrics listener (`GET /metrics`); port 0 picks one (printed
    /// at start-up after the gRPC address).
    #[arg(long, env = "IDGUARD_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// Serve no metrics.
    #[arg(long, env = "IDGUARD_NO_METRICS")]
    pub no_metrics: bool,
    /// Concurrent calls (HTTP/2 streams) one connection may have open.
    #[arg(long, env = "IDGUARD_STREAMS_PER_CONNECTION", default_value_t = crate::server::DEFAULT_STREAMS_PER_CONNECTION)]
    pub streams_per_connection: u32,
}
