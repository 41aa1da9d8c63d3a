//! Who may do what, over real TLS connections to the real binary with certificates made in the
//! test: authentication by certificate or bearer token, roles and authority scopes, disclosure
//! profiles, the hit log, rate limits and load shedding, and signed verdicts.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Authority, BIN, ChildServer, card, event, number, reported};
use idguard::proto::v1 as pb;
use pb::admin_client::AdminClient;
use pb::registry_client::RegistryClient;
use pb::verification_client::VerificationClient;
use time::macros::datetime;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TICKETING_TOKEN: &str = "ticketing-7f3a9c1e5b2d4a6f8e0c";

/// Principals with certificates; `ticketing` has a token instead.
const WITH_CERTIFICATES: [&str; 9] = [
    "hotel-0001",
    "bank-0755",
    "sz-police",
    "bj-police",
    "gz-police",
    "gd-issuer",
    "audit-office",
    "noisy-kiosk",
    "ops",
];

fn policy() -> String {
    format!(
        r#"
[[principal]]
name = "hotel-0001"
role = "checker"

[[principal]]
name = "bank-0755"
role = "checker"
disclosure = "full"

[[principal]]
name = "ticketing"
role = "checker"
token_sha256 = ["{}"]

[[principal]]
name = "sz-police"
role = "reporter"
scopes = ["4403"]
permissions = ["report_loss"]

[[principal]]
name = "bj-police"
role = "reporter"
scopes = ["1101"]
permissions = ["report_loss"]

[[principal]]
name = "gz-police"
role = "reporter"
scopes = ["4401"]
permissions = ["report_loss"]

[[principal]]
name = "gd-issuer"
role = "reporter"
scopes = ["44"]
permissions = ["issue"]

[[principal]]
name = "audit-office"
role = "auditor"

[[principal]]
name = "noisy-kiosk"
role = "checker"
rate = {{ per_second = 20, burst = 20 }}

[[principal]]
name = "ops"
role = "admin"
max_in_flight = 64
"#,
        idguard::access::TokenDigest::of(TICKETING_TOKEN).to_hex()
    )
}

/// A TLS server with the policy above and signing keys, and what clients need to reach it.
struct Fixture {
    dir: tempfile::TempDir,
    server: ChildServer,
    metrics: String,
    flags: Vec<String>,
    url: String,
    ca: String,
    authority: Authority,
    identities: HashMap<&'static str, (String, String)>,
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

impl Fixture {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::new("idguard test CA");
        let (server_cert, server_key) = authority.issue("idguard", &["localhost", "127.0.0.1"]);
        // The signing key, a PKCS#8 Ed25519 key as `openssl genpkey -algorithm ed25519` writes.
        let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        write(dir.path(), "verdicts.pem", &signing.serialize_pem());
        let keys = write(
            dir.path(),
            "keys.toml",
            "[[key]]\nprivate_key = \"verdicts.pem\"\nnot_before = 2020-01-01T00:00:00Z\nnot_after = 2100-01-01T00:00:00Z\n",
        );
        let ca = write(dir.path(), "ca.pem", &authority.cert.pem());
        let mut flags = vec![
            "--tls-cert".to_owned(),
            write(dir.path(), "server.pem", &server_cert),
            "--tls-key".to_owned(),
            write(dir.path(), "server.key", &server_key),
            "--tls-client-ca".to_owned(),
            ca.clone(),
            "--access".to_owned(),
            write(dir.path(), "access.toml", &policy()),
            "--signing-keys".to_owned(),
            keys,
        ];
        flags.extend(extra.iter().map(|flag| flag.to_string()));
        let (server, metrics) = start_server(dir.path(), &flags);
        let url = server.url.replace("http://", "https://");
        let identities = WITH_CERTIFICATES
            .iter()
            .map(|name| (*name, authority.issue(name, &[])))
            .collect();
        Self {
            dir,
            server,
            metrics,
            flags,
            url,
            ca,
            authority,
            identities,
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same data dir.
    fn kill_and_restart(&mut self) {
        self.server.child.kill().unwrap();
        self.server.child.wait().unwrap();
        (self.server, self.metrics) = start_server(self.dir.path(), &self.flags);
        self.url = self.server.url.replace("http://", "https://");
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.authority.cert.pem()))
            .domain_name("localhost")
    }

    async fn connect(&self, tls: ClientTlsConfig) -> Result<Channel, String> {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)
            .map_err(|error| error.to_string())?
            .connect()
            .await
            .map_err(|error| format!("{error:?}"))
    }

    /// A channel presenting `name`'s certificate.
    async fn as_principal(&self, name: &str) -> Channel {
        let (cert, key) = &self.identities[name];
        self.connect(self.tls().identity(Identity::from_pem(cert, key)))
            .await
            .expect("a certificate from the CA connects")
    }

    /// A check of `id` over a connection presenting `(cert, key)`; a refused handshake or call is
    /// the error's text.
    async fn check_presenting(
        &self,
        (cert, key): (String, String),
        id: &str,
    ) -> Result<pb::CheckResponse, String> {
        let channel = self
            .connect(self.tls().identity(Identity::from_pem(cert, key)))
            .await?;
        check(&channel, id)
            .await
            .map_err(|status| format!("{status:?}"))
    }

    /// A channel without a client certificate.
    async fn anonymous(&self) -> Channel {
        self.connect(self.tls())
            .await
            .expect("TLS without a client certificate connects")
    }

    /// `idguard` client command line against the server, as `name` (certificate files).
    fn cli(&self, name: &str, args: &[&str]) -> Output {
        let (cert, key) = &self.identities[name];
        let cert = write(self.dir.path(), &format!("{name}.pem"), cert);
        let key = write(self.dir.path(), &format!("{name}.key"), key);
        Command::new(BIN)
            .args(args)
            .args([
                "--server", &self.url, "--ca", &self.ca, "--cert", &cert, "--key", &key,
            ])
            .output()
            .unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The server, and where it serves its metrics.
fn start_server(dir: &Path, flags: &[String]) -> (ChildServer, String) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (server, lines) = ChildServer::start_reading(&dir.join("data"), &flags, 2);
    let metrics = lines[1]
        .strip_prefix("idguard metrics on ")
        .expect("the metrics address")
        .to_owned();
    (server, metrics)
}

fn stolen_number() -> String {
    number("44030519800101001")
}

fn check_request(id: &str, nonce: &[u8]) -> pb::CheckRequest {
    pb::CheckRequest {
        card: Some(card(id, "20150101", "")),
        min_sequence: 0,
        nonce: nonce.to_vec(),
    }
}

fn with_header<T>(message: T, name: &'static str, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

async fn check(channel: &Channel, id: &str) -> Result<pb::CheckResponse, tonic::Status> {
    VerificationClient::new(channel.clone())
        .check(check_request(id, b""))
        .await
        .map(tonic::Response::into_inner)
}

fn report_stolen(report_id: &str, authority: &str, id: &str) -> pb::RegistryEvent {
    let mut event = event(
        report_id,
        datetime!(2026-03-01 09:00 +8),
        reported(card(id, "20150101", ""), pb::LossKind::Stolen),
    );
    event.authority = authority.into();
    event
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_are_known_by_certificate_or_token_and_nobody_else_is_answered() {
    let fixture = Fixture::start(&[]);
    let id = number("11010519491231002");

    let known = check(&fixture.as_principal("hotel-0001").await, &id).await;
    assert_eq!(
        known.expect("a known certificate").status(),
        pb::CardStatus::Valid
    );

    let anonymous = fixture.anonymous().await;
    let refused = check(&anonymous, &id).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("no credentials"), "{refused:?}");

    let mut client = VerificationClient::new(anonymous.clone());
    let good = client
        .check(with_header(
            check_request(&id, b""),
            "authorization",
            &format!("Bearer {TICKETING_TOKEN}"),
        ))
        .await;
    assert_eq!(
        good.expect("a known token").into_inner().status(),
        pb::CardStatus::Valid
    );
    let bad = client
        .check(with_header(
            check_request(&id, b""),
            "authorization",
            "Bearer guessed",
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    assert!(
        bad.message().contains("bearer token is not known"),
        "{bad:?}"
    );

    // A certificate from the CA for a name the policy does not know.
    let unknown = fixture.authority.issue("stranger-branch", &[]);
    let refused = fixture.check_presenting(unknown, &id).await.unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");

    // A certificate naming the principal in a DNS SAN rather than the CN.
    let by_san = fixture.authority.issue("some device", &["bank-0755"]);
    assert!(fixture.check_presenting(by_san, &id).await.is_ok());

    // Certificates that do not verify never get as far as a call.
    let other_ca = Authority::new("another CA").issue("hotel-0001", &[]);
    let wrong_ca = fixture.check_presenting(other_ca, &id).await;
    assert!(wrong_ca.is_err(), "another CA's certificate was answered");
    let expired = fixture.authority.issue_with("hotel-0001", &[], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let expired = fixture.check_presenting(expired, &id).await;
    assert!(expired.is_err(), "an expired certificate was answered");

    // The command line with a token.
    let output = Command::new(BIN)
        .args(["check", &id, "--issued", "20150101"])
        .args(["--server", &fixture.url, "--ca", &fixture.ca])
        .env("IDGUARD_TOKEN", TICKETING_TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_scopes_decide_what_a_caller_may_do_and_events_record_who_sent_them() {
    let fixture = Fixture::start(&[]);
    let police = fixture.as_principal("sz-police").await;
    let hotel = fixture.as_principal("hotel-0001").await;
    let auditor = fixture.as_principal("audit-office").await;
    let id = stolen_number();
    let beijing = number("11010519800101001");

    // A checker may not report; a reporter may not report outside its scopes. Nothing is written.
    let denied = RegistryClient::new(hotel.clone())
        .apply(report_stolen("h-1", "440305", &id))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("needs the reporter role"),
        "{denied:?}"
    );
    let out_of_scope = RegistryClient::new(police.clone())
        .apply(report_stolen("p-1", "110105", &beijing))
        .await
        .unwrap_err();
    assert_eq!(out_of_scope.code(), Code::PermissionDenied);
    assert!(
        out_of_scope.message().starts_with("authority:"),
        "{out_of_scope:?}"
    );
    let mut records = RegistryClient::new(auditor.clone());
    for number in [&id, &beijing] {
        let none = records
            .get_record(pb::GetRecordRequest {
                id_number: number.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(none.code(), Code::NotFound, "a refused event was written");
    }

    // In scope, over Apply and Submit; an out-of-scope event in a stream is refused alone.
    let applied = RegistryClient::new(police.clone())
        .apply(report_stolen("p-2", "440305SZPSB", &id))
        .await
        .expect("in scope")
        .into_inner();
    assert_eq!(applied.sequence, 1);
    let events = vec![
        report_stolen("p-3", "110105", &beijing),
        report_stolen("p-4", "440306", &number("44030619800101001")),
    ];
    let acks: Vec<pb::SubmitAck> = {
        let mut stream = RegistryClient::new(police.clone())
            .submit(tokio_stream::iter(events))
            .await
            .unwrap()
            .into_inner();
        let mut acks = Vec::new();
        while let Some(ack) = stream.message().await.unwrap() {
            acks.push(ack);
        }
        acks
    };
    assert_eq!(acks.len(), 2);
    assert_eq!(
        acks[0].error.as_ref().map(|e| e.code),
        Some(Code::PermissionDenied as i32)
    );
    assert_eq!((acks[1].error.as_ref(), acks[1].sequence), (None, 2));

    let record = records
        .get_record(pb::GetRecordRequest {
            id_number: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.events.len(), 1);
    assert_eq!(record.events[0].recorded_by, "sz-police");

    // Shenzhen cannot withdraw what Beijing reported: not under a Beijing authority (outside its
    // scopes), and under a Shenzhen one the id names an event of Guangdong's namespace instead.
    let ops = fixture.as_principal("ops").await;
    RegistryClient::new(ops.clone())
        .apply(report_stolen("bj-1", "110105", &beijing))
        .await
        .expect("admin reports nationwide");
    let mut withdrawal = event(
        "p-5",
        datetime!(2026-03-02 09:00 +8),
        common::withdrawn("bj-1"),
    );
    withdrawal.authority = "110105".into();
    let refused = RegistryClient::new(police.clone())
        .apply(withdrawal.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    withdrawal.authority = "440305".into();
    RegistryClient::new(police.clone())
        .apply(withdrawal)
        .await
        .expect("a withdrawal waiting for a Guangdong event bj-1");
    let still_stolen = check(&ops, &beijing).await.unwrap();
    assert_eq!(still_stolen.reason(), pb::Reason::Stolen);
    let mut watch = records
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    for (sequence, by) in [(1, "sz-police"), (2, "sz-police"), (3, "ops")] {
        let change = watch.message().await.unwrap().unwrap();
        assert_eq!(
            (change.sequence, change.recorded_by.as_str()),
            (sequence, by)
        );
    }

    // Each role reaches its own service only; admin reaches all.
    let status = RegistryClient::new(hotel.clone())
        .get_record(pb::GetRecordRequest {
            id_number: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("needs the auditor role"),
        "{status:?}"
    );
    assert!(!status.message().contains(&id), "{status:?}");
    let status = check(&auditor, &id).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = AdminClient::new(auditor.clone())
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(check(&ops, &id).await.is_ok());
    assert!(
        RegistryClient::new(ops.clone())
            .get_record(pb::GetRecordRequest {
                id_number: id.clone(),
                ..Default::default()
            })
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verdicts_reveal_what_the_profile_allows_and_hits_reach_auditors() {
    let mut fixture = Fixture::start(&[]);
    let id = stolen_number();
    RegistryClient::new(fixture.as_principal("sz-police").await)
        .apply(report_stolen("p-1", "440305", &id))
        .await
        .unwrap();
    // A superseded card is invalid but no hit.
    let superseded = number("44030519900101001");
    let mut newer = event(
        "p-2",
        datetime!(2026-03-01 09:00 +8),
        common::issued(card(&superseded, "20200101", "")),
    );
    newer.authority = "440305".into();
    RegistryClient::new(fixture.as_principal("gd-issuer").await)
        .apply(newer)
        .await
        .unwrap();

    let hotel = fixture.as_principal("hotel-0001").await;
    let seen_by_hotel = VerificationClient::new(hotel.clone())
        .check(with_header(
            check_request(&id, b""),
            "x-idguard-terminal",
            "front-desk-2",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen_by_hotel.status(), pb::CardStatus::Invalid);
    assert_eq!(seen_by_hotel.reason(), pb::Reason::Unspecified);
    assert_eq!(
        (seen_by_hotel.invalid_since, seen_by_hotel.detail.as_str()),
        (None, "")
    );
    let seen_by_bank = check(&fixture.as_principal("bank-0755").await, &id)
        .await
        .unwrap();
    assert_eq!(seen_by_bank.reason(), pb::Reason::Stolen);
    assert!(seen_by_bank.invalid_since.is_some());
    let not_a_hit = check(&hotel, &superseded).await.unwrap();
    assert_eq!(not_a_hit.status(), pb::CardStatus::Invalid);
    let batch = VerificationClient::new(hotel.clone())
        .check_batch(pb::CheckBatchRequest {
            cards: vec![card(&id, "20150101", ""), card("bad", "", "")],
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results[0].reason(), pb::Reason::Unspecified);
    assert_eq!(batch.results[1].status(), pb::CardStatus::Malformed);
    let streamed = VerificationClient::new(hotel.clone())
        .check_stream(tokio_stream::iter([check_request(&id, b"")]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(streamed.status(), pb::CardStatus::Invalid);
    assert_eq!(streamed.reason(), pb::Reason::Unspecified);

    let mut hits = RegistryClient::new(fixture.as_principal("audit-office").await)
        .watch_hits(pb::WatchHitsRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let hit = hits.message().await.unwrap().unwrap();
        let verdict = hit.verdict.clone().unwrap();
        assert_eq!(
            verdict.reason(),
            pb::Reason::Stolen,
            "auditors see the whole verdict"
        );
        assert_eq!(hit.card.as_ref().unwrap().id_number, id);
        assert!(hit.checked_at.is_some());
        seen.push((hit.sequence, hit.principal, hit.terminal));
    }
    assert_eq!(
        seen,
        [
            (1, "hotel-0001".to_owned(), "front-desk-2".to_owned()),
            (2, "bank-0755".to_owned(), String::new()),
            (3, "hotel-0001".to_owned(), String::new()),
            (4, "hotel-0001".to_owned(), String::new()),
        ]
    );
    // Live: a new hit arrives on the open feed.
    let live = VerificationClient::new(fixture.as_principal("bank-0755").await)
        .check(with_header(
            check_request(&id, b""),
            "x-idguard-terminal",
            "branch-17",
        ))
        .await;
    assert!(live.is_ok());
    let hit = hits.message().await.unwrap().unwrap();
    assert_eq!((hit.sequence, hit.terminal.as_str()), (5, "branch-17"));

    let callers = AdminClient::new(fixture.as_principal("ops").await)
        .list_callers(pb::ListCallersRequest {})
        .await
        .unwrap()
        .into_inner()
        .callers;
    let hotel_counts = callers
        .iter()
        .find(|c| c.principal == "hotel-0001")
        .unwrap();
    assert_eq!(
        (
            hotel_counts.checks_valid,
            hotel_counts.checks_invalid,
            hotel_counts.checks_malformed,
            hotel_counts.hits
        ),
        (0, 4, 1, 3)
    );

    // Every answered hit is durable: after a SIGKILL the log still holds them all.
    fixture.kill_and_restart();
    let mut replayed = RegistryClient::new(fixture.as_principal("audit-office").await)
        .watch_hits(pb::WatchHitsRequest { from_sequence: 4 })
        .await
        .unwrap()
        .into_inner();
    for (sequence, principal) in [(4, "hotel-0001"), (5, "bank-0755")] {
        let hit = replayed.message().await.unwrap().unwrap();
        assert_eq!(
            (hit.sequence, hit.principal.as_str()),
            (sequence, principal)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_is_refused_with_a_retry_hint_and_does_not_starve_others() {
    let fixture = Fixture::start(&[]);
    let id = number("11010519491231002");
    let noisy = fixture.as_principal("noisy-kiosk").await;
    let started = Instant::now();
    let mut answered = 0u64;
    let mut refusal = None;
    for _ in 0..100 {
        match check(&noisy, &id).await {
            Ok(_) => answered += 1,
            Err(status) => refusal = Some(status),
        }
    }
    let allowed = 20.0 + 20.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        (answered as f64) <= allowed,
        "{answered} answered, at most {allowed} allowed"
    );
    let refusal = refusal.expect("the rate limit was reached");
    assert_eq!(refusal.code(), Code::ResourceExhausted);
    let hint: u64 = refusal
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&hint), "{hint}");
    use tonic_types::StatusExt;
    assert!(
        refusal.get_details_retry_info().is_some(),
        "no google.rpc.RetryInfo"
    );

    // The abuser floods batches from four connections while a bank checks one card at a time:
    // every one of the bank's checks is answered.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut abusers = Vec::new();
    for _ in 0..4 {
        let channel = fixture.as_principal("noisy-kiosk").await;
        let id = id.clone();
        abusers.push(tokio::spawn(async move {
            let mut client = VerificationClient::new(channel);
            let (mut cards, mut refused) = (0u64, 0u64);
            while Instant::now() < deadline {
                let batch = pb::CheckBatchRequest {
                    cards: vec![card(&id, "20150101", ""); 100],
                    min_sequence: 0,
                    nonce: Vec::new(),
                };
                match client.check_batch(batch).await {
                    Ok(_) => cards += 100,
                    Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
                    Err(status) => panic!("{status:?}"),
                }
            }
            (cards, refused)
        }));
    }
    let bank = fixture.as_principal("bank-0755").await;
    let mut bank_checks = 0;
    while Instant::now() < deadline {
        check(&bank, &id)
            .await
            .expect("the bank is answered while the kiosk floods");
        bank_checks += 1;
    }
    let (mut flooded, mut refused) = (0, 0);
    for abuser in abusers {
        let (cards, refusals) = abuser.await.unwrap();
        flooded += cards;
        refused += refusals;
    }
    println!(
        "bank: {bank_checks} checks; kiosk: {flooded} cards answered, {refused} batches refused"
    );
    assert!(refused > 0);
    // Four batches may each pay into debt once; after that only the rate passes.
    assert!(
        flooded <= 400 + 20 * 3 + 100,
        "the kiosk got {flooded} cards answered"
    );
    assert!(
        bank_checks >= 50,
        "the bank got only {bank_checks} checks answered in 3 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_caller_waiting_or_flooding_never_makes_the_service_unavailable_to_others() {
    let fixture = Fixture::start(&["--max-in-flight", "4"]);
    let id = number("11010519491231002");
    let bank = fixture.as_principal("bank-0755").await;
    let hotel = fixture.as_principal("hotel-0001").await;
    let ops = fixture.as_principal("ops").await;

    // A min_sequence far beyond the registry is refused at once rather than waited for.
    let started = Instant::now();
    let mut far = check_request(&id, b"");
    far.min_sequence = 1_000_000;
    let refused = VerificationClient::new(bank.clone())
        .check(far)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().starts_with("min_sequence: "),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // The bank's waits for a near sequence hold only its own share (a quarter of 4 calls): its
    // next call is refused as its own excess, while the hotel is answered at once.
    let waiting = {
        let bank = bank.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut request = check_request(&id, b"");
            request.min_sequence = 5;
            let mut request = tonic::Request::new(request);
            request.set_timeout(Duration::from_secs(3));
            VerificationClient::new(bank).check(request).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let excess = check(&bank, &id).await.unwrap_err();
    assert_eq!(excess.code(), Code::ResourceExhausted, "{excess:?}");
    assert!(
        excess.message().contains("limit of 1 calls in flight"),
        "{excess:?}"
    );
    let started = Instant::now();
    for _ in 0..20 {
        assert!(check(&hotel, &id).await.is_ok(), "the hotel was refused");
    }
    println!(
        "20 hotel checks while the bank waits: {:?}",
        started.elapsed()
    );
    // An empty batch costs a rate token and a share like any call.
    let empty = VerificationClient::new(bank.clone())
        .check_batch(pb::CheckBatchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::ResourceExhausted, "{empty:?}");
    let waited = waiting.await.unwrap().unwrap_err();
    assert_eq!(waited.code(), Code::DeadlineExceeded);
    assert!(check(&bank, &id).await.is_ok(), "the share is free again");

    // Past the server's limit of calls being answered, new ones are shed at once: four batches of
    // 10,000 signed verdicts from the admin (whose policy gives it a share of 64) hold every
    // permit for a while.
    let batch = pb::CheckBatchRequest {
        cards: (0..10_000)
            .map(|k| card(&number(&format!("110105194912{k:05}")), "20150101", ""))
            .collect(),
        ..Default::default()
    };
    let mut shed = None;
    for _ in 0..20 {
        let batches: Vec<_> = (0..4)
            .map(|_| {
                let (ops, batch) = (ops.clone(), batch.clone());
                tokio::spawn(async move { VerificationClient::new(ops).check_batch(batch).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let answer = check(&hotel, &id).await;
        let elapsed = started.elapsed();
        for batch in batches {
            let _ = batch.await.unwrap();
        }
        if let Err(status) = answer {
            shed = Some((status, elapsed));
            break;
        }
    }
    let (status, elapsed) = shed.expect("no call was shed while every permit was held");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("limit of 4 calls"), "{status:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "shedding waited: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_verdicts_verify_offline_and_any_change_fails() {
    let fixture = Fixture::start(&[]);
    let id = stolen_number();
    RegistryClient::new(fixture.as_principal("sz-police").await)
        .apply(report_stolen("p-1", "440305", &id))
        .await
        .unwrap();
    let hotel = fixture.as_principal("hotel-0001").await;
    let mut verification = VerificationClient::new(hotel);
    let keys = verification
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 1);
    let presented = card(&id, "20150101", "");
    let verdict = verification
        .check(check_request(&id, b"case-42"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.signature.as_ref().unwrap().nonce, b"case-42");
    assert_eq!(
        idguard::signing::verify(&presented, &verdict, &keys),
        Ok(())
    );
    let mut changed = verdict.clone();
    changed.status = pb::CardStatus::Valid.into();
    assert!(idguard::signing::verify(&presented, &changed, &keys).is_err());

    // The command line: save a verdict and the keys, verify offline, and tamper with the file.
    let saved = fixture.path("verdict.json");
    let output = fixture.cli(
        "bank-0755",
        &[
            "check",
            &id,
            "--issued",
            "20150101",
            "--nonce",
            "case-43",
            "--save",
            saved.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let keys_file = fixture.path("keys.json");
    let output = fixture.cli(
        "bank-0755",
        &["signing-keys", "--out", keys_file.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let verify = |path: &Path| {
        Command::new(BIN)
            .args([
                "verify",
                path.to_str().unwrap(),
                "--keys",
                keys_file.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let genuine = verify(&saved);
    assert_eq!(genuine.status.code(), Some(0), "{genuine:?}");
    assert!(
        String::from_utf8_lossy(&genuine.stdout).starts_with("genuine"),
        "{genuine:?}"
    );
    let text = std::fs::read_to_string(&saved).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["sequence"] = serde_json::json!(json["sequence"].as_u64().unwrap() + 1);
    let tampered = fixture.path("tampered.json");
    std::fs::write(&tampered, json.to_string()).unwrap();
    let forged = verify(&tampered);
    assert_eq!(forged.status.code(), Some(1), "{forged:?}");
    assert!(
        String::from_utf8_lossy(&forged.stdout).starts_with("NOT GENUINE"),
        "{forged:?}"
    );
}

/// Applies `event` as `reporter`, returning its sequence or the refusal.
async fn apply_as(channel: &Channel, event: pb::RegistryEvent) -> Result<u64, tonic::Status> {
    RegistryClient::new(channel.clone())
        .apply(event)
        .await
        .map(|applied| applied.into_inner().sequence)
}

fn withdrawal_of(report_id: &str, target: &str, authority: &str) -> pb::RegistryEvent {
    let mut withdrawal = event(
        report_id,
        datetime!(2026-03-02 09:00 +8),
        common::withdrawn(target),
    );
    withdrawal.authority = authority.into();
    withdrawal
}

#[tokio::test(flavor = "multi_thread")]
async fn no_reporter_undoes_or_blocks_another_jurisdictions_reports_whatever_the_order() {
    let fixture = Fixture::start(&[]);
    let shenzhen = fixture.as_principal("sz-police").await;
    let beijing = fixture.as_principal("bj-police").await;
    let guangzhou = fixture.as_principal("gz-police").await;
    let issuer = fixture.as_principal("gd-issuer").await;
    let ops = fixture.as_principal("ops").await;
    let mut records = RegistryClient::new(fixture.as_principal("audit-office").await);
    let reason = |id: String| {
        let ops = ops.clone();
        async move { check(&ops, &id).await.unwrap().reason() }
    };

    // A withdrawal sent before its target only ever undoes an event inside the withdrawer's
    // grant: Shenzhen's withdrawal of bj-0002 names an id of Guangdong's namespace, not
    // Beijing's report; its withdrawal of Guangzhou's gz-0001 meets it but is outside its scopes;
    // the issuer's withdrawal of a loss report is outside its permissions. Each is kept, refused,
    // in the number's record.
    let (bj_card, gz_card, sz_card) = (
        number("11010519800101001"),
        number("44010319800101001"),
        number("44030519800101002"),
    );
    apply_as(&shenzhen, withdrawal_of("sz-w1", "bj-0002", "440305"))
        .await
        .unwrap();
    let scope_refused = apply_as(&shenzhen, withdrawal_of("sz-w2", "gz-0001", "440305"))
        .await
        .unwrap();
    let permission_refused = apply_as(&issuer, withdrawal_of("gd-w1", "sz-0009", "440300"))
        .await
        .unwrap();
    apply_as(&beijing, report_stolen("bj-0002", "110105", &bj_card))
        .await
        .expect("not blocked by Shenzhen's withdrawal");
    apply_as(&guangzhou, report_stolen("gz-0001", "440103", &gz_card))
        .await
        .unwrap();
    apply_as(&shenzhen, report_stolen("sz-0009", "440305", &sz_card))
        .await
        .unwrap();
    for card in [&bj_card, &gz_card, &sz_card] {
        assert_eq!(reason(card.clone()).await, pb::Reason::Stolen, "{card}");
    }
    for (card, refused) in [(&gz_card, scope_refused), (&sz_card, permission_refused)] {
        let record = records
            .get_record(pb::GetRecordRequest {
                id_number: card.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(record.refused_withdrawals, [refused], "{card}");
        assert!(record.events.iter().any(|e| e.sequence == refused));
    }
    let metrics = common::scrape(&fixture.metrics);
    assert_eq!(
        common::sample(&metrics, "idguard_withdrawals_refused_total"),
        2.0
    );
    // Inside its grant, a withdrawal undoes its target whichever comes first.
    let own_card = number("44030519800101003");
    apply_as(&shenzhen, withdrawal_of("sz-w3", "sz-0010", "440305"))
        .await
        .unwrap();
    apply_as(&shenzhen, report_stolen("sz-0010", "440305", &own_card))
        .await
        .unwrap();
    assert_eq!(reason(own_card.clone()).await, pb::Reason::Unspecified);
    // After its target, a withdrawal outside the grant is refused at once, naming nothing.
    let late = apply_as(&issuer, withdrawal_of("gd-w2", "sz-0009", "440300"))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::PermissionDenied, "{late:?}");
    assert!(!late.message().contains("440305"), "{late:?}");

    // Report ids are unique per province: Shenzhen squatting bj-0003 leaves Beijing's free, and
    // a collision inside a province does not reveal the other city's event.
    apply_as(&shenzhen, report_stolen("bj-0003", "440305", &sz_card))
        .await
        .unwrap();
    apply_as(&beijing, report_stolen("bj-0003", "110105", &bj_card))
        .await
        .expect("Beijing's id is Beijing's");
    let first = apply_as(&shenzhen, report_stolen("sz-0011", "440305", &sz_card))
        .await
        .unwrap();
    let collision = apply_as(&guangzhou, report_stolen("sz-0011", "440103", &gz_card))
        .await
        .unwrap_err();
    assert_eq!(collision.code(), Code::AlreadyExists, "{collision:?}");
    assert!(!collision.message().contains("sequence"), "{collision:?}");
    let own = apply_as(&shenzhen, report_stolen("sz-0011", "440306", &sz_card))
        .await
        .unwrap_err();
    assert!(
        own.message().contains(&format!("(sequence {first})")),
        "{own:?}"
    );
    let retry = RegistryClient::new(shenzhen.clone())
        .apply(report_stolen("sz-0011", "440305", &sz_card))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.sequence, retry.duplicate), (first, true));

    // Event kinds are bound to organs; a refusal names the missing permission and writes nothing.
    let fresh = number("44030519900101004");
    let kinds = [
        (
            &shenzhen,
            event(
                "k-1",
                datetime!(2026-03-01 09:00 +8),
                common::issued(card(&fresh, "20200101", "")),
            ),
            "the issue permission",
        ),
        (
            &shenzhen,
            event(
                "k-2",
                datetime!(2026-03-01 09:00 +8),
                common::cancelled(&fresh),
            ),
            "the cancel permission",
        ),
        (
            &issuer,
            report_stolen("k-3", "440305", &fresh),
            "the report_loss permission",
        ),
    ];
    for (reporter, refused, permission) in kinds {
        let denied = apply_as(reporter, refused).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains(permission), "{denied:?}");
    }
    let none = records
        .get_record(pb::GetRecordRequest {
            id_number: fresh.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound, "a refused event was written");
    let issuance = event(
        "k-4",
        datetime!(2026-03-01 09:00 +8),
        common::issued(card(&fresh, "20200101", "")),
    );
    apply_as(&issuer, issuance)
        .await
        .expect("an issuing organ issues");

    // A withdrawal of a withdrawal is refused whichever arrives first: sent after it, at once;
    // sent before (and so acknowledged), it is counted refused when the withdrawal it names
    // arrives, which applies as it would have anyway.
    let of_withdrawal = apply_as(&shenzhen, withdrawal_of("sz-w6", "sz-w3", "440305"))
        .await
        .unwrap_err();
    assert_eq!(of_withdrawal.code(), Code::InvalidArgument);
    let twice_lost = number("44030519800101005");
    apply_as(&shenzhen, report_stolen("sz-0013", "440305", &twice_lost))
        .await
        .unwrap();
    apply_as(&shenzhen, withdrawal_of("sz-w5", "sz-w4", "440305"))
        .await
        .unwrap();
    apply_as(&shenzhen, withdrawal_of("sz-w4", "sz-0013", "440305"))
        .await
        .expect("the withdrawal named first applies");
    assert_eq!(reason(twice_lost).await, pb::Reason::Unspecified);
    let metrics = common::scrape(&fixture.metrics);
    assert_eq!(
        common::sample(&metrics, "idguard_withdrawals_refused_total"),
        3.0
    );

    // No event is older than the first resident identity cards.
    let mut ancient = report_stolen("sz-0012", "440305", &sz_card);
    ancient.occurred_at = common::at(datetime!(1983-12-31 09:00 +8));
    let refused = apply_as(&shenzhen, ancient).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("occurred_at: "),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_feeds_are_released_at_once_and_capped_per_principal() {
    let fixture = Fixture::start(&[]);
    let auditor = fixture.as_principal("audit-office").await;
    let open = |from_sequence| {
        let auditor = auditor.clone();
        async move {
            RegistryClient::new(auditor)
                .watch_hits(pb::WatchHitsRequest { from_sequence })
                .await
        }
    };
    let mut feeds = Vec::new();
    for _ in 0..idguard::access::MAX_FEEDS_PER_PRINCIPAL {
        feeds.push(open(0).await.expect("within the cap").into_inner());
    }
    let refused = open(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("WatchHits"), "{refused:?}");
    // No hit will come for hours; the streams are dropped and must be released now.
    drop(feeds);
    let started = Instant::now();
    let reopened = loop {
        match open(0).await {
            Ok(feed) => break feed,
            Err(status) if started.elapsed() < Duration::from_secs(5) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("abandoned feeds still held after 5 s: {status:?}"),
        }
    };
    println!(
        "{} abandoned WatchHits streams released in {:?}",
        idguard::access::MAX_FEEDS_PER_PRINCIPAL,
        started.elapsed()
    );
    drop(reopened);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_status_profile_timing_does_not_tell_stolen_from_superseded() {
    let fixture = Fixture::start(&[]);
    let stolen = stolen_number();
    apply_as(
        &fixture.as_principal("sz-police").await,
        report_stolen("p-1", "440305", &stolen),
    )
    .await
    .unwrap();
    let superseded = number("44030519900101001");
    let newer = event(
        "g-1",
        datetime!(2026-03-01 09:00 +8),
        common::issued(card(&superseded, "20200101", "")),
    );
    apply_as(&fixture.as_principal("gd-issuer").await, newer)
        .await
        .unwrap();
    let hotel = VerificationClient::new(fixture.as_principal("hotel-0001").await);
    let timed = |id: String| {
        let mut hotel = hotel.clone();
        async move {
            let started = Instant::now();
            let verdict = hotel
                .check(check_request(&id, b""))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(verdict.status(), pb::CardStatus::Invalid);
            assert_eq!(
                verdict.reason(),
                pb::Reason::Unspecified,
                "the profile shows no reason"
            );
            started.elapsed()
        }
    };
    // Warm up, then interleave, so that the machine's noise falls on both alike.
    timed(stolen.clone()).await;
    timed(superseded.clone()).await;
    const ROUNDS: usize = 200;
    let (mut stolen_times, mut superseded_times) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Each goes first in half the rounds: the second call of a pair finds warmer caches.
        if round % 2 == 0 {
            stolen_times.push(timed(stolen.clone()).await);
            superseded_times.push(timed(superseded.clone()).await);
        } else {
            superseded_times.push(timed(superseded.clone()).await);
            stolen_times.push(timed(stolen.clone()).await);
        }
    }
    let faster = stolen_times
        .iter()
        .zip(&superseded_times)
        .filter(|(stolen, superseded)| superseded < stolen)
        .count();
    stolen_times.sort();
    superseded_times.sort();
    println!(
        "status profile, {ROUNDS} rounds: median stolen {:?}, superseded {:?}; superseded faster \
         in {faster} of {ROUNDS} (chance: about half)",
        stolen_times[ROUNDS / 2],
        superseded_times[ROUNDS / 2]
    );
    assert!(
        faster < ROUNDS * 3 / 4,
        "superseded answered faster than stolen in {faster} of {ROUNDS} rounds"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_history_is_bounded_per_division_and_day_and_read_in_pages() {
    let fixture = Fixture::start(&[]);
    let shenzhen = fixture.as_principal("sz-police").await;
    let guangzhou = fixture.as_principal("gz-police").await;
    let mut records = RegistryClient::new(fixture.as_principal("audit-office").await);
    let id = number("44030519800101006");
    // One division flooding one number gets 32 events a day on it; the rest are refused and
    // change nothing, and no other division's allowance is touched.
    let flood = |division: &str, count: usize| -> Vec<pb::RegistryEvent> {
        (0..count)
            .map(|k| report_stolen(&format!("flood-{division}-{k}"), division, &id))
            .collect()
    };
    let mut acks = RegistryClient::new(shenzhen.clone())
        .submit(tokio_stream::iter(flood("440305", 40)))
        .await
        .unwrap()
        .into_inner();
    let mut refusals = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        refusals.extend(ack.error);
    }
    assert_eq!(refusals.len(), 8, "{refusals:?}");
    let refusal = &refusals[0];
    assert_eq!(refusal.code, Code::ResourceExhausted as i32, "{refusal:?}");
    assert!(
        refusal
            .message
            .contains("authority: division 440305 has recorded 32 events"),
        "{refusal:?}"
    );
    let whole_record = pb::GetRecordRequest {
        id_number: id.clone(),
        ..Default::default()
    };
    let recorded = records
        .get_record(whole_record.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.events.len(), 32);
    let refused = apply_as(&shenzhen, report_stolen("flood-late", "440305-unit9", &id))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "a unit suffix is the same division"
    );
    let after = records.get_record(whole_record).await.unwrap().into_inner();
    assert_eq!(after.sequence, recorded.sequence, "nothing was written");
    let mut acks = RegistryClient::new(shenzhen.clone())
        .submit(tokio_stream::iter(flood("440306", 28)))
        .await
        .unwrap()
        .into_inner();
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(
            ack.error.is_none(),
            "another division has its own allowance: {ack:?}"
        );
    }
    apply_as(&guangzhou, report_stolen("gz-flood", "440103", &id))
        .await
        .unwrap();
    // Withdrawals waiting for one report id are bounded.
    for k in 0..16 {
        apply_as(
            &shenzhen,
            withdrawal_of(&format!("wait-{k}"), "not-yet", "440305"),
        )
        .await
        .unwrap();
    }
    let waiting = apply_as(&shenzhen, withdrawal_of("wait-16", "not-yet", "440305"))
        .await
        .unwrap_err();
    assert_eq!(waiting.code(), Code::ResourceExhausted, "{waiting:?}");
    assert!(waiting.message().contains("not-yet"), "{waiting:?}");

    // The history is read in pages, the cards on the first only.
    let page = |after_sequence, limit| pb::GetRecordRequest {
        id_number: id.clone(),
        after_sequence,
        limit,
    };
    let too_many = records.get_record(page(0, 1001)).await.unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let record = records
            .get_record(page(after, 20))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            record.cards.is_empty(),
            pages > 0,
            "cards on the first page only"
        );
        assert!(record.events.len() <= 20);
        seen.extend(record.events.iter().map(|e| e.sequence));
        pages += 1;
        if record.next_after_sequence == 0 {
            break;
        }
        after = record.next_after_sequence;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 61);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    let whole = records.get_record(page(0, 0)).await.unwrap().into_inner();
    assert_eq!(whole.events.len(), 61);
    assert_eq!(whole.next_after_sequence, 0);
}
