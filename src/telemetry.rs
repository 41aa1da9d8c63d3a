//! Logs: human-readable on a terminal or JSON for a log pipeline, the level from `RUST_LOG`, and
//! one line per RPC (method, principal, gRPC status, latency) from a span every line of the call
//! carries. Answered calls log at `debug` (tens of thousands a second would drown everything
//! else), refused ones at `info`, server failures at `warn`. With the `otel` cargo feature the same
//! spans can also go to an OpenTelemetry collector.

use std::io::IsTerminal;
use std::time::Duration;

use tonic::codegen::http;
use tracing::Span;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[cfg(feature = "otel")]
mod otel;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Text,
    /// One JSON object per line, span fields included.
    Json,
}

/// What must stay alive while the process runs: with the `otel` feature and an OTLP endpoint, the
/// span exporter, whose drop sends the last spans.
#[must_use = "dropping it stops OpenTelemetry export"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    _exporter: Option<otel::Exporter>,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration (an endpoint that is not a URI, say).
    #[cfg(feature = "otel")]
    #[error("cannot set up OpenTelemetry export: {0}")]
    Otel(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Sends logs to stderr in `format`, at the level `RUST_LOG` names (default `info`), and, with the
/// `otel` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans to an OpenTelemetry collector. Call
/// it inside the Tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => log.json().with_current_span(true).boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(log);
    #[cfg(feature = "otel")]
    {
        let (layer, exporter) = otel::layer()?.unzip();
        subscriber.with(layer).init();
        Ok(Telemetry {
            _exporter: exporter,
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        subscriber.init();
        Ok(Telemetry {})
    }
}

/// The span of one RPC, whose fields every line logged in it carries: made as the call starts
/// when its lines will be read (see [`answered_calls_shown`]), else only if it ends refused or
/// failed, for that line (`crate::call`). The `otel.*` fields stay empty (and out of the logs)
/// unless spans are exported.
pub(crate) fn rpc_span<B>(
    method: &str,
    principal: Option<&str>,
    request: Option<&http::Request<B>>,
) -> Span {
    let span = tracing::info_span!(
        "rpc",
        method = %method,
        principal = principal.map(tracing::field::display),
        latency_us = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    if let Some(request) = request {
        otel::describe(&span, request);
    }
    #[cfg(not(feature = "otel"))]
    let _ = request;
    span
}

/// The gRPC status of a finished call, from the headers of a trailers-only answer or from the
/// trailers: `None` while a stream is still open.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// Whether an answered call's span and fields are wanted: its `debug` line is on, or spans are
/// exported, which carry them. The log layer formats a span's fields as the span is made and as
/// they are recorded, whether or not a line is then written: at the default level, a span made
/// for every unary check cost about a tenth of the server's time, and recording the fields of
/// calls answered OK as much again, for nothing.
pub(crate) fn answered_calls_shown() -> bool {
    cfg!(feature = "otel") || tracing::enabled!(tracing::Level::DEBUG)
}

/// Logs the end of a call in `span`, which it is run in; `latency` is the time to the response
/// headers (all of a unary call's handling), `stream` how long its response stream lasted after
/// them.
pub(crate) fn log_call(status: tonic::Code, latency: Duration, stream: Duration, span: &Span) {
    let stream_us = stream.as_micros() as u64;
    if status != tonic::Code::Ok || answered_calls_shown() {
        span.record("latency_us", latency.as_micros() as u64);
        span.record("rpc.grpc.status_code", status as i32);
    }
    match status {
        tonic::Code::Ok => tracing::debug!(status = ?status, stream_us, "rpc answered"),
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
            span.record("otel.status_code", "error");
            tracing::warn!(status = ?status, stream_us, "rpc failed");
        }
        _ => tracing::info!(status = ?status, stream_us, "rpc refused"),
    }
}

/// Metrics, exported in Prometheus' text format on their own HTTP listener so that scraping never
/// competes with gRPC for a port or a thread.
pub mod metrics {
    use std::net::SocketAddr;
    use std::sync::Weak;
    use std::time::Duration;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::store::Store;

    /// Latency buckets, in seconds: from a quarter of a millisecond to a minute-long stream.
    const LATENCY_BUCKETS: [f64; 14] = [
        0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
    ];
    const COUNT_BUCKETS: [f64; 12] = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 8192.0,
    ];
    /// How often gauges of the store are read.
    const SAMPLE_EVERY: Duration = Duration::from_secs(2);

    /// Why metrics could not be set up.
    #[derive(Debug, thiserror::Error)]
    pub enum MetricsError {
        #[error("metrics: {0}")]
        Build(#[from] metrics_exporter_prometheus::BuildError),
        #[error("metrics: listening on {address}: {source}")]
        Bind {
            address: SocketAddr,
            source: std::io::Error,
        },
    }

    /// Installs the process-wide recorder and binds `listen`; returns the bound address and the
    /// handle that renders the exposition.
    pub async fn install(
        listen: SocketAddr,
    ) -> Result<(TcpListener, PrometheusHandle), MetricsError> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Suffix("_events".into()), &COUNT_BUCKETS)?
            .install_recorder()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MetricsError::Bind {
                address: listen,
                source,
            })?;
        Ok((listener, handle))
    }

    /// Answers every HTTP request on `listener` with the exposition (`GET /metrics`), or 404.
    /// Deliberately minimal: one request per connection, which is what Prometheus sends.
    pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
        loop {
            let Ok((mut connection, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let Ok(read) = connection.read(&mut request).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&request[..read]);
                let response = if head.starts_with("GET /metrics ") {
                    let body = handle.render();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = connection.write_all(response.as_bytes()).await;
                let _ = connection.shutdown().await;
            });
        }
    }

    /// Sets the gauges read from the store, every few seconds, for as long as it is open (it
    /// holds no reference that would keep the store from closing at shutdown).
    pub async fn sample(store: Weak<Store>) {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let stats = store.statistics();
            metrics::gauge!("idguard_registry_sequence").set(store.log().sequence() as f64);
            metrics::gauge!("idguard_hit_sequence").set(store.hits().sequence() as f64);
            metrics::gauge!("idguard_index_numbers").set(store.citizens().index().len() as f64);
            metrics::gauge!("idguard_index_bytes")
                .set(store.citizens().index().table_bytes() as f64);
            metrics::gauge!("idguard_watch_subscribers").set(stats.watchers as f64);
            metrics::gauge!("idguard_rocksdb_block_cache_hit_ratio")
                .set(stats.block_cache_hit_ratio);
            metrics::gauge!("idguard_rocksdb_pending_compaction_bytes")
                .set(stats.pending_compaction_bytes as f64);
            metrics::counter!("idguard_rocksdb_wal_syncs_total").absolute(stats.wal_syncs);
        }
    }

    /// The methods with a label of their own besides this server's: health and reflection.
    const STANDARD_METHODS: [&str; 4] = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    /// Method labels: every method with its own, then `other`.
    const METHOD_SLOTS: usize = crate::proto::RPC_METHODS.len() + STANDARD_METHODS.len() + 1;

    /// The methods with a label of their own, in slot order.
    fn labelled_methods() -> impl Iterator<Item = &'static str> {
        crate::proto::RPC_METHODS
            .iter()
            .chain(&STANDARD_METHODS)
            .copied()
    }

    /// The slot of the RPC's method label: one per method this server implements, and one,
    /// `other`, for every other path.
    pub(crate) fn method_slot(path: &str) -> usize {
        labelled_methods()
            .position(|method| method == path)
            .unwrap_or(METHOD_SLOTS - 1)
    }

    /// The RPC's method as a label: the path of a method this server implements, else `other`,
    /// so that invented paths (which any caller can send, credentials or not) cannot grow the
    /// label set.
    pub fn method_label(path: &str) -> &'static str {
        slot_label(method_slot(path))
    }

    /// A slot's label: its method's path, or `other`.
    pub(crate) fn slot_label(slot: usize) -> &'static str {
        slot_method(slot).unwrap_or("other")
    }

    /// The path of the method a slot labels; `None` for `other`.
    pub(crate) fn slot_method(slot: usize) -> Option<&'static str> {
        labelled_methods().nth(slot)
    }

    /// The handles of one metric, one per label set, each registered with the recorder the first
    /// time it is used and then kept. A labelled `metrics::counter!` builds its key (a vector of
    /// labels) and looks it up in the recorder's map on every use; on a unary check that made three
    /// look-ups. Registered on first use, not up front, so that only the label sets in use appear
    /// in the exposition. The first use must come after [`install`]: a handle registered before
    /// any recorder stays a no-op (the server installs it before it serves).
    pub(crate) struct Handles<T, const N: usize>([std::sync::OnceLock<T>; N]);

    impl<T: Clone, const N: usize> Handles<T, N> {
        pub(crate) const fn new() -> Self {
            Self([const { std::sync::OnceLock::new() }; N])
        }

        /// The handle of label set `slot`, which `register` registers.
        pub(crate) fn get(&self, slot: usize, register: impl FnOnce() -> T) -> T {
            match self.0.get(slot) {
                Some(cell) => cell.get_or_init(register).clone(),
                None => register(),
            }
        }
    }

    /// Status codes, 0 to 16.
    const CODES: usize = tonic::Code::Unauthenticated as usize + 1;
    static RPC_LATENCY: Handles<metrics::Histogram, METHOD_SLOTS> = Handles::new();
    static RPC_REQUESTS: Handles<metrics::Counter, { METHOD_SLOTS * CODES }> = Handles::new();

    /// A status code's label: its name as tonic spells it (`Ok`, `InvalidArgument`), without
    /// formatting a string on every call.
    fn code_label(code: tonic::Code) -> &'static str {
        use tonic::Code;
        match code {
            Code::Ok => "Ok",
            Code::Cancelled => "Cancelled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        }
    }

    /// Counts an RPC by method and status code, and records its time to the response headers
    /// (for a stream, until it started answering). The status is that of the headers: a unary
    /// call's error, or OK for a call that answered (a stream that fails later counts as OK here).
    pub(crate) fn record_call(slot: usize, code: tonic::Code, latency: Duration) {
        RPC_LATENCY
            .get(
                slot,
                || metrics::histogram!("idguard_rpc_latency_seconds", "method" => slot_label(slot)),
            )
            .record(latency.as_secs_f64());
        RPC_REQUESTS
            .get(slot * CODES + code as usize, || {
                metrics::counter!(
                    "idguard_rpc_requests_total",
                    "method" => slot_label(slot),
                    "code" => code_label(code)
                )
            })
            .increment(1);
    }

    #[cfg(test)]
    mod tests {
        /// Each method keeps its own label and its own handles; every other path shares `other`.
        #[test]
        fn every_method_has_its_own_slot_and_invented_paths_share_one() {
            let methods = crate::proto::RPC_METHODS
                .iter()
                .chain(&super::STANDARD_METHODS);
            for (expected, &method) in methods.enumerate() {
                assert_eq!(super::method_slot(method), expected);
                assert_eq!(super::method_label(method), method);
                assert_eq!(super::slot_method(expected), Some(method));
            }
            for invented in ["/idguard.v1.Verification/Nope", "/", ""] {
                assert_eq!(super::method_slot(invented), super::METHOD_SLOTS - 1);
                assert_eq!(super::method_label(invented), "other");
                assert_eq!(super::slot_method(super::METHOD_SLOTS - 1), None);
            }
        }

        /// A kept handle is registered once; a slot past the table is registered every time.
        #[test]
        fn handles_are_registered_once_per_slot() {
            let handles = super::Handles::<u32, 2>::new();
            let registered = std::cell::Cell::new(0);
            let register = || {
                registered.set(registered.get() + 1);
                registered.get()
            };
            assert_eq!(handles.get(1, register), 1);
            assert_eq!(handles.get(1, register), 1);
            assert_eq!(handles.get(0, register), 2);
            assert_eq!(handles.get(2, register), 3);
            assert_eq!(handles.get(2, register), 4);
        }

        /// The labels stay those that dashboards and alerts already match (`code="Internal"`):
        /// the names tonic's `Debug` gives every code.
        #[test]
        fn every_code_is_labelled_by_its_name() {
            for value in 0..=16 {
                let code = tonic::Code::from_i32(value);
                assert_eq!(super::code_label(code), format!("{code:?}"));
            }
        }
    }
}
