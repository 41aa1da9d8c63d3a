//! Feed throughput and latency on this machine, end to end over real gRPC against a real store
//! with WAL sync on: durable events per second through `Submit` (one stream and several) and
//! through concurrent `Apply` callers, and the time from an ack to the change's arrival on a
//! `Watch`. Client and server share the machine, as they do in the tests.
//!
//! Run: `cargo bench --bench feed` (with the Makefile's `CARGO_TARGET_DIR`); `FEED_EVENTS`
//! scales the event counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idguard::config::ServeConfig;
use idguard::proto::timestamp;
use idguard::proto::v1::registry_client::RegistryClient;
use idguard::proto::v1::{self as pb, registry_event::Kind};
use idguard::server::Application;
use time::macros::datetime;
use tonic::transport::Channel;

/// A distinct valid loss report for every `k`.
fn report(k: u64) -> pb::RegistryEvent {
    let id_number = idguard::tools::synthetic::nth_number(k);
    pb::RegistryEvent {
        report_id: format!("bench-{k}"),
        authority: "440305".into(),
        occurred_at: Some(timestamp(datetime!(2025-06-01 08:00 UTC))),
        kind: Some(Kind::Reported(pb::CardReported {
            card: Some(pb::CardRef {
                id_number,
                issue_date: "20150101".into(),
                expiry_date: String::new(),
            }),
            kind: pb::LossKind::Lost.into(),
        })),
    }
}

async fn start() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServeConfig::local(dir.path()).expect("local settings");
    let application = Application::build(&config).await.expect("server builds");
    let url = format!("http://{}", application.address());
    tokio::spawn(application.run_until(std::future::pending()));
    (url, dir)
}

async fn client(url: &str) -> RegistryClient<Channel> {
    RegistryClient::connect(url.to_owned())
        .await
        .expect("connect")
}

/// Durable events per second through `streams` concurrent `Submit` streams.
async fn submit_rate(streams: u64, events: u64) -> f64 {
    let (url, _dir) = start().await;
    let per_stream = events / streams;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|stream| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = client(&url).await;
                let first = stream * per_stream;
                let batch = (first..first + per_stream).map(report);
                let mut acks = client
                    .submit(tokio_stream::iter(batch))
                    .await
                    .expect("submit")
                    .into_inner();
                let mut acked = 0;
                while let Some(ack) = acks.message().await.expect("ack") {
                    assert!(ack.error.is_none(), "{ack:?}");
                    acked += 1;
                }
                acked
            })
        })
        .collect();
    let mut acked = 0u64;
    for task in tasks {
        acked += task.await.expect("stream task");
    }
    acked as f64 / started.elapsed().as_secs_f64()
}

/// Durable events per second from `callers` concurrent `Apply` callers.
async fn apply_rate(callers: u64, events: u64) -> f64 {
    let (url, _dir) = start().await;
    let per_caller = events / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = client(&url).await;
                for k in caller * per_caller..(caller + 1) * per_caller {
                    client.apply(report(k)).await.expect("apply");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller task");
    }
    (per_caller * callers) as f64 / started.elapsed().as_secs_f64()
}

/// Time from each of `probes` sequential `Apply` acks to the change's arrival on a `Watch`,
/// optionally while a `Submit` stream writes at full speed beside them.
async fn ack_to_watch(probes: u64, under_load: bool) -> Vec<Duration> {
    let (url, _dir) = start().await;
    let mut watcher = client(&url).await;
    let mut changes = watcher
        .watch(pb::WatchRequest { from_sequence: 0 })
        .await
        .expect("watch")
        .into_inner();
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let watching = tokio::spawn({
        let arrivals = Arc::clone(&arrivals);
        async move {
            while let Ok(Some(change)) = changes.message().await {
                let arrived = Instant::now();
                arrivals
                    .lock()
                    .expect("arrivals")
                    .insert(change.sequence, arrived);
            }
        }
    });
    let load = under_load.then(|| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let events = (1_000_000..1_200_000).map(report);
            let mut acks = client
                .submit(tokio_stream::iter(events))
                .await
                .expect("submit")
                .into_inner();
            while acks.message().await.expect("ack").is_some() {}
        })
    });
    let mut writer = client(&url).await;
    let mut acks = Vec::with_capacity(probes as usize);
    for k in 0..probes {
        let sequence = writer
            .apply(report(k))
            .await
            .expect("apply")
            .into_inner()
            .sequence;
        acks.push((sequence, Instant::now()));
    }
    if let Some(load) = load {
        load.abort();
    }
    // Give the watcher a moment to receive the last probes, then end the watch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watching.abort();
    let arrivals = arrivals.lock().expect("arrivals");
    let mut latencies: Vec<Duration> = acks
        .iter()
        .map(|(sequence, ack)| {
            arrivals.get(sequence).map_or(Duration::MAX, |arrival| {
                arrival.saturating_duration_since(*ack)
            })
        })
        .collect();
    latencies.sort_unstable();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: run either way.
    let scale: u64 = std::env::var("FEED_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("feed benchmark, {scale} events per throughput run, WAL sync on");
        println!(
            "Submit, 1 stream:        {:>9.0} durable events/s",
            submit_rate(1, scale).await
        );
        println!(
            "Submit, 4 streams:       {:>9.0} durable events/s",
            submit_rate(4, scale).await
        );
        println!(
            "Apply, 64 callers:       {:>9.0} durable events/s",
            apply_rate(64, scale / 4).await
        );
        println!(
            "Apply, 1 caller:         {:>9.0} durable events/s",
            apply_rate(1, 2000).await
        );
        for (label, under_load) in [("idle", false), ("under Submit load", true)] {
            let latencies = ack_to_watch(2000, under_load).await;
            println!(
                "ack -> Watch, {label}: p50 {:?}  p99 {:?}  max {:?}",
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                percentile(&latencies, 1.0)
            );
        }
    });
}
