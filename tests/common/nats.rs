//! A real NATS JetStream cluster on loopback for the cluster tests: `nats-server` processes with
//! their stores in a temp dir, idguard nodes following it, and a TCP proxy that can cut one node
//! off from NATS.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idguard::proto::v1 as pb;
use pb::registry_client::RegistryClient;
use pb::verification_client::VerificationClient;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::ChildServer;

/// A port that was free a moment ago: nats-server's route ports must be known before start.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The `nats-server` binary: on the PATH, or where Debian's package puts it (`/usr/sbin`, which a
/// non-root PATH may lack).
fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|binary| binary.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// One `nats-server` of the cluster.
pub struct NatsServer {
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new(nats_server_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts (install it with `apt-get install nats-server`)");
        self.child = Some(child);
        // Generous: eight cluster tests start two dozen servers at once on two cores.
        let deadline = Instant::now() + Duration::from_secs(30);
        while StdStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): whatever it had not replicated is the others' to keep.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and store.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `size` nats-servers forming one JetStream cluster. Clients are not told of the other servers
/// (`--no_advertise`), so that a node given one URL talks to that server only.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    pub dir: TempDir,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<NatsServer> = route_ports
            .iter()
            .enumerate()
            .map(|(i, route_port)| {
                let port = free_port();
                let store = dir.path().join(format!("nats-{i}"));
                let mut args: Vec<String> = [
                    "--jetstream",
                    "--store_dir",
                    &store.to_string_lossy(),
                    "--name",
                    &format!("nats-{i}"),
                    "--addr",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                // One server is not a cluster: JetStream would wait for peers.
                if size > 1 {
                    args.extend(
                        [
                            "--cluster_name",
                            "idguard-test",
                            "--cluster",
                            &format!("nats://127.0.0.1:{route_port}"),
                            "--routes",
                            &routes,
                            "--no_advertise=true",
                        ]
                        .map(str::to_owned),
                    );
                }
                NatsServer {
                    port,
                    args,
                    log: dir.path().join(format!("nats-{i}.log")),
                    child: None,
                }
            })
            .collect();
        for server in &mut servers {
            server.start();
        }
        Self { servers, dir }
    }

    /// Every server's URL, comma-separated, as `--cluster` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An idguard node of the cluster: `idguard serve --cluster URLS` on its own data dir.
pub struct Node {
    pub server: ChildServer,
    /// Its metrics URL, when `extra` asked for metrics (`--metrics-listen`).
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    urls: String,
    stream: String,
    extra: Vec<String>,
}

impl Node {
    /// Starts a node on `data_dir` (logging to `data_dir.log`) following `stream` on `urls`.
    pub fn start(data_dir: &Path, urls: &str, stream: &str, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|flag| flag.to_string()).collect();
        let (server, metrics) = Self::spawn(data_dir, urls, stream, &extra);
        Self {
            server,
            metrics,
            data_dir: data_dir.to_owned(),
            urls: urls.to_owned(),
            stream: stream.to_owned(),
            extra,
        }
    }

    fn spawn(
        data_dir: &Path,
        urls: &str,
        stream: &str,
        extra: &[String],
    ) -> (ChildServer, Option<String>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("node log");
        let keys = stream_keys(data_dir.parent().expect("a data dir in a folder"));
        let mut command = Command::new(super::BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--cluster", urls, "--cluster-stream", stream])
            .arg("--cluster-keys")
            .arg(&keys)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(log);
        let with_metrics = extra.iter().any(|flag| flag == "--metrics-listen");
        if !with_metrics {
            command.arg("--no-metrics");
        }
        let (server, lines) = ChildServer::spawn(command, if with_metrics { 2 } else { 1 });
        let metrics = lines
            .get(1)
            .and_then(|line| line.strip_prefix("idguard metrics on "))
            .map(str::to_owned);
        (server, metrics)
    }

    /// SIGKILLs it and starts it again on the same data dir.
    pub fn kill_and_restart(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        (self.server, self.metrics) =
            Self::spawn(&self.data_dir, &self.urls, &self.stream, &self.extra);
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.server.channel().await)
    }

    pub async fn verification(&self) -> VerificationClient<Channel> {
        VerificationClient::new(self.server.channel().await)
    }

    /// Applies `event`, retrying while the cluster is not ready or fails over (UNAVAILABLE):
    /// what a reporter does, and safe since the `report_id` makes it idempotent.
    pub async fn apply(
        &self,
        event: pb::RegistryEvent,
    ) -> Result<pb::ApplyResponse, tonic::Status> {
        let mut client = self.registry().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.apply(event.clone()).await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answered => return answered.map(tonic::Response::into_inner),
            }
        }
    }

    /// Waits (up to 60 s) until the node has applied the stream through `sequence`, and returns
    /// its whole event log.
    pub async fn log_through(&self, sequence: u64) -> Vec<pb::RegistryChange> {
        let mut client = self.registry().await;
        let mut watch = client
            .watch(pb::WatchRequest { from_sequence: 0 })
            .await
            .expect("watch")
            .into_inner();
        let mut log = Vec::new();
        let deadline = Duration::from_secs(60);
        while log
            .last()
            .is_none_or(|change: &pb::RegistryChange| change.sequence < sequence)
        {
            let change = tokio::time::timeout(deadline, watch.message())
                .await
                .unwrap_or_else(|_| panic!("the node reached sequence {sequence} within 60 s"))
                .expect("watch goes on")
                .expect("watch goes on");
            log.push(change);
        }
        log
    }
}

/// The stream keys file of the nodes whose data dirs are in `dir`, made on first use: they share
/// one key, so each trusts every other.
pub fn stream_keys(dir: &Path) -> PathBuf {
    let file = dir.join("cluster-keys.toml");
    if !file.exists() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        std::fs::write(dir.join("node.pem"), pair.serialize_pem()).expect("key file");
        std::fs::write(&file, "private_key = \"node.pem\"\ntrusted = []\n").expect("keys file");
    }
    file
}

/// A TCP proxy in front of one NATS server, for cutting a node off from NATS and back.
pub struct Proxy {
    pub port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (cut, cut_now) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut_now = cut_now.clone();
                if *cut_now.borrow() {
                    continue; // dropped: the connection closes at once
                }
                tokio::spawn(async move {
                    let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_now.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through it and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}
