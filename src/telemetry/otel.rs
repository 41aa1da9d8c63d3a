//! OpenTelemetry export (the `otel` cargo feature): every RPC's span goes over OTLP/gRPC to the
//! collector that `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names,
//! continuing the caller's trace when the request carries a W3C `traceparent` header. The standard
//! `OTEL_*` variables (service name, batch delay, headers, timeout) are honoured by the SDK itself,
//! so the collector side needs no idguard-specific knowledge.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tonic::codegen::http;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

/// The variables that switch export on; without either, nothing is exported and no connection is
/// attempted (the SDK would otherwise default to localhost:4317).
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long stopping waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The span exporter, alive until the process stops; dropping it flushes what is queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("idguard: OpenTelemetry export did not finish: {error}");
        }
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans.
pub type SpanLayer<S> = OpenTelemetryLayer<S, SdkTracer>;

/// The tracing layer that turns spans into OpenTelemetry spans, and the exporter behind it; `None`
/// when no endpoint is configured. Must be called inside the Tokio runtime: the exporter's gRPC
/// channel runs its connection there, so the SDK's batch thread only hands it requests.
pub fn layer<S>() -> Result<Option<(SpanLayer<S>, Exporter)>, ExporterBuildError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if !ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("idguard");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("idguard");
    Ok(Some((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Exporter { provider },
    )))
}

/// Names `span` after its method as a server span, and makes it a child of the caller's span when
/// the request carries a `traceparent` header.
pub fn describe<B>(span: &Span, request: &http::Request<B>) {
    span.record("otel.name", request.uri().path());
    span.record("otel.kind", "server");
    if !request.headers().contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    // Fails only when no OpenTelemetry layer is installed, and then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// HTTP/2 request headers, as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
