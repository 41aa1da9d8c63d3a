//! TLS on the real binary: plaintext is refused off loopback, and with mutual TLS only clients
//! holding a certificate from the configured CA get an answer. Certificates are made in the test.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Authority, BIN, ChildServer, card, number};
use idguard::proto::v1 as pb;
use pb::verification_client::VerificationClient;
use tonic::transport::{Certificate as CaPem, Channel, ClientTlsConfig, Identity};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn check(url: &str, tls: ClientTlsConfig) -> Result<pb::CheckResponse, String> {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)
        .map_err(|error| error.to_string())?
        .connect()
        .await
        .map_err(|error| format!("connect: {error}"))?;
    VerificationClient::new(channel)
        .check(pb::CheckRequest {
            nonce: Vec::new(),
            card: Some(card(&number("11010519491231002"), "20150101", "")),
            min_sequence: 0,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.to_string())
}

#[test]
fn plaintext_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("--tls-cert and --tls-key"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "the registry was opened before the refusal"
    );
}

#[test]
fn mutual_tls_answers_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("idguard test CA");
    let (server_cert, server_key) = authority.issue("idguard", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = authority.issue("branch-0001", &[]);
    let stranger = Authority::new("another CA");
    let (stranger_cert, stranger_key) = stranger.issue("branch-0002", &[]);
    let flags = [
        "--tls-cert".to_owned(),
        write(dir.path(), "server.pem", &server_cert),
        "--tls-key".to_owned(),
        write(dir.path(), "server.key", &server_key),
        "--tls-client-ca".to_owned(),
        write(dir.path(), "ca.pem", &authority.cert.pem()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = ChildServer::start_with(&dir.path().join("data"), &flags);
    let url = server.url.replace("http://", "https://");

    // The command-line clients, with and without their certificate.
    let cli = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "check",
                &number("11010519491231002"),
                "--issued",
                "20150101",
            ])
            .args(["--server", &url, "--ca", flags[5]])
            .args(extra)
            .output()
            .unwrap()
    };
    let (cert, key) = (
        write(dir.path(), "client.pem", &client_cert),
        write(dir.path(), "client.key", &client_key),
    );
    let with_certificate = cli(&["--cert", &cert, "--key", &key]);
    assert_eq!(
        with_certificate.status.code(),
        Some(0),
        "{with_certificate:?}"
    );
    assert!(
        String::from_utf8_lossy(&with_certificate.stdout).starts_with("VALID"),
        "{with_certificate:?}"
    );
    let without = cli(&[]);
    assert_ne!(without.status.code(), Some(0), "{without:?}");

    let trusting = || {
        ClientTlsConfig::new()
            .ca_certificate(CaPem::from_pem(authority.cert.pem()))
            .domain_name("localhost")
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let answer = check(
            &url,
            trusting().identity(Identity::from_pem(&client_cert, &client_key)),
        )
        .await
        .expect("a client with a certificate from the CA is answered");
        assert_eq!(answer.status(), pb::CardStatus::Valid);

        let no_certificate = check(&url, trusting()).await;
        assert!(no_certificate.is_err(), "{no_certificate:?}");
        let wrong_ca = check(
            &url,
            trusting().identity(Identity::from_pem(&stranger_cert, &stranger_key)),
        )
        .await;
        assert!(wrong_ca.is_err(), "{wrong_ca:?}");
        let plaintext = VerificationClient::connect(server.url.clone())
            .await
            .map_err(|error| error.to_string());
        let refused = match plaintext {
            Ok(mut client) => client
                .check(pb::CheckRequest {
                    nonce: Vec::new(),
                    card: Some(card(&number("11010519491231002"), "20150101", "")),
                    min_sequence: 0,
                })
                .await
                .is_err(),
            Err(_) => true,
        };
        assert!(refused, "a plaintext client was answered");
    });
}
