//! The `idguard` binary as a shell user runs it: `serve` as a child process on port 0, and the
//! client commands with their output and exit codes.

use crate::common;

use std::process::{Command, Output};

use common::{BIN, ChildServer as Served, number};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

#[test]
fn a_shell_user_reports_checks_and_reads_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let id = number("44030519800101123");

    let valid = served.run(&["check", &id, "--issued", "20150101"]);
    assert_eq!(code(&valid), 0, "{valid:?}");
    assert!(stdout(&valid).starts_with("VALID"), "{valid:?}");

    let stolen = [
        "report",
        "stolen",
        &id,
        "--issued",
        "20150101",
        "--expires",
        "20350101",
        "--report-id",
        "cli-1",
        "--authority",
        "440305",
        "--occurred-at",
        "2025-06-01T10:00:00+08:00",
    ];
    let report = served.run(&stolen);
    assert_eq!(code(&report), 0, "{report:?}");
    assert!(
        stdout(&report).contains("accepted as sequence 1"),
        "{report:?}"
    );

    let invalid = served.run(&["check", &id, "--issued", "20150101"]);
    assert_eq!(code(&invalid), 1, "{invalid:?}");
    assert!(
        stdout(&invalid).starts_with("INVALID  stolen since 2025-06-01T10:00:00+08:00"),
        "{invalid:?}"
    );

    let retry = served.run(&stolen);
    assert_eq!(code(&retry), 0, "{retry:?}");
    assert!(
        stdout(&retry).contains("already accepted as sequence 1"),
        "{retry:?}"
    );

    let conflict = served.run(&[
        "report",
        "lost",
        &id,
        "--issued",
        "20150101",
        "--report-id",
        "cli-1",
        "--authority",
        "440305",
    ]);
    assert_eq!(code(&conflict), 5, "{conflict:?}");

    let withdraw = served.run(&[
        "report",
        "withdrawn",
        "cli-1",
        "--note",
        "found at home",
        "--report-id",
        "cli-2",
        "--authority",
        "440305",
    ]);
    assert_eq!(code(&withdraw), 0, "{withdraw:?}");
    assert_eq!(
        code(&served.run(&["check", &id, "--issued", "20150101"])),
        0
    );

    let record = served.run(&["record", &id]);
    assert_eq!(code(&record), 0, "{record:?}");
    let text = stdout(&record);
    assert!(
        text.contains("issued 20150101  expires ?         VALID"),
        "{text}"
    );
    assert!(text.contains("report cli-1 by 440305"), "{text}");
    assert!(text.contains("withdrew report cli-1"), "{text}");

    let malformed = served.run(&["check", "12345", "--issued", "20150101"]);
    assert_eq!(code(&malformed), 2, "{malformed:?}");
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("card.id_number"),
        "{malformed:?}"
    );

    let unknown = served.run(&["record", &number("44030519800101124")]);
    assert_eq!(code(&unknown), 4, "{unknown:?}");
}

#[test]
fn an_unreachable_server_is_exit_code_3() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let output = Command::new(BIN)
        .args([
            "check",
            &number("44030519800101123"),
            "--issued",
            "20150101",
            "--server",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&output), 3, "{output:?}");
}

#[test]
fn serve_stops_cleanly_on_sigterm_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let id = number("44030519800101123");
    let mut served = Served::start(dir.path());
    let report = served.run(&[
        "report",
        "lost",
        &id,
        "--issued",
        "20150101",
        "--report-id",
        "t-1",
        "--authority",
        "440305",
    ]);
    assert_eq!(code(&report), 0, "{report:?}");
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = served.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");

    // Restarted with a small block cache: the same answer.
    let served = Served::start_with(dir.path(), &["--block-cache-mb", "8"]);
    assert_eq!(
        code(&served.run(&["check", &id, "--issued", "20150101"])),
        1
    );
}

/// `idguard gen` writes an export every event of which the server accepts, and a workload whose
/// `has_record` flags agree with the loaded registry.
#[test]
fn a_generated_export_loads_and_its_workload_agrees() {
    let out = tempfile::tempdir().unwrap();
    let generated = std::process::Command::new(BIN)
        .args([
            "gen",
            "--count",
            "3000",
            "--queries",
            "300",
            "--hit-fraction",
            "0.3",
        ])
        .args(["--format", "ndjson", "--format", "csv", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(code(&generated), 0, "{generated:?}");
    let events = |name: &str| -> Vec<idguard::proto::v1::RegistryEvent> {
        idguard::event_file::read_events(&out.path().join(name))
            .unwrap()
            .map(|(_, event)| event.unwrap())
            .collect()
    };
    let from_ndjson = events("events.ndjson");
    assert_eq!(from_ndjson.len(), 3000);
    assert_eq!(events("events.csv"), from_ndjson);

    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let ndjson_path = out.path().join("events.ndjson");
    let submitted = served.run(&["submit", ndjson_path.to_str().unwrap()]);
    assert_eq!(code(&submitted), 0, "{submitted:?}");
    assert!(
        stdout(&submitted).starts_with("3000 accepted, 0 duplicates, 0 refused"),
        "{submitted:?}"
    );

    // The CSV carries the same events: all duplicates now. A damaged copy names its bad lines.
    let csv_path = out.path().join("events.csv");
    let again = served.run(&["submit", csv_path.to_str().unwrap()]);
    assert!(
        stdout(&again).starts_with("0 accepted, 3000 duplicates"),
        "{again:?}"
    );
    let damaged = out.path().join("damaged.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&csv_path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines[5] = lines[5].replacen("-PSB", "-P S B", 1);
    lines[9] = lines[9]
        .replacen(",lost,", ",misplaced,", 1)
        .replacen(",issued,", ",misplaced,", 1);
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let refused = served.run(&["submit", damaged.to_str().unwrap()]);
    assert_eq!(code(&refused), 2, "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("damaged.csv:6: ") && stderr.contains("authority"),
        "{stderr}"
    );
    assert!(stderr.contains("damaged.csv:10: kind"), "{stderr}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = served.channel().await;
        let mut registry = idguard::proto::v1::registry_client::RegistryClient::new(channel);
        let queries: Vec<idguard::event_file::QueryRecord> =
            csv::Reader::from_path(out.path().join("queries.csv"))
                .unwrap()
                .deserialize()
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(queries.len(), 300);
        assert!(queries.iter().filter(|q| q.has_record).count() > 50);
        for query in queries {
            let record = registry
                .get_record(idguard::proto::v1::GetRecordRequest {
                    id_number: query.id_number.clone(),
                    ..Default::default()
                })
                .await;
            assert_eq!(record.is_ok(), query.has_record, "{query:?}: {record:?}");
        }
    });
}

/// `idguard bench` drives a real server in every mode, and writes JSON and an SVG sweep.
#[test]
fn the_load_harness_measures_every_mode() {
    let out = tempfile::tempdir().unwrap();
    let generated = std::process::Command::new(BIN)
        .args(["gen", "--count", "500", "--queries", "200", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(code(&generated), 0, "{generated:?}");
    let queries = out.path().join("queries.csv");
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    for mode in ["unary", "batch", "stream"] {
        let json = out.path().join(format!("{mode}.json"));
        let mut args = vec![
            "bench",
            "--mode",
            mode,
            "--seconds",
            "0.3",
            "--workers",
            "4",
        ];
        args.extend(["--batch-size", "50", "--queries"]);
        let mut command = std::process::Command::new(BIN);
        command.args(&args).arg(&queries).arg("--json").arg(&json);
        if mode == "unary" {
            command
                .args(["--sweep", "--plot"])
                .arg(out.path().join("sweep.svg"));
        }
        let output = command.args(["--server", &served.url]).output().unwrap();
        assert_eq!(code(&output), 0, "{output:?}");
        let reports: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(
            reports.len(),
            if mode == "unary" { 6 } else { 1 },
            "{reports:?}"
        );
        for report in &reports {
            assert_eq!(report["errors"], 0, "{report}");
            assert!(report["checks"].as_u64().unwrap() > 0, "{report}");
            assert!(report["p99_us"].as_f64().unwrap() >= report["p50_us"].as_f64().unwrap());
        }
    }
    let svg = std::fs::read_to_string(out.path().join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    let points = svg
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    // The five fixed-rate runs of the sweep; the closed-loop one is not drawn.
    assert_eq!(points.split(' ').count(), 5, "{svg}");
}
