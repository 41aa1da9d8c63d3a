//! Cluster mode on a real three-server NATS JetStream cluster (R3) with three idguard nodes, all
//! real processes on loopback: propagation, losing a NATS server, killing a node mid-burst, cutting
//! a node off from NATS, and duplicates sent to different nodes at once.

use crate::common;

use std::time::{Duration, Instant};

use common::nats::{NatsCluster, Node, Proxy};
use common::{card, loss, nth_number};
use idguard::proto::v1 as pb;
use tempfile::TempDir;
use tokio_stream::StreamExt;

/// Three NATS servers and three idguard nodes, each node given every server.
struct Cluster {
    nats: NatsCluster,
    nodes: Vec<Node>,
    _dirs: TempDir,
}

impl Cluster {
    /// Publishes `payload` on the stream's subject with `headers`, as any NATS client allowed to
    /// could, bypassing every node.
    async fn publish_raw(&self, headers: async_nats::HeaderMap, payload: Vec<u8>) {
        let urls = self.nats.urls();
        let first = urls.split(',').next().unwrap();
        let jetstream = async_nats::jetstream::new(async_nats::connect(first).await.unwrap());
        jetstream
            .publish_with_headers("REGISTRY.events", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn start(extra: &[&str]) -> Self {
        let nats = NatsCluster::start(3);
        let dirs = tempfile::tempdir().unwrap();
        let urls = nats.urls();
        let nodes = ["a", "b", "c"]
            .iter()
            .map(|name| Node::start(&dirs.path().join(name), &urls, "REGISTRY", extra))
            .collect();
        Self {
            nats,
            nodes,
            _dirs: dirs,
        }
    }

    /// Applies the losses `N-k` for `ks`, each on node k mod 3; the last one's sequence.
    async fn spread_losses(&self, ks: std::ops::RangeInclusive<u64>) -> u64 {
        let mut last = 0;
        for k in ks {
            let node = &self.nodes[(k % 3) as usize];
            last = node.apply(loss("N-", k)).await.unwrap().sequence;
        }
        last
    }

    /// Every node's whole log once it has reached `sequence`; asserts they are identical.
    async fn identical_logs_through(&self, sequence: u64) -> Vec<pb::RegistryChange> {
        let first = self.nodes[0].log_through(sequence).await;
        for node in &self.nodes[1..] {
            assert_eq!(node.log_through(sequence).await, first);
        }
        first
    }
}

fn check_request(k: u64, min_sequence: u64) -> pb::CheckRequest {
    pb::CheckRequest {
        card: Some(card(&nth_number(k), "20150101", "")),
        min_sequence,
        nonce: Vec::new(),
    }
}

/// The report ids in a log, in order.
fn report_ids(log: &[pb::RegistryChange]) -> Vec<String> {
    log.iter()
        .map(|change| change.event.as_ref().unwrap().report_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_applied_on_one_node_fails_checks_on_the_others() {
    let cluster = Cluster::start(&[]);
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut delays = Vec::new();
    for k in 1..=20 {
        let applied = a.apply(loss("P-", k)).await.unwrap();
        assert!(!applied.duplicate);
        let written = Instant::now();
        for node in [b, c] {
            let verdict = node
                .verification()
                .await
                .check(check_request(k, applied.sequence))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(verdict.status(), pb::CardStatus::Invalid);
            assert_eq!(verdict.reason(), pb::Reason::Lost);
            assert!(verdict.sequence >= applied.sequence);
        }
        delays.push(written.elapsed());
    }
    delays.sort();
    eprintln!(
        "propagation to both other nodes: p50 {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    // Read-your-writes on the publishing node, without min_sequence.
    let own = a
        .verification()
        .await
        .check(check_request(20, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.status(), pb::CardStatus::Invalid);
    let log = cluster.identical_logs_through(20).await;
    assert_eq!(log.len(), 20);
    assert_eq!(
        log.iter().map(|change| change.sequence).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );

    // A new node bootstraps from another's online backup and replays the stream after it.
    let backup = cluster._dirs.path().join("backup");
    let taken = b.server.run(&["backup", "--to", backup.to_str().unwrap()]);
    assert!(taken.status.success(), "{taken:?}");
    let fresh = cluster._dirs.path().join("d");
    let restored = std::process::Command::new(common::BIN)
        .args(["restore", "--from", backup.to_str().unwrap(), "--data-dir"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(restored.status.success(), "{restored:?}");
    let later = a.apply(loss("P-", 21)).await.unwrap().sequence;
    let d = Node::start(&fresh, &cluster.nats.urls(), "REGISTRY", &[]);
    assert_eq!(d.log_through(later).await, a.log_through(later).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_is_either_a_single_nodes_or_a_clusters() {
    let dirs = tempfile::tempdir().unwrap();
    let single = dirs.path().join("single");
    let server = common::ChildServer::start(&single);
    let mut registry = pb::registry_client::RegistryClient::new(server.channel().await);
    registry.apply(loss("S-", 1)).await.unwrap();
    drop(server);
    // Refused before NATS is needed: nothing listens there.
    let keys = common::nats::stream_keys(dirs.path());
    let keys = keys.to_str().unwrap();
    let with_cluster = ["--cluster", "nats://127.0.0.1:9", "--cluster-keys", keys];
    let message = common::serve_refusal(&single, &with_cluster);
    assert!(
        message.contains("holds 1 events recorded by a single node"),
        "{message}"
    );

    let nats = NatsCluster::start(1);
    // A stream the NATS server refuses stops the node at start-up, with the server's reason,
    // before its data dir is bound to the stream: it can start again once the flags are right.
    let clustered = dirs.path().join("clustered");
    let urls = nats.urls();
    let mut three_replicas = vec!["--cluster", &urls, "--cluster-keys", keys];
    three_replicas.extend(["--cluster-stream", "REGISTRY", "--cluster-replicas", "3"]);
    let message = common::serve_refusal(&clustered, &three_replicas);
    assert!(
        message.contains("the NATS servers refuse it") && message.contains("replicas"),
        "{message}"
    );
    let node = Node::start(
        &clustered,
        &nats.urls(),
        "REGISTRY",
        &["--cluster-replicas", "1"],
    );
    node.apply(loss("S-", 2)).await.unwrap();
    drop(node);
    let message = common::serve_refusal(&clustered, &[]);
    assert!(
        message.contains("follows the cluster stream \"REGISTRY\""),
        "{message}"
    );
    // Nor may the offline bulk loader write into it.
    let generated = dirs.path().join("gen");
    let idguard = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .output()
            .unwrap()
    };
    let made = idguard(&[
        "gen",
        "--count",
        "10",
        "--queries",
        "1",
        "--out",
        generated.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    let imported = idguard(&[
        "import",
        generated.join("events.ndjson").to_str().unwrap(),
        "--data-dir",
        clustered.to_str().unwrap(),
    ]);
    assert!(!imported.status.success());
    let message = String::from_utf8_lossy(&imported.stderr);
    assert!(message.contains("follows the cluster stream"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_one_nats_server_loses_nothing() {
    let mut cluster = Cluster::start(&[]);
    cluster.spread_losses(1..=10).await;
    cluster.nats.servers[0].kill();
    // Writes on every node go on (each fails over to a live server, once JetStream has elected
    // new leaders), and so do checks.
    let killed = Instant::now();
    let last = cluster.spread_losses(11..=40).await;
    eprintln!(
        "30 writes after losing a NATS server: {:?}",
        killed.elapsed()
    );
    let verdict = cluster.nodes[2]
        .verification()
        .await
        .check(check_request(40, last))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.status(), pb::CardStatus::Invalid);
    cluster.nats.servers[0].restart();
    // The restarted server must now hold the stream: with another one gone, it makes the quorum.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.servers[1].kill();
    let killed = Instant::now();
    let last = cluster.spread_losses(41..=50).await;
    eprintln!("10 writes after losing another: {:?}", killed.elapsed());
    let log = cluster.identical_logs_through(last).await;
    let mut ids = report_ids(&log);
    ids.sort();
    let mut sent: Vec<String> = (1..=50).map(|k| format!("N-{k}")).collect();
    sent.sort();
    assert_eq!(ids, sent, "every acknowledged event, once each");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_during_a_write_burst_catches_up_exactly() {
    const EVENTS: usize = 6000;
    let mut cluster = Cluster::start(&[]);
    let events: Vec<pb::RegistryEvent> = (1..=EVENTS as u64).map(|k| loss("K-", k)).collect();
    let mut registry = cluster.nodes[0].registry().await;
    // Wait for the stream to exist before the burst: the first event retries until it does.
    cluster.nodes[0].apply(events[0].clone()).await.unwrap();
    let (midway, kill_now) = tokio::sync::oneshot::channel();
    let burst = tokio::spawn(async move {
        let mut acks = registry
            .submit(tokio_stream::iter(events))
            .await
            .unwrap()
            .into_inner();
        let mut received = Vec::new();
        let mut midway = Some(midway);
        while let Some(ack) = acks.next().await {
            received.push(ack.unwrap());
            if received.len() == 1000 {
                let _ = midway.take().map(|midway| midway.send(()));
            }
        }
        received
    });
    kill_now.await.unwrap();
    cluster.nodes[2].kill_and_restart();
    let acks = burst.await.unwrap();
    assert_eq!(acks.len(), EVENTS);
    assert!(acks.iter().all(|ack| ack.error.is_none()), "{acks:?}");
    let last = acks.iter().map(|ack| ack.sequence).max().unwrap();
    let log = cluster.identical_logs_through(last).await;
    assert_eq!(log.len(), EVENTS);
    // A retry sent to the restarted node within JetStream's window is told the original
    // sequence, though that message was applied before the node's restart.
    let retry = cluster.nodes[2].apply(loss("K-", 700)).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.sequence, acks[699].sequence);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_nats_answers_from_its_copy_and_catches_up() {
    let nats = NatsCluster::start(3);
    let dirs = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(nats.servers[2].port).await;
    let a = Node::start(&dirs.path().join("a"), &nats.urls(), "REGISTRY", &[]);
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let c = Node::start(&dirs.path().join("c"), &proxy.url(), "REGISTRY", &metrics);
    let first = a.apply(loss("C-", 1)).await.unwrap().sequence;
    c.log_through(first).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = a.apply(loss("C-", 2)).await.unwrap().sequence;
    let mut checks = c.verification().await;
    let stale = checks
        .check(check_request(2, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stale.status(),
        pb::CardStatus::Valid,
        "the node has not heard"
    );
    assert_eq!(stale.sequence, first, "and says how stale its answer is");
    let mut waiting = tonic::Request::new(check_request(2, second));
    waiting.set_timeout(Duration::from_secs(1));
    let refused = checks.check(waiting).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DeadlineExceeded);

    proxy.restore();
    let mut caught_up = tonic::Request::new(check_request(2, second));
    caught_up.set_timeout(Duration::from_secs(30));
    let verdict = checks.check(caught_up).await.unwrap().into_inner();
    assert_eq!(verdict.status(), pb::CardStatus::Invalid);
    assert_eq!(c.log_through(second).await, a.log_through(second).await);
    // Its lag is visible to Prometheus: the stream's sequence against its own, both sampled
    // every 2 s, meet once it has caught up.
    let url = c.metrics.as_deref().expect("metrics URL");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = common::scrape(url);
        let stream = common::sample(&exposition, "idguard_cluster_stream_sequence");
        let registry = common::sample(&exposition, "idguard_registry_sequence");
        if stream == second as f64 && registry == stream {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream}, registry {registry}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And so is the cut: whether following then restarted depends on whether the ordered
    // consumer noticed before the connection came back, but the connection was lost either way.
    let exposition = common::scrape(url);
    assert!(common::sample(&exposition, "idguard_cluster_disconnects_total") >= 1.0);
    assert_eq!(
        common::sample(&exposition, "idguard_cluster_connected"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_sent_to_different_nodes_make_one_event() {
    let cluster = Cluster::start(&["--cluster-dedup-window", "1"]);
    // The stream exists once any write went through.
    cluster.nodes[0].apply(loss("D-", 0)).await.unwrap();
    let event = loss("D-", 1);
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let (from_a, from_b, from_c) = tokio::join!(
        a.apply(event.clone()),
        b.apply(event.clone()),
        c.apply(event.clone())
    );
    let answers = [from_a.unwrap(), from_b.unwrap(), from_c.unwrap()];
    let sequence = answers[0].sequence;
    assert!(answers.iter().all(|answer| answer.sequence == sequence));
    assert_eq!(
        answers.iter().filter(|answer| !answer.duplicate).count(),
        1,
        "{answers:?}"
    );

    // Beyond JetStream's window, the stored report decides on every node.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = cluster.nodes[2].apply(event.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, sequence);
    // Another content under the same id in the same province (ids are unique per province).
    let mut changed = event.clone();
    changed.authority = "440306".into();
    let conflict = cluster.nodes[1].apply(changed).await.unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);

    let last = cluster.nodes[0]
        .apply(loss("D-", 2))
        .await
        .unwrap()
        .sequence;
    let log = cluster.identical_logs_through(last).await;
    assert_eq!(report_ids(&log), ["D-0", "D-1", "D-2"]);
    // The late duplicate was a stream message that registered nothing; the conflict, sent within
    // the window after it, was dropped by JetStream.
    assert_eq!(last, sequence + 2);
}

/// A withdrawal on the stream carries its sender's grant, and every follower decides by it when
/// the withdrawal meets its target, whichever node the target came through.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_on_the_stream_undoes_only_what_its_recorded_grant_covers() {
    use prost::Message;
    let cluster = Cluster::start(&[]);
    // The stream exists once any write went through.
    cluster.nodes[0].apply(loss("G-", 0)).await.unwrap();
    // Shenzhen's withdrawal of gz-0001, as a publishing node records it, sent before its target.
    let mut withdrawal = common::event(
        "sz-w1",
        time::macros::datetime!(2025-06-02 08:00 UTC),
        common::withdrawn("gz-0001"),
    );
    withdrawal.authority = "440305".into();
    let change = pb::RegistryChange {
        sequence: 0,
        event: Some(withdrawal),
        recorded_at: common::at(time::OffsetDateTime::now_utc()),
        recorded_by: "sz-police".into(),
        grant: Some(pb::Grant {
            scopes: vec!["4403".into()],
            permissions: vec!["report_loss".into()],
        }),
    };
    let payload = change.encode_to_vec();
    let keys = idguard::ledger::cluster::StreamKeys::read(&common::nats::stream_keys(
        cluster._dirs.path(),
    ))
    .unwrap();
    cluster
        .publish_raw(keys.seal("REGISTRY", &payload), payload)
        .await;
    // Guangzhou's theft report arrives through another node.
    let mut theft = loss("gz-000", 1);
    theft.authority = "440103".into();
    if let Some(pb::registry_event::Kind::Reported(reported)) = theft.kind.as_mut() {
        reported.kind = pb::LossKind::Stolen.into();
    }
    let target = cluster.nodes[1].apply(theft).await.unwrap().sequence;
    for node in &cluster.nodes {
        let verdict = node
            .verification()
            .await
            .check(check_request(1, target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(verdict.reason(), pb::Reason::Stolen);
        let record = node
            .registry()
            .await
            .get_record(pb::GetRecordRequest {
                id_number: nth_number(1),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(record.refused_withdrawals, [target - 1]);
    }
}

/// What a NATS client that may publish on the subject sends without a trusted node's signature is
/// refused by every node, loudly, and registers nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_message_without_a_trusted_signature_is_refused_by_every_node() {
    use prost::Message;
    let cluster = Cluster::start(&["--metrics-listen", "127.0.0.1:0"]);
    let first = cluster.nodes[0]
        .apply(loss("F-", 0))
        .await
        .unwrap()
        .sequence;
    let mut forged = loss("F-", 1);
    forged.authority = "110105".into();
    let change = pb::RegistryChange {
        sequence: 0,
        event: Some(forged),
        recorded_at: common::at(time::OffsetDateTime::now_utc()),
        recorded_by: "ops".into(),
        grant: None,
    };
    let payload = change.encode_to_vec();
    // Unsigned, then signed by a key no node trusts.
    cluster
        .publish_raw(async_nats::HeaderMap::new(), payload.clone())
        .await;
    let stranger = tempfile::tempdir().unwrap();
    let stranger_keys =
        idguard::ledger::cluster::StreamKeys::read(&common::nats::stream_keys(stranger.path()))
            .unwrap();
    cluster
        .publish_raw(stranger_keys.seal("REGISTRY", &payload), payload)
        .await;
    let last = cluster.nodes[1]
        .apply(loss("F-", 2))
        .await
        .unwrap()
        .sequence;
    assert_eq!(last, first + 3, "the forged messages took stream sequences");
    let log = cluster.identical_logs_through(last).await;
    assert_eq!(report_ids(&log), ["F-0", "F-2"]);
    for node in &cluster.nodes {
        let metrics = common::scrape(node.metrics.as_ref().unwrap());
        assert_eq!(
            common::sample(&metrics, "idguard_cluster_messages_refused_total"),
            2.0
        );
        let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap();
        assert!(
            log.contains("refused a cluster stream message that fails verification"),
            "not logged"
        );
    }
}
