//! OpenTelemetry export (the `otel` feature, `cargo test --release --features otel --test otel`):
//! the real server sends its RPC spans over OTLP/gRPC to a collector that this test runs, with the
//! caller's trace continued.
#![cfg(feature = "otel")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::ChildServer;
use idguard::proto::v1 as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

/// An OTLP trace collector that hands every export to the test.
struct Collector(mpsc::UnboundedSender<ResourceSpans>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for spans in request.into_inner().resource_spans {
            let _ = self.0.send(spans);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the collector on an ephemeral port: its URL and what it receives.
async fn collector() -> (String, mpsc::UnboundedReceiver<ResourceSpans>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(sender)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{address}"), received)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|pair| pair.key == key)
        .and_then(|pair| pair.value.as_ref()?.value.as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_spans_reach_the_collector_in_the_callers_trace_and_the_last_ones_at_shutdown() {
    let (endpoint, mut received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--no-metrics"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        // Nothing is sent on a timer during the test: only stopping can deliver the spans.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let (mut server, _) = ChildServer::spawn(command, 1);
    let mut checks = pb::verification_client::VerificationClient::new(server.channel().await);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut traced = tonic::Request::new(pb::CheckRequest {
        card: Some(common::card(
            &common::number("11010519491231002"),
            "20150101",
            "",
        )),
        min_sequence: 0,
        nonce: Vec::new(),
    });
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    checks.check(traced).await.unwrap();
    common::check_without_card_is_refused(&mut checks).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        received.try_recv().is_err(),
        "spans were sent before the server stopped"
    );

    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));

    let mut spans: Vec<Span> = Vec::new();
    while spans.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("spans within 5 s of stopping")
            .expect("the collector runs");
        let resource = batch.resource.expect("a resource");
        assert_eq!(
            attribute(&resource.attributes, "service.name"),
            Some(&Value::StringValue("idguard".into()))
        );
        spans.extend(batch.scope_spans.into_iter().flat_map(|scope| scope.spans));
    }
    let checks: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name == "/idguard.v1.Verification/Check")
        .collect();
    assert_eq!(checks.len(), 2, "{spans:#?}");
    for span in &checks {
        assert_eq!(span.kind(), SpanKind::Server);
        assert_eq!(
            attribute(&span.attributes, "principal"),
            Some(&Value::StringValue("local".into()))
        );
    }
    let answered = checks
        .iter()
        .find(|span| hex::encode(&span.trace_id) == trace_id)
        .expect("the traced call continues the caller's trace");
    assert_eq!(hex::encode(&answered.parent_span_id), caller_span);
    assert_eq!(
        attribute(&answered.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(0))
    );
    let refused = checks
        .iter()
        .find(|span| hex::encode(&span.trace_id) != trace_id)
        .expect("the untraced call starts its own trace");
    assert!(refused.parent_span_id.is_empty());
    assert_eq!(
        attribute(&refused.attributes, "rpc.grpc.status_code"),
        Some(&Value::IntValue(tonic::Code::InvalidArgument as i64))
    );
}
