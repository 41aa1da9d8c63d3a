//! Real-time feeds over real gRPC: `Submit` streams, the `Watch` change stream, and
//! `min_sequence` read-your-writes.

use crate::common;

use std::time::Duration;

use common::*;
use idguard::proto::v1 as pb;
use pb::registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Submits `events` on one stream and returns every ack, in order.
async fn submit_all(
    client: &mut RegistryClient<Channel>,
    events: Vec<pb::RegistryEvent>,
) -> Vec<pb::SubmitAck> {
    let count = events.len();
    let mut acks = client
        .submit(tokio_stream::iter(events))
        .await
        .expect("submit opens")
        .into_inner();
    let mut received = Vec::with_capacity(count);
    while let Some(ack) = acks.message().await.expect("ack stream") {
        received.push(ack);
    }
    received
}

/// Reads a watch until it has delivered `through`, or fails the test after 30 s.
async fn watch_through(
    client: &mut RegistryClient<Channel>,
    from: u64,
    through: u64,
) -> Vec<pb::RegistryChange> {
    let mut changes = client
        .watch(pb::WatchRequest {
            from_sequence: from,
        })
        .await
        .expect("watch opens")
        .into_inner();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while received
            .last()
            .map_or(0, |c: &pb::RegistryChange| c.sequence)
            < through
        {
            received.push(
                changes
                    .message()
                    .await
                    .expect("watch stream")
                    .expect("watch stays open"),
            );
        }
    })
    .await
    .expect("watch delivers in time");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_acks_every_event_in_order_and_goes_on_after_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let mut events: Vec<_> = (0..2000).map(|k| loss("s", k)).collect();
    events[10].authority = "bad".into();
    events[500].report_id = "s499".into(); // reuses a report_id for different content
    events[501] = events[499].clone(); // an exact retry
    let acks = submit_all(&mut client, events).await;

    assert_eq!(acks.len(), 2000);
    for (k, ack) in acks.iter().enumerate() {
        let expected = if k == 500 || k == 501 {
            "s499".to_owned()
        } else {
            format!("s{k}")
        };
        assert_eq!(ack.report_id, expected, "ack {k} out of order");
    }
    let invalid = acks[10].error.as_ref().expect("ack 10 is refused");
    assert_eq!(invalid.code, Code::InvalidArgument as i32);
    assert!(invalid.message.starts_with("authority:"), "{invalid:?}");
    let conflict = acks[500].error.as_ref().expect("ack 500 is refused");
    assert_eq!(conflict.code, Code::AlreadyExists as i32, "{conflict:?}");
    assert!(acks[501].duplicate && acks[501].sequence == acks[499].sequence);

    // Accepted events got gap-free sequences in the order sent.
    let sequences: Vec<u64> = acks
        .iter()
        .filter(|ack| ack.error.is_none() && !ack.duplicate)
        .map(|ack| ack.sequence)
        .collect();
    assert_eq!(sequences, (1..=1997).collect::<Vec<u64>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_then_follows_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let first = submit_all(&mut client, (0..500).map(|k| loss("a", k)).collect()).await;
    assert!(first.iter().all(|ack| ack.error.is_none()));

    // Writers keep going at full speed, duplicates included, while watchers join.
    let mut writer = server.registry().await;
    let writing = tokio::spawn(async move {
        let mut events: Vec<_> = (500..5500).map(|k| loss("a", k)).collect();
        events.extend((0..100).map(|k| loss("a", k)));
        submit_all(&mut writer, events).await
    });
    let from_start = watch_through(&mut client, 0, 5500);
    let mut other = server.registry().await;
    let from_middle = watch_through(&mut other, 250, 5500);
    let (from_start, from_middle) = tokio::join!(from_start, from_middle);
    let acks = writing.await.unwrap();
    assert!(
        acks[5000..].iter().all(|ack| ack.duplicate),
        "the retries were duplicates"
    );

    let sequences: Vec<u64> = from_start.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, (1..=5500).collect::<Vec<u64>>());
    let sequences: Vec<u64> = from_middle.iter().map(|c| c.sequence).collect();
    assert_eq!(sequences, (250..=5500).collect::<Vec<u64>>());
    for change in &from_start {
        let report_id = &change.event.as_ref().unwrap().report_id;
        assert_eq!(report_id, &format!("a{}", change.sequence - 1));
        assert!(change.recorded_at.is_some());
    }

    // Nothing more: the duplicates did not appear a second time.
    let mut tail = client
        .watch(pb::WatchRequest {
            from_sequence: 5501,
        })
        .await
        .unwrap()
        .into_inner();
    let nothing = tokio::time::timeout(Duration::from_millis(200), tail.message()).await;
    assert!(nothing.is_err(), "no change beyond 5500: {nothing:?}");

    let status = client
        .watch(pb::WatchRequest {
            from_sequence: 5502,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    server.stop().await;
}

/// A watcher that stops reading while thousands of changes go by is moved back to the log, and
/// still gets every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let mut slow = client
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    // Once the first change arrives the watcher follows the live tail; then it stops reading
    // for more changes than the live buffer and the HTTP/2 windows hold together.
    client.apply(loss("b", 0)).await.unwrap();
    assert_eq!(slow.message().await.unwrap().unwrap().sequence, 1);
    let acks = submit_all(&mut client, (1..60_000).map(|k| loss("b", k)).collect()).await;
    assert!(acks.iter().all(|ack| ack.error.is_none()));
    let mut expected = 2;
    while expected <= 60_000 {
        let change = slow.message().await.unwrap().expect("stream stays open");
        assert_eq!(change.sequence, expected);
        expected += 1;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_sequence_waits_for_the_report_or_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut verification = server.verification().await;
    let lost = card(&nth_number(7), "20150101", "");
    let ask = |min_sequence, timeout| {
        let mut request = Request::new(pb::CheckRequest {
            nonce: Vec::new(),
            card: Some(lost.clone()),
            min_sequence,
        });
        request.set_timeout(timeout);
        request
    };

    // Already reached: answered at once.
    let response = verification
        .check(ask(0, Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status(), pb::CardStatus::Valid);

    // Not reached before the deadline.
    let status = verification
        .check(ask(1, Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let batch = pb::CheckBatchRequest {
        nonce: Vec::new(),
        cards: vec![lost.clone()],
        min_sequence: 1,
    };
    let mut request = Request::new(batch);
    request.set_timeout(Duration::from_millis(300));
    let status = verification.check_batch(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // Reached while waiting: the check sees the report.
    let waiting = tokio::spawn({
        let mut verification = verification.clone();
        let request = ask(1, Duration::from_secs(10));
        async move { verification.check(request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the check waits for sequence 1");
    let applied = server
        .registry()
        .await
        .apply(loss("m", 7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.sequence, 1);
    let response = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(response.reason(), pb::Reason::Lost);
    assert!(response.sequence >= 1);
    server.stop().await;
}

/// Concurrent `Submit` streams and `Apply` callers all get durable, gap-free sequences, each
/// stream's events applied in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_callers_interleave_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut tasks = Vec::new();
    for stream in 0..4u64 {
        let mut client = server.registry().await;
        tasks.push(tokio::spawn(async move {
            let events = (0..1000)
                .map(|k| loss(&format!("c{stream}-"), stream * 1000 + k))
                .collect();
            let acks = submit_all(&mut client, events).await;
            let sequences: Vec<u64> = acks.iter().map(|ack| ack.sequence).collect();
            assert!(
                sequences.windows(2).all(|w| w[0] < w[1]),
                "stream {stream} applied out of order"
            );
            sequences
        }));
    }
    for caller in 0..4u64 {
        let mut client = server.registry().await;
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for k in 0..50 {
                let event = loss(&format!("u{caller}-"), 10_000 + caller * 50 + k);
                sequences.push(client.apply(event).await.unwrap().into_inner().sequence);
            }
            sequences
        }));
    }
    assert_gap_free(tasks, 4200).await;
    server.stop().await;
}

/// Shutting down ends open streams with UNAVAILABLE instead of waiting for clients to hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let mut watch = client
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let (events, outgoing) = mpsc::channel(4);
    let mut acks = client
        .submit(ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    events.send(loss("d", 1)).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().sequence, 1);
    assert_eq!(watch.message().await.unwrap().unwrap().sequence, 1);

    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown does not wait for open streams");
    let ended = watch.message().await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let ended = acks.message().await;
    assert!(
        matches!(&ended, Err(status) if status.code() == Code::Unavailable),
        "{ended:?}"
    );
    drop(events);
}
