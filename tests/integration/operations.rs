//! The standard gRPC surfaces operators' tools rely on, against the real binary: health checking
//! (`grpc.health.v1.Health`) through start, serving and draining, and server reflection (v1 and
//! v1alpha) describing every service without the `.proto` files.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ChildServer, sample, scrape};
use idguard::proto::v1 as pb;
use pb::registry_client::RegistryClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

const SERVICES: [&str; 3] = [
    "idguard.v1.Verification",
    "idguard.v1.Registry",
    "idguard.v1.Admin",
];

async fn health(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(response.status())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_once_ready_and_not_serving_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(&dir.path().join("data"));
    let mut client = HealthClient::new(server.channel().await);
    for service in [""].into_iter().chain(SERVICES) {
        assert_eq!(
            health(&mut client, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health(&mut client, "idguard.v1.Nothing").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = client
        .watch(HealthCheckRequest {
            service: "idguard.v1.Verification".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let terminated = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a health change within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    drop(client);
    let exit = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_and_describes_every_service_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let channel = server.channel().await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = [
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "idguard.v1.Verification.Check".into(),
                ),
            ),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = listed
    else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }
    let described = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        described
    else {
        panic!("not a file descriptor: {described:?}");
    };
    let file: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.package(), "idguard.v1");
    let verification = file
        .service
        .iter()
        .find(|service| service.name() == "Verification")
        .unwrap();
    let methods: Vec<&str> = verification
        .method
        .iter()
        .map(|method| method.name())
        .collect();
    assert_eq!(
        methods,
        ["Check", "CheckBatch", "CheckStream", "GetSigningKeys"]
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed
    else {
        panic!("not a service list: {listed:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "idguard.v1.Registry")
    );
}

/// Every change of `Watch` from the start through `through`.
async fn changes_through(
    server: &ChildServer,
    through: u64,
) -> Vec<idguard::proto::v1::RegistryChange> {
    let mut client = RegistryClient::new(server.channel().await);
    let mut feed = client
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut changes = Vec::new();
    while changes.len() < through as usize {
        changes.push(feed.message().await.unwrap().unwrap());
    }
    changes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_write_load_restores_the_registry_event_by_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for writer in 0..2u64 {
        let channel = server.channel().await;
        let writing = Arc::clone(&writing);
        writers.push(tokio::spawn(async move {
            let mut client = RegistryClient::new(channel);
            let mut k = writer * 1_000_000;
            while writing.load(Ordering::Relaxed) {
                let events: Vec<_> = (k..k + 50).map(|k| common::loss("w", k)).collect();
                k += 50;
                let mut acks = client
                    .submit(tokio_stream::iter(events))
                    .await
                    .unwrap()
                    .into_inner();
                while let Some(ack) = acks.message().await.unwrap() {
                    assert!(ack.error.is_none(), "{ack:?}");
                }
            }
        }));
    }
    let mut client = RegistryClient::new(server.channel().await);
    while check_sequence(&mut client).await < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup = dir.path().join("backup");
    let output = server.run(&["backup", "--to", backup.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let backed_up: u64 = stdout
        .split_whitespace()
        .nth(6)
        .and_then(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {stdout:?}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let last = check_sequence(&mut client).await;
    assert!(
        last > backed_up,
        "writes went on after the backup ({backed_up} then {last})"
    );
    let again = server.run(&["backup", "--to", backup.to_str().unwrap()]);
    assert_ne!(
        again.status.code(),
        Some(0),
        "a backup over an existing one was allowed"
    );

    let restored_dir = dir.path().join("restored");
    let restore = || {
        Command::new(common::BIN)
            .args(["restore", "--from", backup.to_str().unwrap()])
            .args(["--data-dir", restored_dir.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = restore();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let refused = restore();
    assert_ne!(
        refused.status.code(),
        Some(0),
        "a restore over a registry was allowed"
    );

    let restored = ChildServer::start(&restored_dir);
    let mut restored_client = RegistryClient::new(restored.channel().await);
    assert_eq!(check_sequence(&mut restored_client).await, backed_up);
    let original = changes_through(&server, backed_up).await;
    let copy = changes_through(&restored, backed_up).await;
    assert_eq!(copy.len(), original.len());
    for (copy, original) in copy.iter().zip(&original) {
        assert_eq!(copy, original, "event {} differs", original.sequence);
    }
    // And the restored node takes new events after the backup's sequence.
    let applied = restored_client
        .apply(common::loss("after", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.sequence, backed_up + 1);
}

/// The registry's sequence as a check reports it.
async fn check_sequence(client: &mut RegistryClient<tonic::transport::Channel>) -> u64 {
    let record = client
        .get_record(pb::GetRecordRequest {
            id_number: common::nth_number(0),
            ..Default::default()
        })
        .await;
    match record {
        Ok(record) => record.into_inner().sequence,
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_not_serving_while_the_registry_opens() {
    // A registry whose index must be rebuilt at start-up: opening takes a moment.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let generated = dir.path().join("gen");
    let run = |args: &[&str]| {
        let output = Command::new(common::BIN).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
    };
    run(&[
        "gen",
        "--count",
        "1000000",
        "--queries",
        "10",
        "--out",
        generated.to_str().unwrap(),
    ]);
    let events = generated.join("events.ndjson");
    run(&[
        "import",
        events.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    std::fs::remove_file(data.join("idguard-index.snapshot")).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-metrics",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        let status = health(&mut HealthClient::new(channel), "idguard.v1.Verification").await;
        // A connection made just as the start-up server hands over may be cut: clients retry.
        let Ok(status) = status.map(|status| status as i32) else {
            continue;
        };
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == ServingStatus::Serving as i32 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        [
            ServingStatus::NotServing as i32,
            ServingStatus::Serving as i32
        ],
        "health while opening, then once open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_each_call_with_its_principal_and_never_a_whole_number() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut command = Command::new(common::BIN);
    command
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(&log).unwrap());
    let (mut server, _) = ChildServer::spawn(command, 1);
    let channel = server.channel().await;
    let (stolen, report) = stolen_report();
    RegistryClient::new(channel.clone())
        .apply(report)
        .await
        .unwrap();
    let mut checks = pb::verification_client::VerificationClient::new(channel);
    let hit = checks
        .check(pb::CheckRequest {
            card: Some(common::card(&stolen, "20150101", "")),
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.reason(), pb::Reason::Stolen);
    common::check_without_card_is_refused(&mut checks).await;
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    server.child.wait().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let refusal = lines
        .iter()
        .find(|line| line["fields"]["status"] == "InvalidArgument")
        .unwrap_or_else(|| panic!("no refused call logged in {text}"));
    assert_eq!(refusal["span"]["method"], "/idguard.v1.Verification/Check");
    assert_eq!(refusal["span"]["principal"], "local");
    assert!(refusal["span"]["latency_us"].is_u64(), "{refusal}");
    let hit_line = lines
        .iter()
        .find(|line| line["fields"]["message"] == "hit: an invalidated card was presented")
        .unwrap_or_else(|| panic!("no hit logged in {text}"));
    assert_eq!(
        hit_line["fields"]["card"],
        format!("{}********{}", &stolen[..6], &stolen[14..])
    );
    assert!(!text.contains(&stolen), "a whole citizen number was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_move_with_calls_checks_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let (server, lines) = ChildServer::start_reading(&dir.path().join("data"), &[], 2);
    let metrics = lines[1]
        .strip_prefix("idguard metrics on ")
        .unwrap()
        .to_owned();
    let before = scrape(&metrics);

    let channel = server.channel().await;
    let (stolen, report) = stolen_report();
    RegistryClient::new(channel.clone())
        .apply(report.clone())
        .await
        .unwrap();
    RegistryClient::new(channel.clone())
        .apply(report)
        .await
        .unwrap();
    let mut checks = pb::verification_client::VerificationClient::new(channel);
    let batch = checks
        .check_batch(pb::CheckBatchRequest {
            cards: vec![
                common::card(&stolen, "20150101", ""),
                common::card(&common::number("11010519491231002"), "20150101", ""),
                common::card("bad", "", ""),
            ],
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    common::check_without_card_is_refused(&mut checks).await;
    // The gauges are sampled every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = scrape(&metrics);
    drop(server);

    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved(r#"idguard_rpc_requests_total{method="/idguard.v1.Registry/Apply",code="Ok"}"#),
        2.0,
        "{after}"
    );
    assert_eq!(
        moved(
            r#"idguard_rpc_requests_total{method="/idguard.v1.Verification/Check",code="InvalidArgument"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"idguard_rpc_latency_seconds_count{method="/idguard.v1.Verification/CheckBatch"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"idguard_checks_total{verdict="invalid",reason="REASON_STOLEN"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"idguard_checks_total{verdict="valid",reason=""}"#),
        1.0
    );
    assert_eq!(
        moved(r#"idguard_checks_total{verdict="malformed",reason=""}"#),
        1.0
    );
    assert_eq!(moved("idguard_hits_total"), 1.0);
    assert_eq!(
        moved(r#"idguard_events_total{kind="stolen",outcome="accepted"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"idguard_events_total{kind="stolen",outcome="duplicate"}"#),
        1.0
    );
    assert_eq!(sample(&after, "idguard_registry_sequence"), 1.0);
    assert_eq!(sample(&after, "idguard_hit_sequence"), 1.0);
    assert_eq!(sample(&after, "idguard_index_numbers"), 1.0);
    assert!(sample(&after, "idguard_index_bytes") > 0.0);
    assert!(
        sample(&after, "idguard_rocksdb_wal_syncs_total") >= 2.0,
        "{after}"
    );
    assert!(sample(&after, "idguard_group_commit_events_count") >= 2.0);
    for gauge in [
        "idguard_watch_subscribers",
        "idguard_rocksdb_block_cache_hit_ratio",
        "idguard_rocksdb_pending_compaction_bytes",
    ] {
        assert!(after.contains(gauge), "{gauge} missing");
    }
}

#[test]
fn a_config_file_is_overridden_by_the_environment_then_by_flags_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idguard.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nblock_cache_mb = 64\nno_metrics = true\n\n[limits]\nmax_in_flight = 10\n",
            data.display()
        ),
    )
    .unwrap();
    // `idguard config check PATH`, with `environment` set.
    let config_check = |path: &Path, environment: &[(&str, &str)]| {
        Command::new(common::BIN)
            .args(["config", "check"])
            .arg(path)
            .envs(environment.iter().copied())
            .output()
            .unwrap()
    };
    let check = config_check(&file, &[("IDGUARD_BLOCK_CACHE_MB", "128")]);
    let effective = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert!(
        effective.contains("block_cache_mb = 128  # environment"),
        "{effective}"
    );
    // Each setting is shown where the file puts it.
    let limits = effective.split_once("[limits]\n").map(|(_, rest)| rest);
    assert!(
        limits.is_some_and(|limits| limits.contains("max_in_flight = 10  # file")),
        "{effective}"
    );
    assert!(
        effective.contains("streams_per_connection = 128  # default"),
        "{effective}"
    );

    // `serve --config`: the file's data dir is used, a flag beats the file's max_in_flight.
    let mut server = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--max-in-flight", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with("idguard listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(
        data.join("CURRENT").exists(),
        "the file's data_dir was not used"
    );
    let _ = server.kill();
    let _ = server.wait();

    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n").unwrap();
    let refused = config_check(&file, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("listen_port: unknown key"),
        "{refused:?}"
    );
    // A grouped setting at the top level is refused with where it belongs.
    std::fs::write(&file, "tls_cert = \"/etc/idguard/tls/server.pem\"\n").unwrap();
    let misplaced = config_check(&file, &[]);
    assert_eq!(misplaced.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&misplaced.stderr)
            .contains("tls_cert: belongs in the [tls] section, as `cert`"),
        "{misplaced:?}"
    );
    // A value in a section is checked as its flag's would be.
    std::fs::write(&file, "[cluster]\nreplicas = 7\n").unwrap();
    let out_of_range = config_check(&file, &[]);
    assert_eq!(out_of_range.status.code(), Some(2), "{out_of_range:?}");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n").unwrap();
    let serve_refused = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(serve_refused.status.code(), Some(2), "{serve_refused:?}");

    // The annotated example in the repository is a valid configuration.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/idguard.toml");
    let checked = config_check(Path::new(example), &[]);
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
    assert!(
        String::from_utf8_lossy(&checked.stdout)
            .contains("data_dir = \"/var/lib/idguard\"  # file")
    );

    // The files a configuration names are checked too.
    std::fs::write(&file, "access = \"/nonexistent/access.toml\"\n").unwrap();
    let missing = config_check(&file, &[]);
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/access.toml"),
        "{missing:?}"
    );
}

/// A stolen card's number, and the report that says so.
fn stolen_report() -> (String, pb::RegistryEvent) {
    let stolen = common::number("44030519800101001");
    let mut report = common::event(
        "r-1",
        time::macros::datetime!(2026-03-01 09:00 +8),
        common::reported(common::card(&stolen, "20150101", ""), pb::LossKind::Stolen),
    );
    report.authority = "440305".into();
    (stolen, report)
}

/// A small file system of its own for a data dir, mounted by the test and unmounted (with its
/// contents gone) when dropped: a disk that can be filled up in a test.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let mount = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(mount.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI and the quick start run as root)"
        );
        Self { mount }
    }

    /// Fills what is left of the disk; the filler is removed to free it again.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.mount.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&[0u8; 4096]);
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_cannot_write_fails_closed_and_says_so_in_its_health() {
    let disk = SmallDisk::mount(96);
    let data = disk.mount.path().join("data");
    let server = ChildServer::start(&data);
    let channel = server.channel().await;
    let health_client = HealthClient::new(channel.clone());
    let mut registry = RegistryClient::new(channel.clone());
    let mut verification = pb::verification_client::VerificationClient::new(channel.clone());
    let stolen = common::number("44030519800101001");
    let mut report = common::event(
        "d-1",
        time::macros::datetime!(2026-03-01 09:00 +8),
        common::reported(common::card(&stolen, "20150101", ""), pb::LossKind::Stolen),
    );
    registry.apply(report.clone()).await.expect("written");
    let check = |id: &str| pb::CheckRequest {
        card: Some(common::card(id, "20150101", "")),
        ..Default::default()
    };
    let wait_for = |wanted: ServingStatus| {
        let mut client = health_client.clone();
        async move {
            for _ in 0..100 {
                if health(&mut client, "idguard.v1.Verification").await.ok() == Some(wanted) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(wait_for(ServingStatus::Serving).await);

    let filler = disk.fill();
    // Hits go on being recorded in the space RocksDB had already allocated, until they need more:
    // then a hit cannot be recorded, and the checker gets an error, never VALID, and no path or
    // RocksDB text; a card with no record is still answered.
    let batch = pb::CheckBatchRequest {
        cards: vec![common::card(&stolen, "20150101", ""); 1000],
        ..Default::default()
    };
    let mut answered = 0;
    while verification.check_batch(batch.clone()).await.is_ok() {
        answered += 1;
        assert!(
            answered < 1000,
            "a million hits were recorded on a full disk"
        );
    }
    println!("{answered} batches of 1,000 hits were recorded after the disk was full");
    let refused = verification.check(check(&stolen)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Internal, "{refused:?}");
    assert!(refused.message().contains("incident"), "{refused:?}");
    assert!(
        !refused.message().contains(&*data.to_string_lossy()),
        "{refused:?}"
    );
    assert!(!refused.message().contains("IO error"), "{refused:?}");
    report.report_id = "d-2".into();
    assert!(
        registry.apply(report.clone()).await.is_err(),
        "a write was acknowledged on a full disk"
    );
    assert!(
        wait_for(ServingStatus::NotServing).await,
        "health stayed SERVING while the store could not write"
    );
    let valid = verification
        .check(check(&common::number("11010519491231002")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.status(), pb::CardStatus::Valid);

    // Space again: health recovers once a probe write succeeds (RocksDB resumes by itself), or at
    // the latest after a restart; nothing acknowledged was lost.
    std::fs::remove_file(filler).unwrap();
    let recovered = wait_for(ServingStatus::Serving).await;
    println!("health SERVING again without a restart once space was freed: {recovered}");
    drop(server);
    let server = ChildServer::start(&data);
    let mut verification = pb::verification_client::VerificationClient::new(server.channel().await);
    let after = verification
        .check(check(&stolen))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.status(), pb::CardStatus::Invalid);
}
