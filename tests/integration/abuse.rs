//! What a caller without credentials can cost the server, measured on the real binary over raw
//! HTTP/2 (the `h2` crate, so that nothing in a gRPC client limits what is sent): memory held by
//! unfinished messages, and the metrics' label set grown by invented methods.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::ChildServer;

/// A server with an access policy (one token-only checker) on loopback plaintext, and where its
/// metrics are.
fn guarded_server(dir: &std::path::Path) -> (ChildServer, String) {
    guarded_server_with(dir, &[])
}

fn guarded_server_with(dir: &std::path::Path, flags: &[&str]) -> (ChildServer, String) {
    let policy = dir.join("access.toml");
    std::fs::write(
        &policy,
        format!(
            "[[principal]]\nname = \"kiosk\"\nrole = \"checker\"\ntoken_sha256 = [\"{}\"]\n",
            idguard::access::TokenDigest::of("kiosk-token").to_hex()
        ),
    )
    .unwrap();
    let policy = policy.display().to_string();
    let mut args = vec!["--access", policy.as_str()];
    args.extend_from_slice(flags);
    let (server, lines) = ChildServer::start_reading(&dir.join("data"), &args, 2);
    let metrics = lines[1]
        .strip_prefix("idguard metrics on ")
        .unwrap()
        .to_owned();
    (server, metrics)
}

/// The server process's resident memory, in KiB.
fn rss_kib(server: &ChildServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A raw HTTP/2 connection to `server`, and the task driving it, which ends when the connection
/// closes.
async fn raw_connection(
    server: &ChildServer,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let address = server.url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driving = tokio::spawn(connection);
    (client.ready().await.unwrap(), driving)
}

fn grpc_request(server: &ChildServer, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("{}{path}", server.url))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Unfinished streams per connection in the test below.
const STREAMS: usize = 32;

/// A raw connection and its unfinished streams, held open while it lives.
struct HeldOpen {
    _client: h2::client::SendRequest<Bytes>,
    _driving: tokio::task::JoinHandle<Result<(), h2::Error>>,
    _streams: Vec<(h2::SendStream<Bytes>, http::Response<h2::RecvStream>)>,
}

/// Opens a raw connection to `server` and starts [`STREAMS`] batches on it that announce 4 MiB
/// messages, each sent 1 MiB in and never finished. Returns how many were answered
/// UNAUTHENTICATED from their headers, and the connection, still open.
async fn flood_unauthenticated(server: &ChildServer) -> (usize, HeldOpen) {
    let (mut client, driving) = raw_connection(server).await;
    let mut streams = Vec::new();
    let mut answered = 0;
    for _ in 0..STREAMS {
        let (response, mut body) = client
            .send_request(
                grpc_request(server, "/idguard.v1.Verification/CheckBatch"),
                false,
            )
            .unwrap();
        let mut frame = vec![0u8; 5];
        frame[1..5].copy_from_slice(&(4u32 << 20).to_be_bytes());
        frame.resize(1 << 20, 7);
        body.reserve_capacity(frame.len());
        let _ = body.send_data(Bytes::from(frame), false);
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered without its body")
            .unwrap();
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        if status.as_deref() == Some("16") {
            answered += 1;
        }
        streams.push((body, response));
    }
    let held = HeldOpen {
        _client: client,
        _driving: driving,
        _streams: streams,
    };
    (answered, held)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_connection_holds_little_memory_and_is_answered_from_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = guarded_server(dir.path());
    // What each further connection adds, all of them held open: the first one also pays for what
    // the allocator takes once, when the server first handles this traffic (its per-thread pages,
    // 4 to 11 MiB here), which a second attacker does not make it take again.
    const CONNECTIONS: usize = 5;
    let mut held = Vec::new();
    let mut rss = vec![rss_kib(&server)];
    for connection in 0..CONNECTIONS {
        let (answered, open) = flood_unauthenticated(&server).await;
        assert_eq!(answered, STREAMS, "connection {connection}");
        held.push(open);
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss.push(rss_kib(&server));
    }
    let first = rss[1].saturating_sub(rss[0]);
    let each_further = rss[CONNECTIONS].saturating_sub(rss[1]) / (CONNECTIONS as u64 - 1);
    println!(
        "{CONNECTIONS} connections held open, each with {STREAMS} unfinished 4 MiB messages, all \
         answered UNAUTHENTICATED from their headers: server memory grew {first} KiB with the \
         first, then {each_further} KiB with each further one (RSS in KiB: {rss:?})"
    );
    // The bound docs/security.md states: a flow-control window and a header block per stream.
    assert!(
        each_further < 4 * 1024,
        "each unauthenticated connection held {each_further} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invented_method_names_share_one_metrics_series() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = guarded_server(dir.path());
    let (mut client, _) = raw_connection(&server).await;
    const INVENTED: usize = 300;
    for k in 0..INVENTED {
        let path = format!("/idguard.v1.Verification/Invented{k}");
        let (response, _) = client
            .send_request(grpc_request(&server, &path), true)
            .unwrap();
        response.await.unwrap();
        client = client.ready().await.unwrap();
    }
    let exposition = common::scrape(&metrics);
    let methods: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter(|line| line.starts_with("idguard_rpc_requests_total"))
        .filter_map(|line| line.split("method=\"").nth(1)?.split('"').next())
        .collect();
    println!(
        "{INVENTED} invented methods: {} method labels, /metrics {} bytes",
        methods.len(),
        exposition.len()
    );
    assert_eq!(methods.into_iter().collect::<Vec<_>>(), ["other"]);
    let refused = "idguard_rpc_requests_total{method=\"other\",code=\"Unauthenticated\"}";
    assert_eq!(common::sample(&exposition, refused), INVENTED as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_a_call_in_flight_is_closed_once_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = guarded_server_with(dir.path(), &["--idle-timeout-secs", "1"]);
    // Idle after one refused call: closed by the server about a second later.
    let (mut client, connection) = raw_connection(&server).await;
    let opened = std::time::Instant::now();
    let (response, _) = client
        .send_request(
            grpc_request(&server, "/idguard.v1.Verification/Check"),
            true,
        )
        .unwrap();
    response.await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("an idle connection is closed")
        .unwrap()
        .ok();
    let idle_closed = opened.elapsed();
    assert!(idle_closed >= Duration::from_millis(900), "{idle_closed:?}");

    // A call in flight (a checker's batch whose body is still coming) keeps its connection
    // however long it is quiet; once it is answered, the idle timer runs again.
    let (mut client, mut connection) = raw_connection(&server).await;
    let mut request = grpc_request(&server, "/idguard.v1.Verification/CheckBatch");
    request
        .headers_mut()
        .insert("authorization", "Bearer kiosk-token".parse().unwrap());
    let (response, mut body) = client.send_request(request, false).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(2500), &mut connection).await;
    assert!(
        quiet.is_err(),
        "a connection with a call in flight was closed"
    );
    // An empty CheckBatchRequest, in one gRPC frame.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let answered = std::time::Instant::now();
    let mut answer = response.into_body();
    while let Some(chunk) = answer.data().await {
        chunk.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("closed once idle again")
        .unwrap()
        .ok();
    println!(
        "idle timeout 1 s: an idle connection closed after {idle_closed:?}; one with a call in \
         flight kept for 2.5 s, then closed {:?} after its answer",
        answered.elapsed()
    );
}

/// The `grpc-status` and `grpc-message` of a raw call's answer, from its headers or trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> (String, String) {
    let field = |headers: &http::HeaderMap, name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    if let Some(status) = field(response.headers(), "grpc-status") {
        let message = field(response.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    (
        field(&trailers, "grpc-status").unwrap_or_default(),
        field(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_message_is_bounded_by_its_method_from_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = guarded_server(dir.path());
    let (mut client, _) = raw_connection(&server).await;
    let mut announce = |path: &str, bytes: u32| {
        let mut request = grpc_request(&server, path);
        request
            .headers_mut()
            .insert("authorization", "Bearer kiosk-token".parse().unwrap());
        let (response, mut body) = client.send_request(request, false).unwrap();
        let mut prefix = vec![0u8; 5];
        prefix[1..].copy_from_slice(&bytes.to_be_bytes());
        body.send_data(Bytes::from(prefix), false).unwrap();
        // The body is never finished: the answer must come from the prefix alone.
        (response, body)
    };
    let (response, _unfinished) = announce("/idguard.v1.Verification/Check", 17 << 10);
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered from the prefix")
        .unwrap();
    let (status, message) = tokio::time::timeout(Duration::from_secs(5), grpc_status(response))
        .await
        .expect("answered from the prefix");
    println!("a Check announcing 17 KiB: grpc-status {status}, {message:?}");
    assert_eq!(status, "11", "OUT_OF_RANGE: {message}");
    assert!(
        message.contains("Check") && message.contains("16384"),
        "{message}"
    );
    // A batch of that size is within its method's bound: it waits for the rest of its body.
    let (response, _unfinished) = announce("/idguard.v1.Verification/CheckBatch", 17 << 10);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), response)
            .await
            .is_err(),
        "a batch of 17 KiB was refused"
    );
}
