//! Wiring: the store behind the gRPC services on one listener, behind TLS and the access policy,
//! with graceful shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::{Access, Policy, PolicyError};
use crate::call::CallLayer;
use crate::config::ServeConfig;
use crate::connection::limited_incoming;
use crate::ledger::Ledger;
use crate::ledger::cluster::{Cluster, ClusterError};
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::registry_server::RegistryServer;
use crate::proto::v1::verification_server::VerificationServer;
use crate::service::admin::AdminService;
use crate::service::registry::RegistryService;
use crate::service::verification::VerificationService;
use crate::signing::{KeysError, VerdictSigner};
use crate::store::{Store, StoreError, StoreOptions};

/// The largest response message, in bytes (a batch of signed verdicts, a long history).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The largest `Verification` request: a batch of 10,000 cards is about 450 KB, and a single
/// check a hundred bytes.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1 << 20;
/// The largest request of the other services: an event is at most about 1.3 KB.
pub const MAX_OTHER_REQUEST_BYTES: usize = 64 << 10;
/// The HTTP/2 flow-control window of a connection and of each stream: what a client can make the
/// server hold unread, whatever it sends.
const FLOW_WINDOW_BYTES: u32 = 1 << 20;
/// The largest header block of a call (HTTP/2 `MAX_HEADER_LIST_SIZE`).
const MAX_HEADER_BYTES: u32 = 16 << 10;
/// How often an idle connection is pinged, and how long an answer may take before it is closed:
/// a vanished peer (and its `Watch` streams) is noticed within a minute.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "refusing to serve plaintext on {0}: only a loopback address may be served without TLS. \
         Give --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), or listen on \
         127.0.0.1"
    )]
    PlaintextOffLoopback(std::net::SocketAddr),
    #[error(
        "refusing to serve {0} without an access policy: only a loopback address may be served \
         open. Give --access FILE (see docs/security.md)"
    )]
    OpenOffLoopback(std::net::SocketAddr),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "the data dir follows the cluster stream {0:?}: start this node with --cluster (its \
         events come from the stream), or restore a single-node backup into a new data dir"
    )]
    FollowsStream(String),
    #[error(transparent)]
    SigningKeys(#[from] KeysError),
    #[error("--signing-keys: no key in it is valid now; verdicts would go out unsigned")]
    NoValidSigningKey,
    #[error("reading {}: {source}", path.display())]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The TLS settings `config` asks for, read from their files; `None` for plaintext, which is
/// refused off loopback: a registry of citizens' data never crosses a network in clear.
pub fn tls_config(config: &ServeConfig) -> Result<Option<ServerTlsConfig>, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        if config.listen.ip().is_loopback() {
            return Ok(None);
        }
        return Err(ServeError::PlaintextOffLoopback(config.listen));
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Who may connect and call, and how verdicts are signed.
pub struct Guards {
    /// `None`: plaintext (loopback only, see [`tls_config`]).
    pub tls: Option<ServerTlsConfig>,
    pub access: Arc<Access>,
    pub signer: Option<Arc<VerdictSigner>>,
    pub streams_per_connection: u32,
    pub max_connections: usize,
    /// How long a connection may stay open with no call in flight.
    pub idle_timeout: std::time::Duration,
}

impl Guards {
    /// The guards `config` asks for, read from their files. Refuses, before anything is opened,
    /// plaintext or an open server off loopback and signing keys none of which is valid now.
    pub fn from_config(config: &ServeConfig) -> Result<Self, ServeError> {
        let policy = config.access.as_deref().map(Policy::read).transpose()?;
        // With a policy, every call is authenticated by it: a unit without a certificate may
        // still connect and present a bearer token. A certificate it does present must verify.
        let tls = tls_config(config)?.map(|tls| tls.client_auth_optional(policy.is_some()));
        if policy.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServeError::OpenOffLoopback(config.listen));
        }
        let signer = config
            .signing_keys
            .as_deref()
            .map(VerdictSigner::read)
            .transpose()?;
        if let Some(signer) = &signer
            && !signer.can_sign_at(time::OffsetDateTime::now_utc())
        {
            return Err(ServeError::NoValidSigningKey);
        }
        Ok(Self {
            tls,
            access: Arc::new(Access::new(policy, config.max_in_flight)),
            signer: signer.map(Arc::new),
            streams_per_connection: config.streams_per_connection,
            max_connections: config.max_connections,
            idle_timeout: std::time::Duration::from_secs(config.idle_timeout_secs),
        })
    }
}

/// The services whose health `grpc.health.v1.Health` reports, besides the server as a whole
/// (the empty name).
const HEALTH_NAMES: [&str; 4] = [
    "",
    <VerificationServer<VerificationService> as NamedService>::NAME,
    <RegistryServer<RegistryService> as NamedService>::NAME,
    <AdminServer<AdminService> as NamedService>::NAME,
];

async fn report_health(health: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// A server builder with the transport settings every phase shares: with them, a connection that
/// never authenticates holds at most its flow-control window and one header block per stream
/// (about 1 MiB + 128 × 16 KiB by default) until it is closed.
fn builder(guards_tls: Option<ServerTlsConfig>, streams: u32) -> Result<Server, ServeError> {
    let mut server = Server::builder();
    if let Some(tls) = guards_tls {
        server = server.tls_config(tls)?;
    }
    Ok(server
        .max_concurrent_streams(Some(streams))
        .initial_connection_window_size(FLOW_WINDOW_BYTES)
        .initial_stream_window_size(FLOW_WINDOW_BYTES)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(KEEPALIVE_INTERVAL)))
}

/// While the registry opens (seconds at national scale), the port already answers health checks
/// with NOT_SERVING, so that an orchestrator can tell "starting" from "down".
struct StartupServer {
    health: HealthReporter,
    /// Stops accepting and hands the listener back for the full server.
    stop_accepting: tokio::sync::oneshot::Sender<()>,
    accepting: tokio::task::JoinHandle<TcpListener>,
    handed_over: tokio::sync::oneshot::Sender<()>,
}

impl StartupServer {
    /// Accepts connections on `listener` for a health-only server until [`StartupServer::hand_over`].
    fn start(listener: TcpListener, guards: &Guards) -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut server = builder(guards.tls.clone(), guards.streams_per_connection)?;
        let (connections, incoming) = mpsc::channel(16);
        let (handed_over, go_away) = tokio::sync::oneshot::channel::<()>();
        let (stop_accepting, mut stop) = tokio::sync::oneshot::channel::<()>();
        let accepting = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop => return listener,
                    accepted = listener.accept() => {
                        let accepted = accepted.map(|(stream, _)| stream);
                        if connections.send(accepted).await.is_err() {
                            return listener;
                        }
                    }
                }
            }
        });
        let reporter = health.clone();
        tokio::spawn(async move {
            report_health(&reporter, ServingStatus::NotServing).await;
            // Its connections are told to go away at the hand-over (so that their next calls reach
            // the full server); it ends once they have.
            let served = server
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(incoming),
                    async move {
                        let _ = go_away.await;
                    },
                )
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the start-up health server failed");
            }
        });
        Ok(Self {
            health,
            stop_accepting,
            accepting,
            handed_over,
        })
    }

    /// Stops accepting, tells its watchers the server is up, and returns the listener: every
    /// connection from now on reaches the full server.
    async fn hand_over(self) -> Result<TcpListener, ServeError> {
        let _ = self.stop_accepting.send(());
        let listener = self
            .accepting
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        report_health(&self.health, ServingStatus::Serving).await;
        let _ = self.handed_over.send(());
        Ok(listener)
    }
}

/// How often health follows whether the store can write.
const WRITABILITY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Fails closed, loudly: while the store cannot write (a full or failing disk, RocksDB's
/// background-error state), health is NOT_SERVING, so that load balancers send checks to a node
/// that can record hits; a probe write each second finds out when it can again. Stops when the
/// server drains, which reports NOT_SERVING itself.
async fn report_writability(
    store: Arc<Store>,
    health: HealthReporter,
    mut draining: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut ticks = tokio::time::interval(WRITABILITY_CHECK);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = draining.wait_for(|draining| *draining) => return,
        }
        let writable = store.writable() || store.read(|store| store.probe_write()).await.is_ok();
        metrics::gauge!("idguard_store_writable").set(f64::from(u8::from(writable)));
        if writable != serving && !*draining.borrow() {
            serving = writable;
            if writable {
                tracing::warn!("the registry can write again: health is SERVING");
                report_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::error!(
                    "the registry cannot write (see the errors above): health is NOT_SERVING until \
                     a probe write succeeds"
                );
                report_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Serves every service on `listener` until `shutdown` resolves, then finishes the calls in
/// flight. Health turns NOT_SERVING first, so that load balancers stop sending calls; then
/// long-lived streams are told to end, so that shutdown does not wait for clients that never hang
/// up. Server reflection (v1 and v1alpha) lets generic tools call every RPC without the protos.
async fn serve(
    listener: TcpListener,
    ledger: Ledger,
    guards: Guards,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store = Arc::clone(ledger.store());
    let (start_draining, draining) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, ServingStatus::Serving).await;
    let writability = tokio::spawn(report_writability(
        Arc::clone(&store),
        health.clone(),
        draining.clone(),
    ));
    let shutdown = async move {
        shutdown.await;
        report_health(&health, ServingStatus::NotServing).await;
        let _ = start_draining.send(true);
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let verification = VerificationServer::new(VerificationService::new(
        Arc::clone(&store),
        Arc::clone(&guards.access),
        guards.signer,
        draining.clone(),
    ))
    .max_decoding_message_size(MAX_CHECK_REQUEST_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let registry = RegistryServer::new(RegistryService::new(
        ledger,
        Arc::clone(&guards.access),
        draining,
    ))
    .max_decoding_message_size(MAX_OTHER_REQUEST_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService::new(store, Arc::clone(&guards.access)))
        .max_decoding_message_size(MAX_OTHER_REQUEST_BYTES);
    let served = builder(guards.tls, guards.streams_per_connection)?
        .layer(CallLayer::new(guards.access))
        .layer(crate::service::message_limit::MessageLimitLayer)
        .add_service(verification)
        .add_service(registry)
        .add_service(admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            limited_incoming(listener, guards.max_connections, guards.idle_timeout),
            shutdown,
        )
        .await;
    // Its handle on the store goes with the server: the caller may reopen the data dir at once.
    writability.abort();
    let _ = writability.await;
    served?;
    Ok(())
}

/// The service built from its settings, ready to serve: its listeners bound (health answering
/// `NOT_SERVING` meanwhile), its registry open and, on a cluster node, joined to the stream.
/// `idguard serve` and the tests start the service only through it, so that tests run exactly
/// what production runs.
pub struct Application {
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    listener: TcpListener,
    store: Arc<Store>,
    cluster: Option<Arc<Cluster>>,
    guards: Guards,
}

impl Application {
    /// Checks the settings and the files they name before anything is opened, binds, opens the
    /// registry and joins the cluster if there is one.
    pub async fn build(config: &ServeConfig) -> Result<Self, ServeError> {
        let guards = Guards::from_config(config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    address: config.listen,
                    source,
                })?;
        let address = listener.local_addr()?;
        let metrics_address = if config.no_metrics {
            None
        } else {
            let (listener, handle) =
                crate::telemetry::metrics::install(config.metrics_listen).await?;
            let metrics_address = listener.local_addr()?;
            tokio::spawn(crate::telemetry::metrics::serve(listener, handle));
            Some(metrics_address)
        };
        let startup = StartupServer::start(listener, &guards)?;
        let data_dir = config.data_dir.clone();
        let tuning = StoreOptions {
            block_cache_bytes: config.block_cache_mb << 20,
        };
        let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, &tuning))
            .await
            .map_err(|error| StoreError::Interrupted(error.to_string()))??;
        let store = Arc::new(store);
        tracing::info!(
            data_dir = %config.data_dir.display(),
            sequence = store.log().sequence(),
            numbers_with_records = store.citizens().index().len(),
            index = ?store.citizens().index_origin(),
            "registry open"
        );
        let cluster = match config.cluster() {
            Some(cluster) => Some(Arc::new(Cluster::join(&cluster, Arc::clone(&store)).await?)),
            None => match store.log().stream() {
                Some(stream) => return Err(ServeError::FollowsStream(stream.to_owned())),
                None => None,
            },
        };
        if metrics_address.is_some() {
            tokio::spawn(crate::telemetry::metrics::sample(Arc::downgrade(&store)));
        }
        let listener = startup.hand_over().await?;
        Ok(Self {
            address,
            metrics_address,
            listener,
            store,
            cluster,
            guards,
        })
    }

    /// The gRPC address, with the port the kernel chose for port 0.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The metrics listener's address, unless metrics are off.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Serves until `shutdown` resolves, then finishes the calls in flight for at most
    /// [`SHUTDOWN_GRACE`] and leaves the cluster. The store is closed when this returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let ledger = match &self.cluster {
            Some(cluster) => Ledger::Cluster(Arc::clone(cluster)),
            None => Ledger::Local(Arc::clone(&self.store)),
        };
        drop(self.store);
        let (stopping, stop_requested) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping.send(());
        };
        // Calls that outlive the grace period (a client's health Watch, a stuck peer) do not hold
        // the process: what was acknowledged is durable already.
        let grace_over = async move {
            if stop_requested.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = serve(self.listener, ledger, self.guards, shutdown) => served?,
            () = grace_over => tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "calls still open after the grace period; stopping without them"
            ),
        }
        if let Some(cluster) = self.cluster {
            cluster.leave().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `idguard serve`: builds the service, announces its addresses, and serves until SIGINT or
/// SIGTERM (a signal while the registry opens stops it at once).
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    // One listener for both phases: a signal stream only sees signals sent after it was made, so
    // a second one made after the announcement would miss a SIGTERM sent as soon as it is read.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let application = tokio::select! {
        application = Application::build(&config) => application?,
        () = &mut shutdown => return Ok(()),
    };
    // Fixed lines on stdout, so scripts and tests can find ports chosen by the kernel: written
    // at once, since a reader may stop reading after the first. A closed stdout stops nothing.
    let mut announcement = format!("idguard listening on {}\n", application.address());
    if let Some(metrics_address) = application.metrics_address() {
        announcement.push_str(&format!(
            "idguard metrics on http://{metrics_address}/metrics\n"
        ));
    }
    let mut stdout = std::io::stdout();
    if let Err(error) = stdout
        .write_all(announcement.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(%error, "cannot write the addresses on stdout");
    }
    tracing::info!(address = %application.address(), "serving");
    application.run_until(shutdown).await
}

/// How long a stopping server waits for calls in flight before it exits regardless.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing calls in flight");
}
