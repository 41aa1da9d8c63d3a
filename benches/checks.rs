//! The in-process pieces of a check, each in ns per check: parsing and validating a card, the
//! index lookup that answers the no-record (hot) path, and the store read plus verdict for a card
//! that has a record, with one event on record and with 1,024 (which should cost the same: a
//! check reads the number's summary, not its history).
//!
//! Run: `cargo bench --bench checks` (with the Makefile's `CARGO_TARGET_DIR`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use idguard::card::{CardText, CitizenNumber, PresentedCard, parse_presented_card};
use idguard::event::validate_event;
use idguard::proto::timestamp;
use idguard::proto::v1::{self as pb, registry_event::Kind};
use idguard::registry::{Memo, Recorder, verdict};
use idguard::store::Store;
use idguard::store::index::RecordIndex;
use idguard::tools::synthetic::nth_number;
use time::macros::{date, datetime};

const TODAY: time::Date = date!(2026 - 11 - 22);
/// Numbers with records in the index and store benches.
const RECORDS: u64 = 1_000_000;
const STORE_RECORDS: u64 = 100_000;

fn presented(k: u64) -> PresentedCard {
    let id = nth_number(k);
    let text = CardText {
        id_number: &id,
        issue_date: "20150101",
        expiry_date: "LONG",
    };
    parse_presented_card(text, TODAY).expect("valid card")
}

fn number(card: &PresentedCard) -> CitizenNumber {
    match card {
        PresentedCard::Current(card) => card.number,
        PresentedCard::FirstGeneration => unreachable!("benchmarks use current numbers"),
    }
}

fn parsing(c: &mut Criterion) {
    c.bench_function("parse and validate a card", |b| {
        b.iter(|| {
            parse_presented_card(
                black_box(CardText {
                    id_number: "11010519491231002X",
                    issue_date: "20150101",
                    expiry_date: "20350101",
                }),
                TODAY,
            )
        })
    });
}

fn index(c: &mut Criterion) {
    let index = RecordIndex::default();
    index.insert((0..RECORDS).map(|k| (number(&presented(k)), Memo::Consult)));
    let absent: Vec<CitizenNumber> = (RECORDS..RECORDS + 1024)
        .map(|k| number(&presented(k)))
        .collect();
    let present: Vec<CitizenNumber> = (0..1024).map(|k| number(&presented(k * 977))).collect();
    let mut at = 0;
    c.bench_function("index lookup, miss (1M numbers with records)", |b| {
        b.iter(|| {
            at = (at + 1) % absent.len();
            index.get(black_box(absent[at]))
        })
    });
    c.bench_function("index lookup, hit (1M numbers with records)", |b| {
        b.iter(|| {
            at = (at + 1) % present.len();
            index.get(black_box(present[at]))
        })
    });
    c.bench_function("verdict, no record", |b| {
        let card = presented(RECORDS + 1);
        b.iter(|| verdict(black_box(&card), None, TODAY))
    });
}

fn store_hit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let now = time::OffsetDateTime::now_utc();
    runtime.block_on(async {
        let mut pending = Vec::new();
        for k in 0..STORE_RECORDS {
            let wire = pb::RegistryEvent {
                report_id: format!("b{k}"),
                authority: "440305".into(),
                occurred_at: Some(timestamp(datetime!(2025-06-01 08:00 UTC))),
                kind: Some(Kind::Reported(pb::CardReported {
                    card: Some(pb::CardRef {
                        id_number: nth_number(k),
                        issue_date: "20150101".into(),
                        expiry_date: String::new(),
                    }),
                    kind: pb::LossKind::Stolen.into(),
                })),
            };
            let valid = validate_event(wire, now).expect("valid event");
            pending.push(
                store
                    .enqueue(valid, &Recorder::trusted("bench"))
                    .await
                    .expect("queued"),
            );
        }
        for applied in pending {
            applied.outcome().await.expect("applied");
        }
    });
    // One number with a long history: 1,024 revocations of its card, from 32 divisions (each
    // may record 32 events on a number in a day).
    let long = presented(STORE_RECORDS + 1);
    runtime.block_on(async {
        let mut pending = Vec::new();
        for k in 0..1024u32 {
            let wire = pb::RegistryEvent {
                report_id: format!("long{k}"),
                authority: format!("4403{:02}", k % 32),
                occurred_at: Some(timestamp(datetime!(2025-06-01 08:00 UTC))),
                kind: Some(Kind::Revoked(pb::CardRevoked {
                    card: Some(pb::CardRef {
                        id_number: nth_number(STORE_RECORDS + 1),
                        issue_date: "20150101".into(),
                        expiry_date: String::new(),
                    }),
                    ..Default::default()
                })),
            };
            let valid = validate_event(wire, now).expect("valid event");
            let recorder = Recorder::trusted("bench");
            pending.push(store.enqueue(valid, &recorder).await.expect("queued"));
        }
        for applied in pending {
            applied.outcome().await.expect("applied");
        }
    });
    c.bench_function(
        "store read + verdict, hit with 1,024 events on record",
        |b| {
            b.iter(|| {
                let summary = store
                    .citizens()
                    .summaries(&[number(&long)])
                    .expect("read")
                    .pop()
                    .flatten();
                verdict(&long, summary.as_ref(), TODAY)
            })
        },
    );
    let cards: Vec<PresentedCard> = (0..1024).map(|k| presented(k * 97)).collect();
    let mut at = 0;
    c.bench_function("store read + verdict, hit (100k records)", |b| {
        b.iter(|| {
            at = (at + 1) % cards.len();
            let card = &cards[at];
            let summary = store
                .citizens()
                .summaries(&[number(card)])
                .expect("read")
                .pop()
                .flatten();
            verdict(card, summary.as_ref(), TODAY)
        })
    });
}

criterion_group!(benches, parsing, index, store_hit);
criterion_main!(benches);
