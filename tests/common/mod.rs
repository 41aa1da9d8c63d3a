//! Shared by the integration tests: the real server on an ephemeral port over a real RocksDB in a
//! temp dir, generated tonic clients, and builders for wire events.
#![allow(dead_code)] // the OpenTelemetry test binary uses a subset

pub mod nats;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use idguard::config::ServeConfig;
use idguard::proto::v1::registry_client::RegistryClient;
use idguard::proto::v1::registry_event::Kind;
use idguard::proto::v1::verification_client::VerificationClient;
use idguard::proto::{self, v1 as pb};
use idguard::server::Application;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server; `stop` shuts it down and closes its store.
pub struct TestServer {
    pub address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// The service as `idguard serve` builds it, on loopback with its defaults.
    pub async fn start(data_dir: &Path) -> Self {
        let config = ServeConfig::local(data_dir).expect("local settings");
        let application = Application::build(&config).await.expect("server builds");
        let address = application.address();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run_until(async {
                    let _ = stop.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            address,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.expect("server task");
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn verification(&self) -> VerificationClient<Channel> {
        VerificationClient::new(self.channel().await)
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await)
    }
}

/// A certificate authority that signs certificates for the test.
pub struct Authority {
    pub cert: Certificate,
    key: KeyPair,
}

impl Authority {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, as PEM.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        self.issue_with(common_name, names, |_| {})
    }

    /// [`Authority::issue`], with `adjust` changing the certificate first (validity, ...).
    pub fn issue_with(
        &self,
        common_name: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The `idguard` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_idguard");

/// `idguard serve` as a child process on an ephemeral port; killed when dropped.
pub struct ChildServer {
    pub child: Child,
    pub url: String,
}

impl ChildServer {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Starts it with extra `serve` flags.
    pub fn start_with(data_dir: &Path, flags: &[&str]) -> Self {
        Self::start_reading(data_dir, flags, 1).0
    }

    /// [`ChildServer::start_with`], returning the first `lines` lines it announced.
    pub fn start_reading(data_dir: &Path, flags: &[&str], lines: usize) -> (Self, Vec<String>) {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(flags)
            .stderr(Stdio::null());
        Self::spawn(command, lines)
    }

    /// Spawns `command`, an `idguard serve` on an ephemeral port, and waits for the first `lines`
    /// lines of its stdout (the gRPC address, then the metrics address), which it returns.
    pub fn spawn(mut command: Command, lines: usize) -> (Self, Vec<String>) {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("idguard serve starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let read: Vec<String> = (0..lines)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).expect("a line");
                line.trim().to_owned()
            })
            .collect();
        let Some(address) = read[0].strip_prefix("idguard listening on ") else {
            // It stopped before serving: say how, with what it logged where it logs to a file.
            let status = child.wait().expect("exit status");
            let logged = log_file_of(&command)
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            panic!(
                "unexpected first line {:?}; {status}; it logged:\n{logged}",
                read[0]
            );
        };
        let address = address.to_owned();
        let server = Self {
            child,
            url: format!("http://{address}"),
        };
        (server, read)
    }

    /// Runs a client command against this server.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--server", &self.url])
            .output()
            .expect("idguard runs")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }
}

/// The log file of a node started by the cluster harness: its data dir with `.log` added.
fn log_file_of(command: &Command) -> Option<std::path::PathBuf> {
    let mut args = command.get_args();
    args.find(|arg| *arg == "--data-dir")?;
    args.next()
        .map(|data_dir| Path::new(data_dir).with_extension("log"))
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use idguard::tools::synthetic::nth_number;

/// Builds a valid 18-character number from its first 17 digits.
pub fn number(first17: &str) -> String {
    let packed = first17.parse().expect("17 digits");
    idguard::card::CitizenNumber::from_packed(packed)
        .expect("17 digits")
        .to_string()
}

pub fn card(id: &str, issued: &str, expires: &str) -> pb::CardRef {
    pb::CardRef {
        id_number: id.into(),
        issue_date: issued.into(),
        expiry_date: expires.into(),
    }
}

pub fn at(when: OffsetDateTime) -> Option<prost_types::Timestamp> {
    Some(proto::timestamp(when))
}

pub fn event(report_id: &str, occurred_at: OffsetDateTime, kind: Kind) -> pb::RegistryEvent {
    pb::RegistryEvent {
        report_id: report_id.into(),
        authority: "440305".into(),
        occurred_at: at(occurred_at),
        kind: Some(kind),
    }
}

pub fn reported(card: pb::CardRef, kind: pb::LossKind) -> Kind {
    Kind::Reported(pb::CardReported {
        card: Some(card),
        kind: kind.into(),
    })
}

pub fn issued(card: pb::CardRef) -> Kind {
    Kind::Issued(pb::CardIssued { card: Some(card) })
}

pub fn revoked(card: pb::CardRef) -> Kind {
    Kind::Revoked(pb::CardRevoked {
        card: Some(card),
        note: "forged details".into(),
    })
}

pub fn cancelled(id: &str) -> Kind {
    Kind::Cancelled(pb::CitizenCancelled {
        id_number: id.into(),
        note: "deceased".into(),
    })
}

pub fn withdrawn(target: &str) -> Kind {
    Kind::Withdrawn(pb::ReportWithdrawn {
        withdrawn_report_id: target.into(),
        note: "reported in error".into(),
    })
}

/// A loss report on the `k`-th number, with report id `{prefix}{k}`.
pub fn loss(prefix: &str, k: u64) -> pb::RegistryEvent {
    event(
        &format!("{prefix}{k}"),
        time::macros::datetime!(2025-06-01 08:00 UTC),
        reported(card(&nth_number(k), "20150101", ""), pb::LossKind::Lost),
    )
}

/// Waits for tasks that each return the sequences they were given, and checks that together
/// they are exactly 1..=last: every acknowledged event has its own sequence, with no gap.
pub async fn assert_gap_free(tasks: Vec<JoinHandle<Vec<u64>>>, last: u64) {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("writer task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=last).collect::<Vec<u64>>());
}

/// The value of the sample `name{labels}` in a Prometheus exposition (0 when absent).
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The exposition served at `url`.
pub fn scrape(url: &str) -> String {
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut connection,
        b"GET /metrics HTTP/1.1\r\nhost: idguard\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut connection, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Sends a check without a card and asserts it is refused with INVALID_ARGUMENT: a malformed
/// call, for tests that need one logged, counted or traced.
pub async fn check_without_card_is_refused(client: &mut VerificationClient<Channel>) {
    let refused = client
        .check(pb::CheckRequest {
            card: None,
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

/// Runs `idguard serve` on `data_dir` with `flags`, expecting it to refuse to start; returns what
/// it said on stderr.
pub fn serve_refusal(data_dir: &Path, flags: &[&str]) -> String {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(flags)
        .output()
        .expect("idguard runs");
    assert_ne!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
