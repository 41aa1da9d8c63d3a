//! Logs: human-readable on a terminal or JSON for a log pipeline, the level from `RUST_LOG`, and
//! one line per RPC (method, principal, gRPC status, latency) from a span every line of the call
//! carries. Answered calls log at `debug` (tens of thousands a second would drown everything
//! else), refused ones at `info`, server failures at `warn`.

use std::io::IsTerminal;
use std::time::Duration;

use tonic::codegen::http;
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Text,
    /// One JSON object per line, span fields included.
    Json,
}

/// Sends logs to stderr in `format`, at the level `RUST_LOG` names (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// The span of one RPC; the access layer records the principal in it.
fn rpc_span<B>(request: &http::Request<B>) -> Span {
    tracing::info_span!(
        "rpc",
        method = %request.uri().path(),
        principal = tracing::field::Empty,
        latency_us = tracing::field::Empty
    )
}

/// The gRPC status of a finished call, from the headers of a trailers-only answer or from the
/// trailers: `None` while a stream is still open.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// Logs the end of a call; `stream_us` is how long its response stream lasted after the headers.
fn log_call(status: tonic::Code, stream: Duration) {
    let stream_us = stream.as_micros() as u64;
    match status {
        tonic::Code::Ok => tracing::debug!(status = ?status, stream_us, "rpc answered"),
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
            tracing::warn!(status = ?status, stream_us, "rpc failed");
        }
        _ => tracing::info!(status = ?status, stream_us, "rpc refused"),
    }
}

/// The layer that logs every RPC once, when its status is known.
#[allow(clippy::type_complexity)]
pub fn rpc_layer() -> TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    fn(&http::Request<tonic::body::Body>) -> Span,
    (),
    fn(&http::Response<tonic::body::Body>, Duration, &Span),
    (),
    fn(Option<&http::HeaderMap>, Duration, &Span),
    (),
> {
    TraceLayer::new_for_grpc()
        .make_span_with(rpc_span as fn(&http::Request<tonic::body::Body>) -> Span)
        .on_request(())
        .on_response(
            (|response: &http::Response<tonic::body::Body>, latency: Duration, span: &Span| {
                // Until the headers: for a unary call, all of its handling.
                span.record("latency_us", latency.as_micros() as u64);
                // A trailers-only answer (an error before any message) carries its status here.
                if let Some(status) = grpc_status(response.headers()) {
                    log_call(status, Duration::ZERO);
                }
            }) as fn(&http::Response<tonic::body::Body>, Duration, &Span),
        )
        .on_body_chunk(())
        .on_eos(
            (|trailers: Option<&http::HeaderMap>, duration: Duration, _: &Span| {
                let status = trailers.and_then(grpc_status).unwrap_or(tonic::Code::Ok);
                log_call(status, duration);
            }) as fn(Option<&http::HeaderMap>, Duration, &Span),
        )
        .on_failure(())
}
