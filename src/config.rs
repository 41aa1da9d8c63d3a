//! Typed configuration of the server: one TOML file (`--config`), overridden by `IDGUARD_*`
//! environment variables, overridden by flags.
//!
//! The file groups settings in sections: `[tls]`, `[cluster]` and `[limits]` (see
//! [`FILE_SECTIONS`]); the rest are top-level keys. A key is its flag's name with `_` for `-`,
//! less the section's prefix (`[tls] cert` is `--tls-cert`, `[cluster] servers` is `--cluster`).
//! Its values become the flags' defaults before the command line is parsed, so that the
//! precedence is clap's own (flag, then environment, then default) and every value is checked the
//! same way whatever its source. An unknown key is an error, never silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;

use crate::ledger::cluster::ClusterConfig;

/// Calls answered at once by default before new ones are shed.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Concurrent calls on one connection by default (HTTP/2 `MAX_CONCURRENT_STREAMS`).
pub const DEFAULT_STREAMS_PER_CONNECTION: u32 = 128;
/// Client connections open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long a connection may stay open with no call in flight, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the grouped settings live in the file: `(flag id, section, key in the section)`.
/// Every other setting is a top-level key named as its flag's id.
pub const FILE_SECTIONS: &[(&str, &str, &str)] = &[
    ("tls_cert", "tls", "cert"),
    ("tls_key", "tls", "key"),
    ("tls_client_ca", "tls", "client_ca"),
    ("cluster", "cluster", "servers"),
    ("cluster_stream", "cluster", "stream"),
    ("cluster_replicas", "cluster", "replicas"),
    ("cluster_dedup_window", "cluster", "dedup_window"),
    ("cluster_keys", "cluster", "keys"),
    ("max_in_flight", "limits", "max_in_flight"),
    ("streams_per_connection", "limits", "streams_per_connection"),
    ("max_connections", "limits", "max_connections"),
    ("idle_timeout_secs", "limits", "idle_timeout_secs"),
];

/// The section and key of the setting whose flag id is `id`.
fn file_place(id: &str) -> (Option<&'static str>, &str) {
    FILE_SECTIONS
        .iter()
        .find(|(flag, ..)| *flag == id)
        .map_or((None, id), |(_, section, key)| (Some(*section), *key))
}

/// How `idguard serve` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// A TOML file of these settings (keys: the flags' names with `_`); environment variables
    /// and flags override it.
    #[arg(long, env = "IDGUARD_CONFIG")]
    pub config: Option<PathBuf>,
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
    #[arg(long, env = "IDGUARD_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Address of the Prometheus metrics listener (`GET /metrics`); port 0 picks one (printed
    /// at start-up after the gRPC address). The default is the port after the gRPC one: in the
    /// range IANA never assigns, and clear of 9090 (the Prometheus server's own) and of the
    /// 9100-9999 range its exporters have taken, so idguard starts beside any of them.
    #[arg(
        long,
        env = "IDGUARD_METRICS_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub metrics_listen: SocketAddr,
    /// Serve no metrics.
    #[arg(long, env = "IDGUARD_NO_METRICS")]
    pub no_metrics: bool,
    /// Concurrent calls (HTTP/2 streams) one connection may have open.
    #[arg(long, env = "IDGUARD_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_STREAMS_PER_CONNECTION)]
    pub streams_per_connection: u32,
    /// Client connections open at once; past it, new ones wait in the kernel's backlog.
    #[arg(long, env = "IDGUARD_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client connection may stay open with no call in flight before it is closed
    /// (a `Watch` stream is a call in flight, however quiet).
    #[arg(long, env = "IDGUARD_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// NATS servers of the cluster's event stream, comma-separated (`nats://HOST:PORT,...`):
    /// this node then records events in that JetStream stream and applies every node's events
    /// from it. Without it, the node runs alone on its embedded registry.
    #[arg(long, env = "IDGUARD_CLUSTER")]
    pub cluster: Option<String>,
    /// The JetStream stream of the registry's events; every node of one registry names the same.
    #[arg(long, env = "IDGUARD_CLUSTER_STREAM", default_value = "IDGUARD")]
    pub cluster_stream: String,
    /// Replicas of the stream, when this node is the one to create it: 3 in production, so that
    /// losing one NATS server loses nothing; 1 for a single NATS server.
    #[arg(long, env = "IDGUARD_CLUSTER_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,
    /// JetStream's de-duplication window in seconds, when this node creates the stream: a
    /// `report_id` published twice within it is stored once. Beyond it, the stored report still
    /// makes a retry a duplicate.
    #[arg(long, env = "IDGUARD_CLUSTER_DEDUP_WINDOW", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_dedup_window: u64,
    /// The stream keys (TOML): this node's Ed25519 key, which signs every event it publishes,
    /// and the public keys of the nodes whose events it applies. Required with `--cluster`.
    #[arg(long, env = "IDGUARD_CLUSTER_KEYS")]
    pub cluster_keys: Option<PathBuf>,
}

impl ServeConfig {
    /// A server on a loopback port the kernel picks, without a metrics listener, every other
    /// setting at its default (or its `IDGUARD_*` variable): what tests and benches start.
    pub fn local(data_dir: &Path) -> Result<Self, clap::Error> {
        use clap::{Args, FromArgMatches};
        let serve = Self::augment_args(clap::Command::new("serve"));
        let matches = serve.try_get_matches_from([
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--no-metrics".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ])?;
        Self::from_arg_matches(&matches)
    }

    /// The cluster `--cluster` and its companions describe, if any.
    pub fn cluster(&self) -> Option<ClusterConfig> {
        let servers: Vec<String> = self
            .cluster
            .as_deref()?
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        Some(ClusterConfig {
            servers,
            stream: self.cluster_stream.clone(),
            replicas: usize::from(self.cluster_replicas),
            duplicate_window: Duration::from_secs(self.cluster_dedup_window),
            keys: self.cluster_keys.clone(),
        })
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: {key}: {why}", path.display())]
    Key {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// The configuration file named by `--config FILE` (or `--config=FILE`) in `args`, else by
/// `IDGUARD_CONFIG`.
pub fn config_file_in(args: &[String]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("IDGUARD_CONFIG").map(PathBuf::from)
}

/// `serve` with the settings of the file at `path` as its defaults, and the keys the file set.
pub fn with_file_defaults(
    serve: clap::Command,
    path: &Path,
) -> Result<(clap::Command, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Syntax {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let mut settings = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => {
                for (name, value) in section {
                    settings.push((Some(key.clone()), name, value));
                }
            }
            value => settings.push((None, key, value)),
        }
    }
    let mut serve = serve;
    let mut keys = Vec::new();
    for (section, key, value) in settings {
        let shown = match &section {
            Some(section) => format!("[{section}] {key}"),
            None => key.clone(),
        };
        let refuse = |why: String| ConfigError::Key {
            path: path.to_owned(),
            key: shown.clone(),
            why,
        };
        let id = serve
            .get_arguments()
            .filter(|arg| arg.get_long().is_some() && arg.get_id() != "config")
            .map(|arg| arg.get_id().as_str().to_owned())
            .find(|id| {
                let (in_section, name) = file_place(id);
                in_section == section.as_deref() && name == key
            });
        let Some(id) = id else {
            let misplaced = (section.is_none())
                .then(|| FILE_SECTIONS.iter().find(|(flag, ..)| *flag == key))
                .flatten();
            return Err(refuse(match misplaced {
                Some((_, section, name)) => {
                    format!("belongs in the [{section}] section, as `{name}`")
                }
                None => {
                    "unknown key (see `idguard serve --help` and deploy/idguard.toml)".to_owned()
                }
            }));
        };
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            _ => {
                return Err(refuse(
                    "must be a string, an integer or a boolean".to_owned(),
                ));
            }
        };
        serve = serve.mut_arg(id.as_str(), |arg| {
            arg.default_value(clap::builder::Str::from(text))
        });
        keys.push(id);
    }
    Ok((serve, keys))
}

/// The effective configuration as TOML, each value with where it came from: what
/// `idguard config check` prints. Settings are paths and numbers; secrets (keys, tokens) live in
/// the files they name and are never printed, and a password in a URL (`--cluster`) is masked.
pub fn describe(matches: &clap::ArgMatches, serve: &clap::Command, from_file: &[String]) -> String {
    let mut top = String::new();
    let mut sections: Vec<(&str, String)> = Vec::new();
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() || id == "config" || id == "help" {
            continue;
        }
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) if from_file.iter().any(|key| key == id) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let (section, key) = file_place(id);
        let value = matches
            .get_raw(id)
            .and_then(|mut values| values.next())
            .map(|value| without_passwords(&value.to_string_lossy()));
        let line = match value {
            Some(value) => {
                let quoted = toml::Value::String(value.clone()).to_string();
                let shown = if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
                    value
                } else {
                    quoted
                };
                format!("{key} = {shown}  # {source}\n")
            }
            None => format!("# {key}: not set\n"),
        };
        match section {
            None => top.push_str(&line),
            Some(section) => match sections.iter_mut().find(|(name, _)| *name == section) {
                Some((_, lines)) => lines.push_str(&line),
                None => sections.push((section, line)),
            },
        }
    }
    for (section, lines) in sections {
        top.push_str(&format!("\n[{section}]\n{lines}"));
    }
    top
}

/// `text` with the secret of every URL in it masked: the password of `scheme://user:password@host`,
/// the token of `scheme://token@host`.
fn without_passwords(text: &str) -> String {
    text.split(',')
        .map(|url| {
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_owned();
            };
            match rest.split_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                    None => format!("{scheme}://***@{host}"),
                },
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::without_passwords;

    #[test]
    fn secrets_in_urls_are_masked_and_nothing_else_changes() {
        assert_eq!(
            without_passwords("tls://idguard:s3cret@nats-1:4222,nats://nats-2:4222"),
            "tls://idguard:***@nats-1:4222,nats://nats-2:4222"
        );
        assert_eq!(without_passwords("/var/lib/idguard"), "/var/lib/idguard");
        assert_eq!(
            without_passwords("nats://s3cret-token@nats-1:4222"),
            "nats://***@nats-1:4222"
        );
    }
}
