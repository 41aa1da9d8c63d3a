//! The `idguard` command line: the server, and client commands for shell users and scripts.
//!
//! Exit codes, so scripts can act on the outcome: 0 success (card valid); 1 card invalid;
//! 2 bad input (a usage error or `INVALID_ARGUMENT`); 3 server unreachable or unavailable;
//! 4 no record (`NOT_FOUND`); 5 `report_id` already used for other content (`ALREADY_EXISTS`);
//! 6 any other server error; 7 not authenticated or not permitted.

use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::card::CHINA_STANDARD_TIME;
use crate::config::ServeConfig;
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::registry_client::RegistryClient;
use crate::proto::v1::verification_client::VerificationClient;
use crate::proto::{self, v1 as pb};
use crate::server::ServeError;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service on an embedded RocksDB data dir.
    Serve(ServeConfig),
    /// Ask whether a card may be accepted (exit 0 valid, 1 invalid).
    Check {
        #[command(flatten)]
        card: CardArgs,
        /// Text bound into the verdict's signature (at most 64 bytes), such as your case number.
        #[arg(long, default_value = "")]
        nonce: String,
        /// Save the verdict as JSON, to check its signature later with `idguard verify`.
        #[arg(long)]
        save: Option<std::path::PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Save the server's verdict signing keys as JSON, for `idguard verify`.
    SigningKeys {
        /// Where to write them.
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check a saved verdict's signature offline (exit 0 genuine, 1 not).
    Verify {
        /// A verdict saved by `idguard check --save`.
        verdict: std::path::PathBuf,
        /// Signing keys saved by `idguard signing-keys`.
        #[arg(long)]
        keys: std::path::PathBuf,
    },
    /// Have the server write a consistent backup of the registry while it keeps serving (admin).
    Backup {
        /// A new directory on the server's host; an absolute path (relative ones are made
        /// absolute here, for a server on this machine).
        #[arg(long)]
        to: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Restore a backup into a new data dir, offline; start `idguard serve` on it afterwards.
    Restore {
        /// A directory written by `idguard backup`.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The new registry: a missing or empty directory.
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read a bearer token on standard input and print its SHA-256, as the access policy's
    /// `token_sha256` holds it.
    HashToken,
    /// Send a registry event (one subcommand per kind).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Send export files (NDJSON, or CSV by a `.csv` name) over `Submit`, as a reporter replaying
    /// a backlog would; refused records are listed with their line (exit 2 if any).
    Submit {
        /// Export files, sent in order.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Bulk-load export files into a data dir, offline (no server may be running on it); refused
    /// records are listed in a reject file (exit 2 if any).
    Import(ImportArgs),
    /// Write a synthetic registry export and a check workload (deterministic for a seed).
    Gen(GenArgs),
    /// Drive a running server with a check workload and report throughput and latency.
    Bench(BenchArgs),
    /// Show every card known for a number and every event that touched it.
    Record {
        /// 18-character citizen number.
        number: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a `serve` configuration file with the environment over it, and the files it names
    /// (TLS, access policy, signing keys); print the effective settings and where each came from.
    Check { file: std::path::PathBuf },
}

/// Parses the command line, with the `--config` file's settings (or `IDGUARD_CONFIG`'s) as the
/// defaults of `serve`. Exits, as clap does, on a usage error.
pub fn parse(args: &[String]) -> Result<Cli, crate::config::ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let serving = args.iter().skip(1).any(|arg| arg == "serve");
    if let (true, Some(path)) = (serving, crate::config::config_file_in(args)) {
        let serve = serve_command();
        let (serve, _) = crate::config::with_file_defaults(serve, &path)?;
        command = command.mut_subcommand("serve", |_| serve);
    }
    let matches = command.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit()))
}

fn serve_command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| unreachable!("serve is a subcommand"))
}

/// `idguard config check FILE`.
fn check_config(file: &std::path::Path) -> Result<u8, CliError> {
    use clap::FromArgMatches;
    let (serve, from_file) =
        crate::config::with_file_defaults(serve_command(), file).map_err(CliError::Config)?;
    let matches = serve
        .clone()
        .try_get_matches_from(["serve"])
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let config = ServeConfig::from_arg_matches(&matches)
        .map_err(|error| CliError::Usage(error.to_string()))?;
    crate::server::Guards::from_config(&config)?;
    print!("{}", crate::config::describe(&matches, &serve, &from_file));
    Ok(0)
}

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
    #[arg(long, value_enum, default_values_t = [crate::synthetic::Format::Ndjson])]
    pub format: Vec<crate::synthetic::Format>,
    /// Number of checks in `queries.csv`.
    #[arg(long, default_value_t = 1_000_000)]
    pub queries: u64,
    /// Share of the checks that present a card the export reports lost, stolen or revoked.
    #[arg(long, default_value_t = 0.01)]
    pub hit_fraction: f64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The workload: a `queries.csv` written by `idguard gen`.
    #[arg(long)]
    pub queries: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "unary")]
    pub mode: crate::loadgen::Mode,
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

fn parse_day(text: &str) -> Result<time::Date, String> {
    crate::card::parse_date(text).map_err(|rule| rule.to_string())
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The idguard server to ask (`https://...` for a server with TLS).
    #[arg(long, env = "IDGUARD_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// PEM certificate of the CA that signed the server's certificate.
    #[arg(long, env = "IDGUARD_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "IDGUARD_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, env = "IDGUARD_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Bearer token, for a principal without a client certificate (better given by the
    /// environment than on a command line that other users can see).
    #[arg(long, env = "IDGUARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Your branch or terminal, recorded with any hit (`x-idguard-terminal`).
    #[arg(long, env = "IDGUARD_TERMINAL")]
    pub terminal: Option<String>,
}

/// Adds the caller's bearer token and terminal to every call.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    terminal: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    fn of(args: &ServerArgs) -> Result<Self, CliError> {
        let header = |flag: &str, text: String| {
            text.parse().map_err(|_| {
                CliError::Rpc(tonic::Status::invalid_argument(format!(
                    "{flag}: printable ASCII only"
                )))
            })
        };
        Ok(Self {
            authorization: args
                .token
                .as_ref()
                .map(|token| header("--token", format!("Bearer {token}")))
                .transpose()?,
            terminal: args
                .terminal
                .as_ref()
                .map(|terminal| header("--terminal", terminal.clone()))
                .transpose()?,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.terminal {
            request
                .metadata_mut()
                .insert(crate::access::TERMINAL_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the caller's credentials.
pub type Authenticated = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

#[derive(Debug, Args)]
pub struct CardArgs {
    /// 18-character citizen number (or 15 digits for a first-generation card, checks only).
    pub number: String,
    /// The card's validity start, YYYYMMDD.
    #[arg(long)]
    pub issued: String,
    /// The card's validity end: YYYYMMDD or LONG; omit when unknown.
    #[arg(long, default_value = "")]
    pub expires: String,
}

impl CardArgs {
    fn wire(&self) -> pb::CardRef {
        pb::CardRef {
            id_number: self.number.clone(),
            issue_date: self.issued.clone(),
            expiry_date: self.expires.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct EventArgs {
    /// Your idempotency key for this event: retrying with the same key is harmless.
    #[arg(long)]
    pub report_id: String,
    /// Your organ's code: 6-digit division code, optionally followed by a unit suffix.
    #[arg(long)]
    pub authority: String,
    /// When it happened, RFC 3339 (e.g. 2026-11-22T09:30:00+08:00); default now.
    #[arg(long, value_parser = parse_rfc3339)]
    pub occurred_at: Option<OffsetDateTime>,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|error| format!("not RFC 3339: {error}"))
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// The holder reported the card lost.
    Lost {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The holder reported the card stolen.
    Stolen {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// A new card was issued: every earlier card of the number is superseded.
    Issued {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The issuer revoked the card.
    Revoked {
        #[command(flatten)]
        card: CardArgs,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The citizen's registration was cancelled: every card of the number is invalid.
    Cancelled {
        /// 18-character citizen number.
        number: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
    /// An earlier event was made in error: undo its effect.
    Withdrawn {
        /// The report_id of the event to withdraw.
        withdrawn_report_id: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
}

impl ReportCommand {
    fn into_wire(self) -> (pb::RegistryEvent, ServerArgs) {
        use pb::registry_event::Kind;
        let reported = |card: &CardArgs, kind: pb::LossKind| {
            Kind::Reported(pb::CardReported {
                card: Some(card.wire()),
                kind: kind.into(),
            })
        };
        let (kind, event) = match self {
            Self::Lost { card, event } => (reported(&card, pb::LossKind::Lost), event),
            Self::Stolen { card, event } => (reported(&card, pb::LossKind::Stolen), event),
            Self::Issued { card, event } => (
                Kind::Issued(pb::CardIssued {
                    card: Some(card.wire()),
                }),
                event,
            ),
            Self::Revoked { card, note, event } => (
                Kind::Revoked(pb::CardRevoked {
                    card: Some(card.wire()),
                    note,
                }),
                event,
            ),
            Self::Cancelled {
                number,
                note,
                event,
            } => (
                Kind::Cancelled(pb::CitizenCancelled {
                    id_number: number,
                    note,
                }),
                event,
            ),
            Self::Withdrawn {
                withdrawn_report_id,
                note,
                event,
            } => (
                Kind::Withdrawn(pb::ReportWithdrawn {
                    withdrawn_report_id,
                    note,
                }),
                event,
            ),
        };
        let occurred_at = event.occurred_at.unwrap_or_else(OffsetDateTime::now_utc);
        let wire = pb::RegistryEvent {
            report_id: event.report_id,
            authority: event.authority,
            occurred_at: Some(proto::timestamp(occurred_at)),
            kind: Some(kind),
        };
        (wire, event.server)
    }
}

/// Why a command failed, and the exit code that tells a script.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach {server}: {source}")]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", status_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Load(#[from] crate::loadgen::LoadError),
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    #[error("restore: {0}")]
    Restore(crate::store::StoreError),
    #[error("configuration: {0}")]
    Config(crate::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn status_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid input",
        Code::NotFound => "no record",
        Code::AlreadyExists => "conflict",
        Code::Unavailable => "server unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "not permitted",
        Code::ResourceExhausted => "rate limited",
        _ => "server error",
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect { .. } => 3,
            Self::Rpc(status) => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => 2,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 3,
                Code::NotFound => 4,
                Code::AlreadyExists => 5,
                Code::Unauthenticated | Code::PermissionDenied => 7,
                _ => 6,
            },
            Self::Load(crate::loadgen::LoadError::Connect(..)) => 3,
            Self::Read { .. }
            | Self::Import(crate::import::ImportError::Read { .. })
            | Self::Config(_)
            | Self::Usage(_) => 2,
            Self::Serve(_)
            | Self::Write { .. }
            | Self::Load(_)
            | Self::Import(_)
            | Self::Restore(_) => 6,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// The server `args` name, with its TLS settings when a CA or a client certificate is given.
fn endpoint(args: &ServerArgs) -> Result<Endpoint, CliError> {
    let endpoint = Channel::from_shared(args.server.clone()).map_err(|error| {
        CliError::Rpc(tonic::Status::invalid_argument(format!(
            "--server: {error}"
        )))
    })?;
    if args.ca.is_none() && args.cert.is_none() {
        return Ok(endpoint);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &args.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(tls)
        .map_err(|source| CliError::Connect {
            server: args.server.clone(),
            source,
        })
}

async fn connect(args: &ServerArgs) -> Result<Authenticated, CliError> {
    let channel = endpoint(args)?
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            server: args.server.clone(),
            source,
        })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Credentials::of(args)?,
    ))
}

/// Runs a command; `Ok` carries the exit code of a command that ran (1: the card is invalid).
pub async fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Serve(config) => {
            crate::server::run(config).await?;
            Ok(0)
        }
        Command::Gen(args) => {
            let started = std::time::Instant::now();
            let generator = crate::synthetic::Generator::new(args.seed, args.as_of);
            crate::synthetic::generate(
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
        Command::Import(args) => {
            let plan = crate::import::ImportPlan {
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
            let report = tokio::task::spawn_blocking(move || {
                crate::import::import(&plan).map(|report| (report, plan.rejects))
            })
            .await
            .map_err(|error| CliError::Rpc(tonic::Status::internal(error.to_string())))??;
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
        Command::Submit { files, server } => {
            let channel = connect(&server).await?;
            submit_files(RegistryClient::new(channel), &files).await
        }
        Command::Bench(args) => {
            bench(args).await?;
            Ok(0)
        }
        Command::Check {
            card,
            nonce,
            save,
            server,
        } => {
            let mut client = VerificationClient::new(connect(&server).await?);
            let response = client
                .check(pb::CheckRequest {
                    nonce: nonce.into_bytes(),
                    card: Some(card.wire()),
                    min_sequence: 0,
                })
                .await?
                .into_inner();
            println!("{}", describe_verdict(&response));
            if let Some(path) = save {
                let saved = crate::verdict_file::SavedVerdict::new(&card.wire(), &response);
                write_json(&path, &saved)?;
            }
            Ok(if response.status() == pb::CardStatus::Valid {
                0
            } else {
                1
            })
        }
        Command::Report(report) => {
            let (event, server) = report.into_wire();
            let mut client = RegistryClient::new(connect(&server).await?);
            let applied = client.apply(event).await?.into_inner();
            if applied.duplicate {
                println!(
                    "report {} was already accepted as sequence {}; nothing changed",
                    applied.report_id, applied.sequence
                );
            } else {
                println!(
                    "report {} accepted as sequence {}",
                    applied.report_id, applied.sequence
                );
            }
            Ok(0)
        }
        Command::SigningKeys { out, server } => {
            let mut client = VerificationClient::new(connect(&server).await?);
            let keys = client
                .get_signing_keys(pb::GetSigningKeysRequest {})
                .await?
                .into_inner()
                .keys;
            let saved: Vec<_> = keys
                .iter()
                .map(crate::verdict_file::SavedKey::new)
                .collect();
            write_json(&out, &saved)?;
            println!("{} signing keys written to {}", saved.len(), out.display());
            Ok(0)
        }
        Command::Verify { verdict, keys } => verify_saved(&verdict, &keys),
        Command::Backup { to, server } => {
            let to = std::path::absolute(&to).map_err(|source| CliError::Write {
                path: to.clone(),
                source,
            })?;
            let mut client = AdminClient::new(connect(&server).await?);
            let backup = client
                .backup(pb::BackupRequest {
                    to_dir: to.display().to_string(),
                })
                .await?
                .into_inner();
            println!(
                "backup of the registry at sequence {} written to {}",
                backup.sequence, backup.to_dir
            );
            Ok(0)
        }
        Command::Restore { from, data_dir } => {
            let sequence = tokio::task::spawn_blocking(move || {
                crate::store::restore(&from, &data_dir).map(|sequence| (sequence, data_dir))
            })
            .await
            .map_err(|error| CliError::Rpc(tonic::Status::internal(error.to_string())))?;
            let (sequence, data_dir) = sequence.map_err(CliError::Restore)?;
            println!(
                "restored the registry at sequence {sequence} into {}",
                data_dir.display()
            );
            Ok(0)
        }
        Command::Config(ConfigCommand::Check { file }) => check_config(&file),
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .map_err(|source| CliError::Read {
                    path: "standard input".into(),
                    source,
                })?;
            println!("{}", crate::access::TokenDigest::of(token.trim()).to_hex());
            Ok(0)
        }
        Command::Record { number, server } => {
            let mut client = RegistryClient::new(connect(&server).await?);
            let mut ask = pb::GetRecordRequest {
                id_number: number,
                ..Default::default()
            };
            let mut record = client.get_record(ask.clone()).await?.into_inner();
            // The whole history, page after page.
            while record.next_after_sequence != 0 {
                ask.after_sequence = record.next_after_sequence;
                let page = client.get_record(ask.clone()).await?.into_inner();
                record.events.extend(page.events);
                record.next_after_sequence = page.next_after_sequence;
            }
            print!("{}", describe_record(&record));
            Ok(0)
        }
    }
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|error| CliError::Write {
        path: path.to_owned(),
        source: error.into(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| CliError::Write {
        path: path.to_owned(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, CliError> {
    let read = |source| CliError::Read {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    serde_json::from_str(&text).map_err(|error| read(error.into()))
}

/// `idguard verify`: exit 0 when the saved verdict's signature is genuine, 1 when it is not.
fn verify_saved(verdict: &std::path::Path, keys: &std::path::Path) -> Result<u8, CliError> {
    let invalid = |path: &std::path::Path, error: crate::verdict_file::NotHex| CliError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    };
    let saved: crate::verdict_file::SavedVerdict = read_json(verdict)?;
    let (card, response) = saved.to_wire().map_err(|error| invalid(verdict, error))?;
    let keys = read_json::<Vec<crate::verdict_file::SavedKey>>(keys)?
        .iter()
        .map(crate::verdict_file::SavedKey::to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(keys, error))?;
    match crate::signing::verify(&card, &response, &keys) {
        Ok(()) => {
            let signature = response.signature.as_ref();
            println!(
                "genuine: signed by key {} at {}: {}",
                signature.map_or("", |signature| signature.key_id.as_str()),
                china_time(signature.and_then(|signature| signature.signed_at.as_ref())),
                describe_verdict(&response)
            );
            Ok(0)
        }
        Err(why) => {
            println!("NOT GENUINE: {why}");
            Ok(1)
        }
    }
}

/// Where a submitted record came from, to name it in a refusal.
struct Origin {
    file: std::path::PathBuf,
    line: u64,
}

/// `idguard submit`: streams every record of `files` and reports refusals by file and line.
async fn submit_files(
    mut client: RegistryClient<Authenticated>,
    files: &[std::path::PathBuf],
) -> Result<u8, CliError> {
    let started = std::time::Instant::now();
    let (events, outgoing) = tokio::sync::mpsc::channel(1024);
    let (origins, mut sent) = tokio::sync::mpsc::unbounded_channel::<Origin>();
    let mut acks = client
        .submit(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let files = files.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> Result<u64, CliError> {
        let mut refused_here = 0;
        for file in files {
            let records = crate::export::read_events(&file).map_err(|source| CliError::Read {
                path: file.clone(),
                source,
            })?;
            for (line, record) in records {
                match record {
                    Ok(event) => {
                        let origin = Origin {
                            file: file.clone(),
                            line,
                        };
                        if origins.send(origin).is_err() || events.blocking_send(event).is_err() {
                            return Ok(refused_here);
                        }
                    }
                    Err(why) => {
                        eprintln!("{}:{line}: {why}", file.display());
                        refused_here += 1;
                    }
                }
            }
        }
        Ok(refused_here)
    });
    let (mut accepted, mut duplicates, mut refused) = (0u64, 0u64, 0u64);
    while let Some(ack) = acks.message().await? {
        let origin = sent.recv().await;
        match (&ack.error, origin) {
            (Some(error), Some(origin)) => {
                eprintln!(
                    "{}:{}: {}: {}",
                    origin.file.display(),
                    origin.line,
                    ack.report_id,
                    error.message
                );
                refused += 1;
            }
            (Some(_), None) => refused += 1,
            (None, _) if ack.duplicate => duplicates += 1,
            (None, _) => accepted += 1,
        }
    }
    refused += reader
        .await
        .map_err(|error| CliError::Rpc(tonic::Status::internal(error.to_string())))??;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{accepted} accepted, {duplicates} duplicates, {refused} refused in {seconds:.1} s ({:.0} events/s)",
        (accepted + duplicates) as f64 / seconds.max(1e-9)
    );
    Ok(if refused == 0 { 0 } else { 2 })
}

/// `idguard bench`: one run, or a sweep of rates below the closed-loop maximum.
async fn bench(args: BenchArgs) -> Result<(), CliError> {
    use crate::loadgen::{LoadPlan, run, svg_plot};
    let cards = std::sync::Arc::new(crate::loadgen::read_workload(&args.queries)?);
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
    let first = run(&server, plan.clone(), std::sync::Arc::clone(&cards)).await?;
    println!("{first}");
    let mut reports = vec![first];
    if args.sweep {
        let max = reports[0].checks_per_second;
        for share in [0.1, 0.25, 0.5, 0.75, 0.9] {
            let plan = LoadPlan {
                rate: Some(max * share),
                ..plan.clone()
            };
            let report = run(&server, plan, std::sync::Arc::clone(&cards)).await?;
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
    Ok(())
}

fn china_time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(proto::instant)
        .and_then(|at| at.to_offset(CHINA_STANDARD_TIME).format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

fn reason_name(reason: pb::Reason) -> &'static str {
    match reason {
        pb::Reason::Unspecified => "unspecified",
        pb::Reason::Lost => "lost",
        pb::Reason::Stolen => "stolen",
        pb::Reason::Superseded => "superseded",
        pb::Reason::Revoked => "revoked",
        pb::Reason::CitizenCancelled => "citizen cancelled",
        pb::Reason::Expired => "expired",
        pb::Reason::FirstGeneration => "first generation",
    }
}

/// One line per verdict: `VALID ...` or `INVALID <reason> since <time>: <detail>`.
fn describe_verdict(response: &pb::CheckResponse) -> String {
    match response.status() {
        pb::CardStatus::Invalid => format!(
            "INVALID  {} since {}: {}  (registry sequence {})",
            reason_name(response.reason()),
            china_time(response.invalid_since.as_ref()),
            response.detail,
            response.sequence
        ),
        pb::CardStatus::Valid => format!("VALID  (registry sequence {})", response.sequence),
        status => format!("{}  {}", status.as_str_name(), response.detail),
    }
}

fn describe_event(event: &pb::RegistryEvent) -> String {
    use pb::registry_event::Kind;
    let card = |card: &Option<pb::CardRef>| {
        card.as_ref().map_or_else(String::new, |card| {
            format!("card issued {}", card.issue_date)
        })
    };
    match &event.kind {
        Some(Kind::Reported(reported)) => format!(
            "reported {} ({})",
            match reported.kind() {
                pb::LossKind::Stolen => "stolen",
                _ => "lost",
            },
            card(&reported.card)
        ),
        Some(Kind::Issued(issued)) => format!("issued ({})", card(&issued.card)),
        Some(Kind::Revoked(revoked)) => {
            format!("revoked ({}) {}", card(&revoked.card), revoked.note)
        }
        Some(Kind::Cancelled(cancelled)) => format!("citizen cancelled {}", cancelled.note),
        Some(Kind::Withdrawn(withdrawn)) => format!(
            "withdrew report {} {}",
            withdrawn.withdrawn_report_id, withdrawn.note
        ),
        None => "unknown event".to_owned(),
    }
}

fn describe_record(record: &pb::CitizenRecord) -> String {
    let mut text = format!(
        "{}  (registry sequence {})\ncards:\n",
        record.id_number, record.sequence
    );
    for card in &record.cards {
        let (issued, expires) = card.card.as_ref().map_or(("-", "-"), |card| {
            (card.issue_date.as_str(), card.expiry_date.as_str())
        });
        let verdict = card
            .verdict
            .as_ref()
            .map_or_else(String::new, describe_verdict);
        text += &format!(
            "  issued {issued}  expires {:<8}  {verdict}\n",
            if expires.is_empty() { "?" } else { expires }
        );
    }
    text += "events:\n";
    for change in &record.events {
        if let Some(event) = &change.event {
            text += &format!(
                "  #{:<6} {}  {}  report {} by {}\n",
                change.sequence,
                china_time(event.occurred_at.as_ref()),
                describe_event(event).trim_end(),
                event.report_id,
                event.authority
            );
        }
    }
    text
}
