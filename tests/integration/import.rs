//! `idguard import` against the online path: the same export files bulk-loaded into one data dir
//! and sent over `Submit` to a server on another must give the same registry (every number's cards
//! and verdicts, every number's events) and refuse the same records, both into an empty registry
//! and into one that already holds events.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, ChildServer};
use idguard::event_file::ExportRecord;
use idguard::proto::v1 as pb;
use idguard::store::{IndexOrigin, Store};
use idguard::tools::synthetic::{Format, Generator, write_export};
use pb::registry_client::RegistryClient;

const AS_OF: time::Date = time::macros::date!(2026 - 11 - 01);

fn write_csv(path: &Path, generator: &Generator, count: u64) {
    let file = std::fs::File::create(path).unwrap();
    write_export(generator, count, Format::Csv, file).unwrap();
}

fn write_ndjson(path: &Path, records: &[ExportRecord]) {
    let mut file = std::fs::File::create(path).unwrap();
    for record in records {
        serde_json::to_writer(&mut file, record).unwrap();
        file.write_all(b"\n").unwrap();
    }
}

fn import(data_dir: &Path, files: &[&Path], rejects: &Path) -> Output {
    Command::new(BIN)
        .arg("import")
        .args(files)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--rejects")
        .arg(rejects)
        .output()
        .unwrap()
}

fn submit(server: &ChildServer, files: &[&Path]) -> Output {
    let mut args = vec!["submit".to_owned()];
    args.extend(files.iter().map(|path| path.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.run(&args)
}

/// The `FILE:LINE` of each refused record in `idguard submit`'s stderr or a reject file.
fn refused_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            Some(format!("{}:{}", parts.next()?, parts.next()?))
        })
        .collect()
}

/// Every number named in the files, as the online path would have recorded it.
fn numbers_in(files: &[&Path]) -> BTreeSet<String> {
    use pb::registry_event::Kind;
    let mut numbers = BTreeSet::new();
    for file in files {
        for (_, event) in idguard::event_file::read_events(file).unwrap() {
            let number = match event.ok().and_then(|event| event.kind) {
                Some(Kind::Reported(pb::CardReported { card, .. }))
                | Some(Kind::Issued(pb::CardIssued { card }))
                | Some(Kind::Revoked(pb::CardRevoked { card, .. })) => card.map(|c| c.id_number),
                Some(Kind::Cancelled(cancelled)) => Some(cancelled.id_number),
                _ => None,
            };
            numbers.extend(number.map(|number| number.to_uppercase()));
        }
    }
    numbers
}

/// What a registry says about a number: its cards with their verdicts, and the `report_id`s of
/// the events that touched it (sequences may differ between the two paths).
async fn view(
    client: &mut RegistryClient<tonic::transport::Channel>,
    number: &str,
) -> Option<(Vec<pb::CardRecord>, BTreeSet<String>)> {
    let record = client
        .get_record(pb::GetRecordRequest {
            id_number: number.to_owned(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let events = record
        .events
        .into_iter()
        .map(|change| change.event.expect("event").report_id)
        .collect();
    Some((record.cards, events))
}

/// What a registry says about each of `numbers`, through `GetRecord` (see [`view`]).
async fn registry_view(
    server: &ChildServer,
    numbers: &[String],
) -> Vec<Option<(Vec<pb::CardRecord>, BTreeSet<String>)>> {
    let mut client = RegistryClient::new(server.channel().await);
    let mut views = Vec::with_capacity(numbers.len());
    for number in numbers {
        views.push(view(&mut client, number).await);
    }
    views
}

async fn assert_same_registry(imported: &ChildServer, submitted: &ChildServer, numbers: &[String]) {
    let left = registry_view(imported, numbers).await;
    let right = registry_view(submitted, numbers).await;
    for ((number, left), right) in numbers.iter().zip(&left).zip(&right) {
        assert_eq!(left, right, "the registries differ on {number}");
    }
    let with_record = left.iter().filter(|view| view.is_some()).count();
    assert!(with_record > numbers.len() / 2, "too few records compared");
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Hand-made records around the generated ones: each line is a case the bulk path handles apart
/// from the plain stream of card events.
fn awkward_records(generated: &Generator) -> Vec<ExportRecord> {
    let first = generated.record(0);
    let second = generated.record(1);
    let fresh = common::number("11010519700101007");
    let lost = |report_id: &str| ExportRecord {
        report_id: report_id.into(),
        authority: "110105".into(),
        occurred_at: "2025-03-01T08:00:00+08:00".into(),
        kind: "lost".into(),
        id_number: fresh.clone(),
        issue_date: "20150101".into(),
        ..ExportRecord::default()
    };
    let withdrawal = |report_id: &str, target: &str| ExportRecord {
        report_id: report_id.into(),
        authority: "110105".into(),
        occurred_at: "2025-03-02T08:00:00+08:00".into(),
        kind: "withdrawn".into(),
        withdrawn_report_id: target.into(),
        ..ExportRecord::default()
    };
    vec![
        // A withdrawal that arrives before the report it withdraws.
        withdrawal("x-w1", "x-late"),
        lost("x-late"),
        // A withdrawal of a withdrawal: refused.
        withdrawal("x-w2", "x-w1"),
        // Breaks a card rule (check character).
        ExportRecord {
            id_number: format!(
                "{}{}",
                &fresh[..17],
                if fresh.ends_with('0') { '1' } else { '0' }
            ),
            ..lost("x-bad")
        },
        // The same event again: a duplicate, not a refusal.
        first.clone(),
        // The same report_id with other content: refused.
        ExportRecord {
            issue_date: "20200101".into(),
            kind: "stolen".into(),
            withdrawn_report_id: String::new(),
            id_number: fresh.clone(),
            ..second
        },
        // A withdrawal of the refused one: its target never entered, so it waits, as does one
        // whose target never comes.
        withdrawal("x-w4", "x-w2"),
        withdrawal("x-w5", "x-never"),
        // A withdrawal of a generated report, and a cancellation.
        withdrawal("x-w3", &first.report_id),
        ExportRecord {
            kind: "cancelled".into(),
            issue_date: String::new(),
            ..lost("x-cancel")
        },
    ]
}

#[test]
fn an_import_equals_the_same_files_submitted_online() {
    let dir = tempfile::tempdir().unwrap();
    let generator = Generator::new(7, AS_OF);
    let generated = dir.path().join("generated.csv");
    write_csv(&generated, &generator, 3000);
    let awkward = dir.path().join("awkward.ndjson");
    write_ndjson(&awkward, &awkward_records(&generator));
    let files = [generated.as_path(), awkward.as_path()];

    let imported_dir = dir.path().join("imported");
    let rejects = dir.path().join("rejects.txt");
    let output = import(&imported_dir, &files, &rejects);
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert_eq!(output.status.code(), Some(2), "rejects exit 2: {output:?}");
    assert!(
        stdout(&output).contains("1 duplicates, 3 rejected"),
        "{output:?} {rejected}"
    );

    let store = Store::open(&imported_dir).unwrap();
    assert_eq!(store.citizens().index_origin(), &IndexOrigin::Loaded);
    let last = store.log().sequence();
    drop(store);
    // 3000 generated, 6 hand-made accepted (x-w1, x-late, x-w4, x-w5, x-w3, x-cancel).
    assert_eq!(last, 3006);

    let submitted = ChildServer::start(&dir.path().join("submitted"));
    let online = submit(&submitted, &files);
    let online_refused = refused_lines(&String::from_utf8_lossy(&online.stderr));
    assert_eq!(refused_lines(&rejected), online_refused, "{rejected}");
    assert!(rejected.contains("awkward.ndjson:4: "), "{rejected}");

    let imported = ChildServer::start(&imported_dir);
    let numbers: Vec<String> = numbers_in(&files).into_iter().collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        assert_same_registry(&imported, &submitted, &numbers).await;
        assert_eq!(
            watched(&imported, last).await,
            watched(&submitted, last).await,
            "the logs hold different events"
        );
    });
}

/// The `report_id`s of the log's events up to `last`, checking that the log has no gap.
async fn watched(server: &ChildServer, last: u64) -> BTreeSet<String> {
    let mut changes = RegistryClient::new(server.channel().await)
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut report_ids = BTreeSet::new();
    for sequence in 1..=last {
        let change = changes.message().await.unwrap().expect("a change");
        assert_eq!(change.sequence, sequence, "a gap in the log");
        report_ids.insert(change.event.expect("event").report_id);
    }
    report_ids
}

#[test]
fn an_import_into_a_registry_with_events_merges_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let generator = Generator::new(11, AS_OF);
    // Two overlapping halves: records 2900..3000 are in both.
    let records: Vec<ExportRecord> = (0..6000).map(|i| generator.record(i)).collect();
    let (first_half, second_half): (PathBuf, PathBuf) = (
        dir.path().join("first.ndjson"),
        dir.path().join("second.ndjson"),
    );
    // Withdrawals that cross the two imports: one waits in the first for a report that comes in
    // the second; one in the second withdraws a withdrawal stored by the first (refused).
    let late = ExportRecord {
        report_id: "y-late".into(),
        authority: "110105".into(),
        occurred_at: "2025-03-01T08:00:00+08:00".into(),
        kind: "stolen".into(),
        id_number: common::number("11010519700101007"),
        issue_date: "20150101".into(),
        ..ExportRecord::default()
    };
    let withdrawal = |report_id: &str, target: &str| ExportRecord {
        report_id: report_id.into(),
        kind: "withdrawn".into(),
        id_number: String::new(),
        issue_date: String::new(),
        withdrawn_report_id: target.into(),
        ..late.clone()
    };
    let mut first_records = records[..3000].to_vec();
    first_records.push(withdrawal("y-w1", "y-late"));
    let mut second_records = records[2900..].to_vec();
    second_records.extend([late.clone(), withdrawal("y-w2", "y-w1")]);
    write_ndjson(&first_half, &first_records);
    write_ndjson(&second_half, &second_records);
    let all_records: Vec<ExportRecord> = first_records
        .iter()
        .chain(&second_records[100..])
        .cloned()
        .collect();
    let all = dir.path().join("all.ndjson");
    write_ndjson(&all, &all_records);

    let imported_dir = dir.path().join("imported");
    let rejects = dir.path().join("rejects.txt");
    let first = import(&imported_dir, &[&first_half], &rejects);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let second = import(&imported_dir, &[&second_half], &rejects);
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    assert!(
        stdout(&second).contains("3001 events accepted, 100 duplicates, 1 rejected"),
        "{second:?}"
    );
    let rejected = std::fs::read_to_string(&rejects).unwrap();
    assert!(rejected.contains("second.ndjson:3102: "), "{rejected}");

    let submitted = ChildServer::start(&dir.path().join("submitted"));
    let online = submit(&submitted, &[&all]);
    assert_eq!(online.status.code(), Some(2), "{online:?}");
    let imported = ChildServer::start(&imported_dir);
    let numbers: Vec<String> = numbers_in(&[&all]).into_iter().collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(assert_same_registry(&imported, &submitted, &numbers));
}

#[test]
fn an_import_is_refused_while_a_server_holds_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let _serving = ChildServer::start(&data_dir);
    let export = dir.path().join("e.csv");
    write_csv(&export, &Generator::new(1, AS_OF), 10);
    let output = import(&data_dir, &[&export], &dir.path().join("r"));
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is another idguard using it?"),
        "{output:?}"
    );
}

#[test]
fn an_import_killed_while_ingesting_is_completed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.csv");
    let generator = Generator::new(5, AS_OF);
    write_csv(&export, &generator, 100_000);
    let clean = dir.path().join("clean");
    let rejects = dir.path().join("rejects");
    assert_eq!(import(&clean, &[&export], &rejects).status.code(), Some(0));
    let numbers: Vec<String> = numbers_in(&[&export]).into_iter().step_by(7).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let expected = {
        let server = ChildServer::start(&clean);
        runtime.block_on(registry_view(&server, &numbers))
    };

    // Killed at moments spread over the ingestion step, which starts by creating the directory
    // the SSTs are kept in.
    let mut interrupted = 0;
    for delay_ms in [0, 1, 2, 4] {
        let killed = dir.path().join(format!("killed-{delay_ms}"));
        let mut child = Command::new(BIN)
            .arg("import")
            .arg(&export)
            .arg("--data-dir")
            .arg(&killed)
            .arg("--rejects")
            .arg(&rejects)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A machine fast enough to ingest between two polls ends the import first; the checks
        // below then see a completed import, which they accept too.
        while !killed.join("ingesting").exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // Killing a process that has already exited is not an error worth failing on.
        let _ = child.kill();
        child.wait().unwrap();

        // Opening completes an interrupted ingestion, or finds none begun: all or nothing.
        interrupted += usize::from(killed.join("ingesting").exists());
        let store = Store::open(&killed).unwrap();
        let sequence = store.log().sequence();
        drop(store);
        assert!(
            sequence == 0 || sequence == 100_000,
            "a partial import is visible: sequence {sequence} after a kill at +{delay_ms} ms"
        );
        if sequence == 0 {
            let again = import(&killed, &[&export], &rejects);
            assert_eq!(again.status.code(), Some(0), "{again:?}");
        }
        let server = ChildServer::start(&killed);
        assert_eq!(
            runtime.block_on(registry_view(&server, &numbers)),
            expected,
            "the registry differs from a clean import after a kill at +{delay_ms} ms"
        );
    }
    eprintln!("{interrupted} of the kills interrupted an ingestion that the next open completed");
}

/// The imported SSTs are the bottommost level's, compressed with zstd as that level is
/// (`store::family_options`), not with the upper levels' LZ4.
#[test]
fn imported_tables_are_compressed_with_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.csv");
    write_csv(&generated, &Generator::new(3, AS_OF), 2000);
    let data_dir = dir.path().join("data");
    let output = import(&data_dir, &[&generated], &dir.path().join("rejects.txt"));
    assert!(output.status.success(), "{output:?}");
    let tables: Vec<PathBuf> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sst"))
        .collect();
    let mut ingested = 0;
    for table in tables {
        // A table's properties block is stored uncompressed. Its keys are prefix-compressed
        // against each other, but its values are whole: `rocksdb.creating.db.identity` is
        // "SST Writer" in the tables an SstFileWriter made, and `rocksdb.compression` names
        // RocksDB's built-in compressor with the type's byte in hex: 07 is zstd, 04 LZ4. The
        // other tables are memtables flushed to level 0 (the import's own bookkeeping), which
        // are LZ4 as the upper levels are.
        let bytes = std::fs::read(&table).unwrap();
        let holds = |value: &[u8]| bytes.windows(value.len()).any(|window| window == value);
        assert!(
            holds(b"BuiltinV2;"),
            "{} names no compressor",
            table.display()
        );
        if holds(b"SST Writer") {
            ingested += 1;
            assert!(holds(b"BuiltinV2;07;"), "{} is not zstd", table.display());
        }
    }
    assert!(ingested > 0, "no ingested table among the data dir's");
}
