//! The public API end to end: the real server on an ephemeral port, a real RocksDB in a temp dir,
//! and the generated tonic clients.

use crate::common;

use common::*;
use idguard::proto::v1 as pb;
use pb::{CardStatus, LossKind, Reason};
use time::OffsetDateTime;
use time::macros::datetime;
use tonic::Code;

const T1: OffsetDateTime = datetime!(2025-03-01 09:00 +8);
const T2: OffsetDateTime = datetime!(2025-04-01 09:00 +8);
const T3: OffsetDateTime = datetime!(2025-05-01 09:00 +8);

async fn check(server: &TestServer, card: pb::CardRef) -> pb::CheckResponse {
    server
        .verification()
        .await
        .check(pb::CheckRequest {
            nonce: Vec::new(),
            card: Some(card),
            min_sequence: 0,
        })
        .await
        .expect("check succeeds")
        .into_inner()
}

async fn apply(server: &TestServer, event: pb::RegistryEvent) -> pb::ApplyResponse {
    server
        .registry()
        .await
        .apply(event)
        .await
        .expect("apply succeeds")
        .into_inner()
}

async fn apply_error(server: &TestServer, event: pb::RegistryEvent) -> tonic::Status {
    server
        .registry()
        .await
        .apply(event)
        .await
        .expect_err("apply is refused")
}

fn assert_invalid(response: &pb::CheckResponse, reason: Reason, since: OffsetDateTime) {
    assert_eq!(response.status(), CardStatus::Invalid, "{response:?}");
    assert_eq!(response.reason(), reason, "{response:?}");
    assert_eq!(response.invalid_since, at(since), "{response:?}");
}

#[tokio::test]
async fn a_card_without_record_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let response = check(
        &server,
        card(&number("11010519491231002"), "20200101", "LONG"),
    )
    .await;
    assert_eq!(response.status(), CardStatus::Valid);
    assert_eq!(response.reason(), Reason::Unspecified);
    assert_eq!(response.invalid_since, None);
    assert_eq!(response.sequence, 0);
    server.stop().await;
}

/// Every event kind produces its verdict, and `invalid_since` is the event's `occurred_at`.
#[tokio::test]
async fn every_event_kind_gives_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let lost = number("44030519800101123");
    let stolen = number("44030519800101124");
    let revoked_id = number("44030519800101125");
    let cancelled_id = number("44030519800101126");
    let renewed = number("44030519800101127");

    apply(
        &server,
        event(
            "l",
            T1,
            reported(card(&lost, "20100101", "LONG"), LossKind::Lost),
        ),
    )
    .await;
    apply(
        &server,
        event(
            "s",
            T1,
            reported(card(&stolen, "20100101", ""), LossKind::Stolen),
        ),
    )
    .await;
    apply(
        &server,
        event("r", T1, revoked(card(&revoked_id, "20100101", ""))),
    )
    .await;
    apply(&server, event("c", T1, cancelled(&cancelled_id))).await;
    let last = apply(
        &server,
        event("i", T2, issued(card(&renewed, "20200101", "20400101"))),
    )
    .await;
    assert_eq!(last.sequence, 5);

    // Cancellation reaches every card of the number, known or not; an issuance supersedes every
    // earlier card, including ones the registry never heard of.
    for (presented, reason, since) in [
        (card(&lost, "20100101", ""), Reason::Lost, T1),
        (card(&stolen, "20100101", ""), Reason::Stolen, T1),
        (card(&revoked_id, "20100101", ""), Reason::Revoked, T1),
        (
            card(&cancelled_id, "20220202", ""),
            Reason::CitizenCancelled,
            T1,
        ),
        (card(&renewed, "20100101", ""), Reason::Superseded, T2),
    ] {
        assert_invalid(&check(&server, presented).await, reason, since);
    }
    let current = check(&server, card(&renewed, "20200101", "20400101")).await;
    assert_eq!(current.status(), CardStatus::Valid, "{current:?}");
    assert_eq!(current.sequence, 5);
    // Another card of a lost number is not lost.
    let other = check(&server, card(&lost, "20200101", "")).await;
    assert_eq!(other.status(), CardStatus::Valid, "{other:?}");

    // Expiry from the request, and from the registry's record of the card.
    assert_invalid(
        &check(
            &server,
            card(&number("44030519800101128"), "20100101", "20200101"),
        )
        .await,
        Reason::Expired,
        datetime!(2020-01-02 00:00 +8),
    );
    apply(
        &server,
        event(
            "e",
            T3,
            issued(card(&number("44030519800101129"), "20000101", "20200101")),
        ),
    )
    .await;
    assert_invalid(
        &check(&server, card(&number("44030519800101129"), "20000101", "")).await,
        Reason::Expired,
        datetime!(2020-01-02 00:00 +8),
    );
    assert_invalid(
        &check(&server, card("440305800101123", "19990101", "")).await,
        Reason::FirstGeneration,
        datetime!(2013-01-01 00:00 +8),
    );
    server.stop().await;
}

#[tokio::test]
async fn precedence_is_first_match_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let id = number("32010219900101234");
    let old = card(&id, "20100101", "20200101");
    apply(&server, event("new", T1, issued(card(&id, "20200101", "")))).await;
    assert_invalid(&check(&server, old.clone()).await, Reason::Superseded, T1);
    apply(
        &server,
        event("lost", T2, reported(old.clone(), LossKind::Lost)),
    )
    .await;
    assert_invalid(&check(&server, old.clone()).await, Reason::Lost, T2);
    apply(
        &server,
        event("stolen", T3, reported(old.clone(), LossKind::Stolen)),
    )
    .await;
    assert_invalid(&check(&server, old.clone()).await, Reason::Stolen, T3);
    apply(&server, event("revoked", T3, revoked(old.clone()))).await;
    assert_invalid(&check(&server, old.clone()).await, Reason::Revoked, T3);
    apply(&server, event("cancelled", T3, cancelled(&id))).await;
    assert_invalid(&check(&server, old).await, Reason::CitizenCancelled, T3);
    server.stop().await;
}

#[tokio::test]
async fn a_withdrawal_undoes_its_report_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let first = number("51010219850505111");
    let second = number("51010219850505112");

    apply(
        &server,
        event(
            "loss-1",
            T1,
            reported(card(&first, "20150101", ""), LossKind::Lost),
        ),
    )
    .await;
    assert_eq!(
        check(&server, card(&first, "20150101", "")).await.status(),
        CardStatus::Invalid
    );
    apply(&server, event("undo-1", T2, withdrawn("loss-1"))).await;
    assert_eq!(
        check(&server, card(&first, "20150101", "")).await.status(),
        CardStatus::Valid
    );

    // The withdrawal arrives before the report it withdraws, and still wins.
    apply(&server, event("undo-2", T2, withdrawn("loss-2"))).await;
    apply(
        &server,
        event(
            "loss-2",
            T1,
            reported(card(&second, "20150101", ""), LossKind::Stolen),
        ),
    )
    .await;
    assert_eq!(
        check(&server, card(&second, "20150101", "")).await.status(),
        CardStatus::Valid
    );

    // A withdrawal cannot be withdrawn.
    let status = apply_error(&server, event("undo-undo", T3, withdrawn("undo-1"))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("withdrawn.withdrawn_report_id"),
        "{status:?}"
    );

    // History keeps both: the record shows the report and its withdrawal.
    let record = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: second.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = record
        .events
        .iter()
        .map(|c| c.event.as_ref().unwrap().report_id.as_str())
        .collect();
    assert_eq!(ids, ["undo-2", "loss-2"]);
    let sequences: Vec<_> = record.events.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, [3, 4]);
    assert_eq!(record.cards.len(), 1);
    assert_eq!(
        record.cards[0].verdict.as_ref().unwrap().status(),
        CardStatus::Valid
    );
    server.stop().await;
}

#[tokio::test]
async fn retries_are_harmless_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let id = number("37020219700707070");
    let report = event(
        "retry-me",
        T1,
        reported(card(&id, "20150101", "long"), LossKind::Lost),
    );
    let first = apply(&server, report.clone()).await;
    assert_eq!((first.sequence, first.duplicate), (1, false));
    assert_eq!(first.report_id, "retry-me");

    // The same content, even spelled with a lower-case `long`, is a duplicate.
    let again = apply(&server, report.clone()).await;
    assert_eq!((again.sequence, again.duplicate), (1, true));

    let mut different = report.clone();
    different.occurred_at = at(T2);
    let status = apply_error(&server, different).await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Neither the duplicate nor the refused conflict used a sequence number.
    let next = apply(
        &server,
        event("next", T2, issued(card(&id, "20200101", ""))),
    )
    .await;
    assert_eq!((next.sequence, next.duplicate), (2, false));
    let record = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.events.len(), 2);
    assert_eq!(record.sequence, 2);
    server.stop().await;
}

/// Concurrent writers share group commit, and every acknowledged event has its own sequence,
/// with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_get_gap_free_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let mut client = server.registry().await;
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for n in 0..25 {
                let id = number(&format!("440305199001{:02}{writer:03}", n + 1));
                let event = event(
                    &format!("w{writer}-{n}"),
                    T1,
                    reported(card(&id, "20150101", ""), LossKind::Lost),
                );
                sequences.push(client.apply(event).await.unwrap().into_inner().sequence);
            }
            sequences
        }));
    }
    assert_gap_free(tasks, 200).await;
    let response = check(&server, card(&number("44030519900125007"), "20150101", "")).await;
    assert_eq!(response.reason(), Reason::Lost);
    assert_eq!(response.sequence, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_batch_answers_each_card_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let id = number("13010219880808088");
    apply(
        &server,
        event(
            "b",
            T1,
            reported(card(&id, "20150101", ""), LossKind::Stolen),
        ),
    )
    .await;
    let cards = vec![
        card(&id, "20150101", ""),
        card(&number("13010219880808089"), "20150101", ""),
        card("13010219880808088X", "20150101", ""),
        card(&id, "20151301", ""),
        card("130102880808088", "19990101", ""),
    ];
    let results = server
        .verification()
        .await
        .check_batch(pb::CheckBatchRequest {
            nonce: Vec::new(),
            cards,
            min_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let statuses: Vec<_> = results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses,
        [
            CardStatus::Invalid,
            CardStatus::Valid,
            CardStatus::Malformed,
            CardStatus::Malformed,
            CardStatus::Invalid
        ]
    );
    assert_eq!(results[0].reason(), Reason::Stolen);
    assert_eq!(results[4].reason(), Reason::FirstGeneration);
    assert!(
        results[2].detail.starts_with("cards[2].id_number:"),
        "{}",
        results[2].detail
    );
    assert!(
        results[3].detail.starts_with("cards[3].issue_date:"),
        "{}",
        results[3].detail
    );
    assert!(results.iter().all(|r| r.sequence == 1));

    let many = |count| pb::CheckBatchRequest {
        nonce: Vec::new(),
        cards: vec![card(&id, "20150101", ""); count],
        min_sequence: 0,
    };
    let full = server
        .verification()
        .await
        .check_batch(many(10_000))
        .await
        .unwrap();
    assert_eq!(full.into_inner().results.len(), 10_000);
    let status = server
        .verification()
        .await
        .check_batch(many(10_001))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("cards"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_stream_answers_in_order_and_survives_malformed_items() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let id = number("21010219770303033");
    apply(&server, event("x", T1, revoked(card(&id, "20150101", "")))).await;
    let (requests, outgoing) = tokio::sync::mpsc::channel(8);
    let mut responses = server
        .verification()
        .await
        .check_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let mut ask = async |card: Option<pb::CardRef>| {
        requests
            .send(pb::CheckRequest {
                nonce: Vec::new(),
                card,
                min_sequence: 0,
            })
            .await
            .unwrap();
        responses
            .message()
            .await
            .unwrap()
            .expect("a response per request")
    };
    assert_eq!(
        ask(Some(card(&id, "20150101", ""))).await.reason(),
        Reason::Revoked
    );
    let malformed = ask(Some(card("123", "20150101", ""))).await;
    assert_eq!(malformed.status(), CardStatus::Malformed);
    assert!(
        malformed.detail.starts_with("card.id_number:"),
        "{}",
        malformed.detail
    );
    let missing = ask(None).await;
    assert_eq!(missing.status(), CardStatus::Malformed);
    assert!(missing.detail.starts_with("card:"), "{}", missing.detail);
    // The stream stays open after malformed items.
    assert_eq!(
        ask(Some(card(&id, "20200101", ""))).await.status(),
        CardStatus::Valid
    );
    server.stop().await;
}

/// After a restart the state, and the index rebuilt from it, answer exactly as before.
#[tokio::test]
async fn state_and_index_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let ids: Vec<String> = (0..20)
        .map(|n| number(&format!("310101199001{:02}123", n + 1)))
        .collect();
    for (n, id) in ids.iter().enumerate() {
        let kind = if n % 2 == 0 {
            LossKind::Lost
        } else {
            LossKind::Stolen
        };
        apply(
            &server,
            event(
                &format!("r{n}"),
                T1,
                reported(card(id, "20150101", ""), kind),
            ),
        )
        .await;
    }
    apply(&server, event("w", T2, withdrawn("r3"))).await;
    let cards: Vec<_> = ids.iter().map(|id| card(id, "20150101", "")).collect();
    let batch = pb::CheckBatchRequest {
        nonce: Vec::new(),
        cards,
        min_sequence: 0,
    };
    let before = server
        .verification()
        .await
        .check_batch(batch.clone())
        .await
        .unwrap()
        .into_inner();
    let record_before = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: ids[3].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let after = server
        .verification()
        .await
        .check_batch(batch)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after);
    assert_eq!(after.results[3].status(), CardStatus::Valid);
    assert_eq!(after.results[4].reason(), Reason::Lost);
    assert!(after.results.iter().all(|r| r.sequence == 21));
    let record_after = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: ids[3].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record_before, record_after);
    // Sequences continue where they stopped.
    let next = apply(&server, event("after", T3, cancelled(&ids[0]))).await;
    assert_eq!(next.sequence, 22);
    server.stop().await;
}

#[tokio::test]
async fn malformed_input_is_refused_on_every_rpc_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let id = number("44030519800101123");

    let status = server
        .verification()
        .await
        .check(pb::CheckRequest {
            nonce: Vec::new(),
            card: Some(card(&id, "2015-01-01", "")),
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("card.issue_date: must be YYYYMMDD"),
        "{status:?}"
    );
    let status = server
        .verification()
        .await
        .check(pb::CheckRequest {
            nonce: Vec::new(),
            card: None,
            min_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let good = || {
        event(
            "bad",
            T1,
            reported(card(&id, "20150101", ""), LossKind::Lost),
        )
    };
    let mut cases: Vec<(pb::RegistryEvent, &str)> = Vec::new();
    let mut e = good();
    e.report_id = String::new();
    cases.push((e, "report_id"));
    let mut e = good();
    e.report_id = "x".repeat(65);
    cases.push((e, "report_id"));
    let mut e = good();
    e.authority = "4403".into();
    cases.push((e, "authority"));
    let mut e = good();
    e.occurred_at = None;
    cases.push((e, "occurred_at"));
    let mut e = good();
    e.occurred_at = at(OffsetDateTime::now_utc() + time::Duration::hours(1));
    cases.push((e, "occurred_at"));
    let mut e = good();
    e.kind = None;
    cases.push((e, "kind"));
    cases.push((
        event(
            "bad",
            T1,
            reported(card(&id, "20150101", ""), LossKind::Unspecified),
        ),
        "reported.kind",
    ));
    cases.push((
        event(
            "bad",
            T1,
            reported(card("44030519800101124", "20150101", ""), LossKind::Lost),
        ),
        "reported.card.id_number",
    ));
    cases.push((
        event("bad", T1, issued(card(&id, "20150101", "20140101"))),
        "issued.card.expiry_date",
    ));
    cases.push((
        event("bad", T1, issued(card(&id, "20991231", ""))),
        "issued.card.issue_date",
    ));
    cases.push((
        event("bad", T1, cancelled("110105491231002")),
        "cancelled.id_number",
    ));
    cases.push((
        event("bad", T1, withdrawn("")),
        "withdrawn.withdrawn_report_id",
    ));
    for (event, field) in cases {
        let status = apply_error(&server, event).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status:?}"
        );
    }

    let status = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: "12345".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("id_number:"), "{status:?}");

    // A message over 4 MiB is refused.
    let huge = pb::CheckBatchRequest {
        nonce: Vec::new(),
        cards: vec![card(&"1".repeat(1000), "20150101", ""); 5000],
        min_sequence: 0,
    };
    let status = server
        .verification()
        .await
        .check_batch(huge)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // Nothing was written: no sequence was used and the number has no record.
    let response = check(&server, card(&id, "20150101", "")).await;
    assert_eq!(
        (response.status(), response.sequence),
        (CardStatus::Valid, 0)
    );
    let status = server
        .registry()
        .await
        .get_record(pb::GetRecordRequest {
            id_number: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}
