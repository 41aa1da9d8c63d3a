//! The national steady state (`DOMAIN.md` §5): every citizen's current card is on record through
//! its issuance, and a check of it is answered from the index's memo, with no store read. Older
//! cards and invalidated numbers still read the store, and `idguard_check_store_reads_total`
//! says why. The memos survive a clean restart (the saved index) and a kill (the saved index
//! with the log after it replayed, a withdrawal among it).

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{ChildServer, card, event, issued, nth_number, reported, sample, scrape, withdrawn};
use idguard::proto::v1 as pb;
use pb::registry_client::RegistryClient;
use pb::verification_client::VerificationClient;
use time::macros::datetime;

const CITIZENS: u64 = 300;

fn current_card(k: u64) -> pb::CardRef {
    card(&nth_number(k), "20200101", "20400101")
}

/// Starts the server on `data`, returning it and its metrics address.
fn start(data: &std::path::Path) -> (ChildServer, String) {
    let (server, lines) = ChildServer::start_reading(data, &[], 2);
    let metrics = lines[1]
        .strip_prefix("idguard metrics on ")
        .expect("the metrics address")
        .to_owned();
    (server, metrics)
}

async fn apply(server: &ChildServer, events: Vec<pb::RegistryEvent>) {
    let mut registry = RegistryClient::new(server.channel().await);
    for event in events {
        registry.apply(event).await.expect("accepted");
    }
}

/// The reasons of the verdicts on `cards` (`None`: valid), and the store reads they cost by
/// cause: older cards, then numbers whose records must be consulted.
async fn check(
    server: &ChildServer,
    metrics: &str,
    cards: Vec<pb::CardRef>,
) -> (Vec<Option<pb::Reason>>, [f64; 2]) {
    let reads = |exposition: &str| {
        ["older_card", "consult"].map(|cause| {
            sample(
                exposition,
                &format!(r#"idguard_check_store_reads_total{{cause="{cause}"}}"#),
            )
        })
    };
    let before = reads(&scrape(metrics));
    let results = VerificationClient::new(server.channel().await)
        .check_batch(pb::CheckBatchRequest {
            cards,
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .expect("checked")
        .into_inner()
        .results;
    let after = reads(&scrape(metrics));
    let reasons = results
        .iter()
        .map(|result| (result.status() != pb::CardStatus::Valid).then(|| result.reason()))
        .collect();
    (reasons, [after[0] - before[0], after[1] - before[1]])
}

fn stop_cleanly(mut server: ChildServer) {
    let terminated = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(terminated.success());
    assert_eq!(server.child.wait().expect("exit").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn current_cards_are_answered_from_memory_across_a_restart_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, metrics) = start(&data);
    let on = datetime!(2020-01-01 09:00 +8);
    let mut events: Vec<pb::RegistryEvent> = (0..CITIZENS)
        .map(|k| event(&format!("issued{k}"), on, issued(current_card(k))))
        .collect();
    // Citizen 0 lost an older card; citizen 1's current card was stolen; citizen 2's current
    // card was reported lost (withdrawn below, after the restart).
    let older = card(&nth_number(0), "20100101", "20300101");
    let lost_at = datetime!(2019-06-01 10:00 +8);
    events.push(event(
        "lost0",
        lost_at,
        reported(older.clone(), pb::LossKind::Lost),
    ));
    let stolen_at = datetime!(2024-03-01 10:00 +8);
    events.push(event(
        "stolen1",
        stolen_at,
        reported(current_card(1), pb::LossKind::Stolen),
    ));
    events.push(event(
        "lost2",
        stolen_at,
        reported(current_card(2), pb::LossKind::Lost),
    ));
    apply(&server, events).await;

    let everyone: Vec<pb::CardRef> = (0..CITIZENS).map(current_card).collect();
    let (reasons, reads) = check(&server, &metrics, everyone.clone()).await;
    for (k, reason) in reasons.iter().enumerate() {
        let expected = match k {
            1 => Some(pb::Reason::Stolen),
            2 => Some(pb::Reason::Lost),
            _ => None,
        };
        assert_eq!(*reason, expected, "citizen {k}");
    }
    assert_eq!(
        reads,
        [0.0, 2.0],
        "only the two invalidated current cards read the store"
    );
    let (reasons, reads) = check(&server, &metrics, vec![older.clone()]).await;
    assert_eq!((reasons, reads), (vec![Some(pb::Reason::Lost)], [1.0, 0.0]));
    let strangers: Vec<pb::CardRef> = (CITIZENS..CITIZENS + 50).map(current_card).collect();
    let (reasons, reads) = check(&server, &metrics, strangers).await;
    assert!(reasons.iter().all(Option::is_none));
    assert_eq!(reads, [0.0, 0.0]);

    stop_cleanly(server);
    let (server, metrics) = start(&data);
    let (reasons, reads) = check(&server, &metrics, everyone.clone()).await;
    assert_eq!(reasons.iter().filter(|reason| reason.is_some()).count(), 2);
    assert_eq!(reads, [0.0, 2.0], "the saved index kept every memo");

    apply(
        &server,
        vec![event(
            "withdraw2",
            stolen_at + Duration::from_secs(60),
            withdrawn("lost2"),
        )],
    )
    .await;
    let (reasons, reads) = check(&server, &metrics, vec![current_card(2)]).await;
    assert_eq!((reasons, reads), (vec![None], [0.0, 0.0]));
    drop(server); // SIGKILL: the saved index is older than the log now.

    let (server, metrics) = start(&data);
    let (reasons, reads) = check(&server, &metrics, everyone).await;
    assert_eq!(reasons.iter().filter(|reason| reason.is_some()).count(), 1);
    assert_eq!(
        reads,
        [0.0, 1.0],
        "the replayed withdrawal made citizen 2's memo current"
    );
    let (reasons, reads) = check(&server, &metrics, vec![older]).await;
    assert_eq!((reasons, reads), (vec![Some(pb::Reason::Lost)], [1.0, 0.0]));
}
