//! The API from another ecosystem: `examples/python/run.sh` makes a virtual environment with
//! grpcio and grpcio-tools, generates stubs from `proto/`, and runs a Python client that checks,
//! reports, checks a batch and watches against the real server, failing on any wrong answer.

use crate::common;

use std::process::Command;

use common::ChildServer;

#[test]
fn the_python_client_gets_every_answer_right() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/run.sh"
    ))
    .arg(server.url.trim_start_matches("http://"))
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout.contains("every answer as expected"), "{stdout}");
}
