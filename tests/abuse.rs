//! What a caller without credentials can cost the server, measured on the real binary over raw
//! HTTP/2 (the `h2` crate, so that nothing in a gRPC client limits what is sent): memory held by
//! unfinished messages, and the metrics' label set grown by invented methods.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ChildServer;

/// A server with an access policy (one token-only checker) on loopback plaintext, and where its
/// metrics are.
fn guarded_server(dir: &std::path::Path) -> (ChildServer, String) {
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
    let (server, lines) =
        ChildServer::start_reading(&dir.join("data"), &["--access", policy.as_str()], 2);
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

async fn raw_connection(server: &ChildServer) -> h2::client::SendRequest<Bytes> {
    let address = server.url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
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

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_connection_holds_little_memory_and_is_answered_from_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = guarded_server(dir.path());
    let mut client = raw_connection(&server).await;
    let before = rss_kib(&server);
    // 32 batches announcing 4 MiB messages, each sent 1 MiB in and never finished.
    const STREAMS: usize = 32;
    let mut streams = Vec::new();
    let mut answered = 0;
    for _ in 0..STREAMS {
        let (response, mut body) = client
            .send_request(
                grpc_request(&server, "/idguard.v1.Verification/CheckBatch"),
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = rss_kib(&server).saturating_sub(before);
    println!(
        "{STREAMS} unfinished 4 MiB messages on one unauthenticated connection: {answered} \
         answered UNAUTHENTICATED from their headers; server memory grew {held} KiB"
    );
    assert_eq!(answered, STREAMS);
    // The bound the README states: a flow-control window and a header block per stream.
    assert!(
        held < 8 * 1024,
        "an unauthenticated connection held {held} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invented_method_names_share_one_metrics_series() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = guarded_server(dir.path());
    let mut client = raw_connection(&server).await;
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
