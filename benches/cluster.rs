//! Cluster figures on this machine: write throughput through a three-server JetStream cluster (R3)
//! against a single node, side by side in one run, and how long an event takes from being sent to
//! node A until node C can see it. Run with `cargo bench --bench cluster` (needs `nats-server`);
//! `IDGUARD_BENCH_EVENTS` sets the events per write run (default 20000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::nats::{NatsCluster, Node};
use common::{ChildServer, loss};
use idguard::proto::v1 as pb;
use pb::registry_client::RegistryClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Sends `events` on one `Submit` stream and returns events per second once every ack is in.
async fn submit_rate(mut registry: RegistryClient<Channel>, events: Vec<pb::RegistryEvent>) -> f64 {
    let count = events.len();
    let started = Instant::now();
    let acks: Vec<pb::SubmitAck> = registry
        .submit(tokio_stream::iter(events))
        .await
        .expect("submit")
        .into_inner()
        .map(|ack| ack.expect("ack"))
        .collect()
        .await;
    assert!(acks.iter().all(|ack| ack.error.is_none()));
    count as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let events: u64 = std::env::var("IDGUARD_BENCH_EVENTS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(20_000);
    let dirs = tempfile::tempdir().expect("temp dir");
    let nats = NatsCluster::start(3);
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|name| Node::start(&dirs.path().join(name), &nats.urls(), "BENCH", &[]))
        .collect();
    let single = ChildServer::start(&dirs.path().join("single"));
    // The stream exists once one write went through.
    nodes[0].apply(loss("warm-", 0)).await.expect("first write");

    println!("write throughput, {events} events per Submit stream (events/s):");
    for round in 1..=2 {
        let batch = |prefix: &str| {
            (1..=events)
                .map(|k| loss(&format!("{prefix}{round}-"), k))
                .collect()
        };
        let alone = submit_rate(RegistryClient::new(single.channel().await), batch("s")).await;
        let one = submit_rate(nodes[0].registry().await, batch("c")).await;
        let mut streams = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let registry = node.registry().await;
            let prefix = format!("n{i}-");
            streams.push(tokio::spawn(submit_rate(registry, batch(&prefix))));
        }
        let mut aggregate = 0.0;
        for stream in streams {
            aggregate += stream.await.expect("stream");
        }
        println!(
            "  round {round}: single node {alone:.0}; cluster, one stream to one node {one:.0}; \
             cluster, one stream to each of three nodes {aggregate:.0} in all"
        );
    }

    // Propagation: from sending an event to A (one Apply at a time) until C's Watch has it.
    let samples = 1000;
    let current = nodes[2]
        .verification()
        .await
        .check(pb::CheckRequest {
            card: Some(common::card(&common::nth_number(1), "20150101", "")),
            min_sequence: 0,
            nonce: Vec::new(),
        })
        .await
        .expect("check")
        .into_inner()
        .sequence;
    let mut seen = nodes[2]
        .registry()
        .await
        .watch(pb::WatchRequest {
            from_sequence: current + 1,
        })
        .await
        .expect("watch")
        .into_inner();
    let seen_at = tokio::spawn(async move {
        let mut arrivals = HashMap::new();
        while arrivals.len() < samples {
            let change = seen.message().await.expect("watch").expect("watch");
            let probe = change
                .event
                .as_ref()
                .expect("event")
                .report_id
                .starts_with("prop-");
            if probe {
                arrivals.insert(change.sequence, Instant::now());
            }
        }
        arrivals
    });
    let mut registry = nodes[0].registry().await;
    let mut sent = Vec::new();
    for k in 1..=samples as u64 {
        let started = Instant::now();
        let applied = registry
            .apply(loss("prop-", k))
            .await
            .expect("apply")
            .into_inner();
        sent.push((applied.sequence, started, started.elapsed()));
    }
    let arrivals = seen_at.await.expect("watcher");
    let mut acked: Vec<Duration> = sent.iter().map(|(_, _, ack)| *ack).collect();
    let mut visible: Vec<Duration> = sent
        .iter()
        .map(|(sequence, started, _)| arrivals[sequence].duration_since(*started))
        .collect();
    acked.sort();
    visible.sort();
    println!(
        "propagation over {samples} events: acknowledged by A p50 {:?} p99 {:?}; visible on C \
         p50 {:?} p99 {:?} (both from sending)",
        percentile(&acked, 0.5),
        percentile(&acked, 0.99),
        percentile(&visible, 0.5),
        percentile(&visible, 0.99)
    );
}
