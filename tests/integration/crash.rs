//! Crash safety, proven on the real binary: `idguard serve` is killed with SIGKILL at random
//! moments while several `Submit` streams write, many times over, and after every restart the
//! registry must hold exactly what it acknowledged. Damaged or foreign data dirs are refused.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use idguard::proto::v1 as pb;
use idguard::registry::Recorder;
use idguard::store::Store;
use pb::registry_client::RegistryClient;
use pb::verification_client::VerificationClient;
use tonic::Code;

/// Kill/restart cycles; `IDGUARD_KILL_CYCLES` overrides.
const CYCLES: u64 = 20;
/// Concurrent `Submit` streams per cycle.
const STREAMS: u64 = 3;
/// The most events one stream sends per cycle.
const EVENTS_PER_STREAM: u64 = 4000;

/// A small deterministic generator, seeded from `IDGUARD_KILL_SEED` or the clock (printed), so
/// that a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the harness sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    sent: HashMap<String, (u64, pb::RegistryEvent)>,
    acked: HashMap<String, u64>,
}

/// Streams events from `first` on until told to stop by the kill (the stream breaks), recording
/// each ack as it arrives.
///
/// The events go into the ledger before the connection is tried: the kill may come before the
/// writer even connects, and an event that never left must then be checked as absent.
async fn write(server_url: String, ledger: Arc<Mutex<Ledger>>, first: u64, count: u64) {
    let events: Vec<_> = (first..first + count).map(|k| (k, loss("k", k))).collect();
    {
        let mut ledger = ledger.lock().unwrap();
        for (k, event) in &events {
            ledger
                .sent
                .insert(event.report_id.clone(), (*k, event.clone()));
        }
    }
    let Ok(channel) = tonic::transport::Channel::from_shared(server_url)
        .unwrap()
        .connect()
        .await
    else {
        return;
    };
    let mut client = RegistryClient::new(channel);
    let Ok(response) = client
        .submit(tokio_stream::iter(events.into_iter().map(|(_, e)| e)))
        .await
    else {
        return;
    };
    let mut acks = response.into_inner();
    while let Ok(Some(ack)) = acks.message().await {
        assert!(ack.error.is_none(), "valid event refused: {ack:?}");
        ledger
            .lock()
            .unwrap()
            .acked
            .insert(ack.report_id, ack.sequence);
    }
}

/// Checks the registry against the ledger after a restart.
async fn verify(server: &ChildServer, ledger: &Ledger, recent: &[String]) {
    let channel = server.channel().await;
    let mut registry = RegistryClient::new(channel.clone());
    let mut verification = VerificationClient::new(channel);
    let probe = pb::CheckRequest {
        nonce: Vec::new(),
        card: Some(card(&nth_number(0), "20150101", "")),
        min_sequence: 0,
    };
    let current = verification
        .check(probe)
        .await
        .unwrap()
        .into_inner()
        .sequence;

    // Watch from 0: gap-free sequences, each one an event we sent, unchanged, once.
    let mut changes = registry
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut present: HashMap<String, u64> = HashMap::new();
    for expected in 1..=current {
        let change = changes
            .message()
            .await
            .unwrap()
            .expect("watch delivers up to the sequence");
        assert_eq!(
            change.sequence, expected,
            "gap or reordering in the event log"
        );
        let event = change.event.expect("event");
        let (_, sent) = ledger
            .sent
            .get(&event.report_id)
            .expect("only events we sent are present");
        assert_eq!(&event, sent, "stored event differs from the one sent");
        assert!(
            present.insert(event.report_id, expected).is_none(),
            "an event appears twice"
        );
    }

    // Every acknowledged event is present with its sequence.
    for (report_id, sequence) in &ledger.acked {
        assert_eq!(
            present.get(report_id),
            Some(sequence),
            "acked {report_id} lost or moved"
        );
    }

    // Every event sent is either wholly present or wholly absent, and the index agrees with
    // RocksDB: present numbers check LOST (the index must know them), absent ones VALID.
    let sent: Vec<(&String, u64)> = ledger.sent.iter().map(|(id, (k, _))| (id, *k)).collect();
    for chunk in sent.chunks(10_000) {
        let cards = chunk
            .iter()
            .map(|(_, k)| card(&nth_number(*k), "20150101", ""))
            .collect();
        let results = verification
            .check_batch(pb::CheckBatchRequest {
                nonce: Vec::new(),
                cards,
                min_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for ((report_id, _), result) in chunk.iter().zip(results) {
            let expected = if present.contains_key(*report_id) {
                pb::CardStatus::Invalid
            } else {
                pb::CardStatus::Valid
            };
            assert_eq!(
                result.status(),
                expected,
                "index or state wrong for {report_id}"
            );
        }
    }
    for report_id in recent {
        let k = ledger.sent[report_id].0;
        let record = registry
            .get_record(pb::GetRecordRequest {
                id_number: nth_number(k),
                ..Default::default()
            })
            .await;
        match present.get(report_id) {
            Some(&sequence) => {
                let record = record.expect("present event has a record").into_inner();
                assert_eq!(record.events.len(), 1);
                assert_eq!(record.events[0].sequence, sequence);
            }
            None => assert_eq!(
                record.unwrap_err().code(),
                Code::NotFound,
                "{report_id} half-exists"
            ),
        }
    }
}

#[test]
fn acknowledged_events_survive_sigkill_at_random_moments() {
    let cycles: u64 = env_or("IDGUARD_KILL_CYCLES", CYCLES);
    let seed: u64 = env_or(
        "IDGUARD_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("kill test: {cycles} cycles, IDGUARD_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut next_k = 0;
    let mut recent: Vec<String> = Vec::new();
    for cycle in 0..=cycles {
        let mut server = ChildServer::start(dir.path());
        runtime.block_on(verify(&server, &ledger.lock().unwrap(), &recent));
        if cycle == cycles {
            break;
        }
        let writers: Vec<_> = (0..STREAMS)
            .map(|stream| {
                let first = next_k + stream * EVENTS_PER_STREAM;
                runtime.spawn(write(
                    server.url.clone(),
                    Arc::clone(&ledger),
                    first,
                    EVENTS_PER_STREAM,
                ))
            })
            .collect();
        recent = (next_k..next_k + STREAMS * EVENTS_PER_STREAM)
            .map(|k| format!("k{k}"))
            .collect();
        next_k += STREAMS * EVENTS_PER_STREAM;
        std::thread::sleep(Duration::from_millis(5 + rng.next(150)));
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for writer in writers {
            runtime.block_on(writer).unwrap();
        }
    }
    let ledger = ledger.lock().unwrap();
    eprintln!(
        "kill test: {} events sent, {} acknowledged, {:.1} s",
        ledger.sent.len(),
        ledger.acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        !ledger.acked.is_empty(),
        "no event was ever acknowledged: the test proved nothing"
    );
}

fn open_error(dir: &std::path::Path) -> String {
    match Store::open(dir) {
        Ok(_) => panic!("{} was opened", dir.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn a_directory_that_is_not_a_registry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a database").unwrap();
    let message = open_error(dir.path());
    assert!(message.contains("not an idguard registry"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    // Nothing was created over it.
    assert!(!dir.path().join("CURRENT").exists());
}

#[test]
fn a_damaged_registry_is_refused_not_rebuilt_empty() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-999999\n").unwrap();
    let message = open_error(dir.path());
    assert!(message.contains("cannot open the registry"), "{message}");
}

#[test]
fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), families).unwrap();
        db.put(b"idguard.schema", b"99").unwrap();
    }
    let message = open_error(dir.path());
    assert!(message.contains("schema version \"99\""), "{message}");

    let stderr = common::serve_refusal(dir.path(), &[]);
    assert!(stderr.contains("schema version \"99\""), "{stderr}");
}

fn origin_after_reopen(dir: &std::path::Path) -> (idguard::store::IndexOrigin, Store) {
    let store = Store::open(dir).unwrap();
    (store.citizens().index_origin().clone(), store)
}

/// A clean stop saves the index; the next start loads it, replays what a crash left after it,
/// and a damaged or foreign copy is never used.
#[test]
fn the_saved_index_is_brought_up_to_date_or_rebuilt() {
    use idguard::store::IndexOrigin;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let apply = |store: &Store, prefix: &str, range: std::ops::Range<u64>| {
        runtime.block_on(async {
            let now = time::OffsetDateTime::now_utc();
            for k in range {
                let valid = idguard::event::validate_event(loss(prefix, k), now).unwrap();
                store
                    .enqueue(valid, &Recorder::trusted("test"))
                    .await
                    .unwrap()
                    .outcome()
                    .await
                    .unwrap();
            }
        })
    };
    let lost = |range: std::ops::Range<u64>| -> Vec<bool> {
        let store = Store::open(dir.path()).unwrap();
        range
            .map(|k| {
                store
                    .citizens()
                    .memo(
                        idguard::card::parse_registrable_number(&nth_number(k), time::Date::MAX)
                            .unwrap(),
                    )
                    .is_some()
            })
            .collect()
    };

    let (origin, store) = origin_after_reopen(dir.path());
    assert_eq!(origin, IndexOrigin::Rebuilt(None));
    apply(&store, "i", 0..100);
    drop(store);

    // Loaded after a clean stop.
    let (origin, store) = origin_after_reopen(dir.path());
    assert_eq!(origin, IndexOrigin::Loaded);
    drop(store);

    // A crash after more events: the saved copy is behind, and the log brings it up to date.
    let saved = std::fs::read(dir.path().join("idguard-index.snapshot")).unwrap();
    let (_, store) = origin_after_reopen(dir.path());
    apply(&store, "i", 100..150);
    drop(store);
    std::fs::write(dir.path().join("idguard-index.snapshot"), &saved).unwrap();
    let (origin, store) = origin_after_reopen(dir.path());
    assert_eq!(origin, IndexOrigin::Loaded);
    drop(store);
    assert!(lost(0..150).into_iter().all(|found| found));

    // Damaged: rebuilt.
    let mut damaged = std::fs::read(dir.path().join("idguard-index.snapshot")).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xFF;
    std::fs::write(dir.path().join("idguard-index.snapshot"), &damaged).unwrap();
    let (origin, store) = origin_after_reopen(dir.path());
    assert!(
        matches!(origin, IndexOrigin::Rebuilt(Some(ref why)) if why.contains("checksum")),
        "{origin:?}"
    );
    drop(store);

    // From another registry with as many events: rebuilt, and only this registry's numbers found.
    let other = tempfile::tempdir().unwrap();
    let store = Store::open(other.path()).unwrap();
    apply(&store, "o", 1000..1150);
    drop(store);
    std::fs::copy(
        other.path().join("idguard-index.snapshot"),
        dir.path().join("idguard-index.snapshot"),
    )
    .unwrap();
    let (origin, store) = origin_after_reopen(dir.path());
    assert!(
        matches!(origin, IndexOrigin::Rebuilt(Some(ref why)) if why.contains("another event log")),
        "{origin:?}"
    );
    drop(store);
    assert!(lost(0..150).into_iter().all(|found| found));
    assert!(lost(1000..1150).into_iter().all(|found| !found));
}
