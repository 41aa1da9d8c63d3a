//! `idguard bench`: a load harness that drives a running server over real gRPC from a generated
//! workload (`queries.csv`), in unary, batch or stream mode, closed-loop or at a fixed rate, and
//! reports throughput and latency percentiles from an HDR histogram, as text, JSON, or a
//! latency-versus-throughput SVG over a sweep of rates.
//!
//! At a fixed rate, a call that could not be sent on time because the worker was still waiting
//! for the server is measured from when it was *due*, so a server that falls behind is charged
//! for the wait (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::event_file::QueryRecord;
use crate::proto::v1::{self as pb, verification_client::VerificationClient};

/// How checks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `Check` per card.
    Unary,
    /// `CheckBatch` calls of `batch_size` cards.
    Batch,
    /// One `CheckStream` per worker, `window` requests in flight on each.
    Stream,
}

/// One load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadPlan {
    pub mode: Mode,
    pub connections: usize,
    /// Workers (concurrent callers or streams), spread over the connections.
    pub workers: usize,
    pub batch_size: usize,
    pub window: usize,
    pub duration: Duration,
    /// Checks per second to offer; `None`: closed loop, as fast as answers come.
    pub rate: Option<f64>,
}

/// What a run measured. Latencies are per call (a batch is one call), in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub plan: LoadPlan,
    pub checks: u64,
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub checks_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connecting to {0}: {1}")]
    Connect(String, tonic::transport::Error),
    #[error("the workload is empty")]
    EmptyWorkload,
    #[error("reading the workload: {0}")]
    Workload(#[from] csv::Error),
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; these bounds are valid, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Reads a `queries.csv` workload into wire cards.
pub fn read_workload(path: &std::path::Path) -> Result<Vec<pb::CardRef>, LoadError> {
    let cards: Vec<pb::CardRef> = csv::Reader::from_path(path)?
        .deserialize::<QueryRecord>()
        .map(|query| {
            query.map(|query| pb::CardRef {
                id_number: query.id_number,
                issue_date: query.issue_date,
                expiry_date: query.expiry_date,
            })
        })
        .collect::<Result<_, _>>()?;
    if cards.is_empty() {
        return Err(LoadError::EmptyWorkload);
    }
    Ok(cards)
}

/// What one worker counted.
struct Tally {
    latencies: Histogram<u64>,
    checks: u64,
    calls: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latencies: new_histogram(),
            checks: 0,
            calls: 0,
            errors: 0,
        }
    }

    fn record(&mut self, started: Instant, checks: usize, ok: bool) {
        let micros = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = self.latencies.record(micros);
        self.calls += 1;
        if ok {
            self.checks += checks as u64;
        } else {
            self.errors += 1;
        }
    }
}

/// Paces a worker: `None` for closed loop, else the instant each next call is due.
struct Pace {
    interval: Option<Duration>,
    next: Instant,
}

impl Pace {
    fn new(plan: &LoadPlan, checks_per_call: usize, worker: usize) -> Self {
        let interval = plan.rate.map(|rate| {
            let calls_per_second = rate / plan.workers as f64 / checks_per_call as f64;
            Duration::from_secs_f64(1.0 / calls_per_second.max(1e-9))
        });
        // Spread the workers' first calls over one interval.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(worker as f64 / plan.workers as f64)
        });
        Self {
            interval,
            next: Instant::now() + offset,
        }
    }

    /// Waits until the next call is due and returns the instant latency is measured from: the
    /// due time when the worker is behind (the server held it up), else the actual send time, so
    /// that the timer's own coarseness is not charged to the server.
    async fn due(&mut self) -> Instant {
        let Some(interval) = self.interval else {
            return Instant::now();
        };
        let due = self.next;
        self.next += interval;
        if Instant::now() >= due {
            return due;
        }
        tokio::time::sleep_until(due.into()).await;
        Instant::now()
    }
}

/// Walks the workload round-robin, each worker from its own starting point.
struct Cursor {
    cards: Arc<Vec<pb::CardRef>>,
    next: usize,
}

impl Cursor {
    fn take(&mut self, count: usize) -> Vec<pb::CardRef> {
        let chosen = (0..count)
            .map(|n| self.cards[(self.next + n) % self.cards.len()].clone())
            .collect();
        self.next = (self.next + count) % self.cards.len();
        chosen
    }
}

async fn run_worker(
    client: VerificationClient<Channel>,
    plan: Arc<LoadPlan>,
    cards: Arc<Vec<pb::CardRef>>,
    worker: usize,
    until: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut cursor = Cursor {
        next: worker * 7919 % cards.len(),
        cards,
    };
    match plan.mode {
        Mode::Unary | Mode::Batch => {
            let mut client = client;
            let per_call = if plan.mode == Mode::Batch {
                plan.batch_size
            } else {
                1
            };
            let mut pace = Pace::new(&plan, per_call, worker);
            while Instant::now() < until {
                let mut chosen = cursor.take(per_call);
                let started = pace.due().await;
                let ok = if plan.mode == Mode::Unary {
                    let card = chosen.pop();
                    client
                        .check(pb::CheckRequest {
                            nonce: Vec::new(),
                            card,
                            min_sequence: 0,
                        })
                        .await
                        .is_ok()
                } else {
                    client
                        .check_batch(pb::CheckBatchRequest {
                            nonce: Vec::new(),
                            cards: chosen,
                            min_sequence: 0,
                        })
                        .await
                        .is_ok()
                };
                tally.record(started, per_call, ok);
            }
        }
        Mode::Stream => {
            let mut client = client;
            let (requests, outgoing) = mpsc::channel(plan.window);
            let (sent_at, mut in_flight) = mpsc::channel::<Instant>(plan.window);
            let Ok(response) = client.check_stream(ReceiverStream::new(outgoing)).await else {
                tally.errors += 1;
                return tally;
            };
            let mut responses = response.into_inner();
            let sender = tokio::spawn({
                let plan = Arc::clone(&plan);
                async move {
                    let mut pace = Pace::new(&plan, 1, worker);
                    while Instant::now() < until {
                        let card = cursor.take(1).pop();
                        let due = pace.due().await;
                        // The window: wait for room before sending.
                        if sent_at.send(due).await.is_err()
                            || requests
                                .send(pb::CheckRequest {
                                    nonce: Vec::new(),
                                    card,
                                    min_sequence: 0,
                                })
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                }
            });
            while let Some(started) = in_flight.recv().await {
                match responses.message().await {
                    Ok(Some(_)) => tally.record(started, 1, true),
                    _ => {
                        tally.errors += 1;
                        break;
                    }
                }
            }
            let _ = sender.await;
        }
    }
    tally
}

/// Runs one load plan against the server at `server` (TLS settings included).
pub async fn run(
    server: &Endpoint,
    plan: LoadPlan,
    cards: Arc<Vec<pb::CardRef>>,
) -> Result<LoadReport, LoadError> {
    let mut channels = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        let channel = server
            .clone()
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|error| LoadError::Connect(server.uri().to_string(), error))?;
        channels.push(channel);
    }
    let plan = Arc::new(plan);
    let started = Instant::now();
    let until = started + plan.duration;
    let workers: Vec<_> = (0..plan.workers.max(1))
        .map(|worker| {
            let client = VerificationClient::new(channels[worker % channels.len()].clone())
                .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES);
            tokio::spawn(run_worker(
                client,
                Arc::clone(&plan),
                Arc::clone(&cards),
                worker,
                until,
            ))
        })
        .collect();
    let mut total = Tally::new();
    for worker in workers {
        if let Ok(tally) = worker.await {
            let _ = total.latencies.add(&tally.latencies);
            total.checks += tally.checks;
            total.calls += tally.calls;
            total.errors += tally.errors;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let quantile = |q| total.latencies.value_at_quantile(q) as f64;
    Ok(LoadReport {
        plan: Arc::unwrap_or_clone(plan),
        checks: total.checks,
        calls: total.calls,
        errors: total.errors,
        seconds,
        checks_per_second: total.checks as f64 / seconds,
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: total.latencies.max() as f64,
    })
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} x{} workers on {} connections{}: {:.0} checks/s ({} calls, {} errors, {:.1} s); per call p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            self.plan.mode,
            self.plan.workers,
            self.plan.connections,
            self.plan.rate.map_or(String::new(), |rate| format!(
                " at {rate:.0} checks/s offered"
            )),
            self.checks_per_second,
            self.calls,
            self.errors,
            self.seconds,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// A latency-versus-throughput plot of a sweep, as SVG: p50 and p99 per call against checks/s,
/// with latency on a log scale (a sweep's last points, near saturation, are orders of magnitude
/// above its first).
pub fn svg_plot(title: &str, reports: &[LoadReport]) -> String {
    use std::fmt::Write as _;
    let (width, height, margin) = (720.0, 420.0, 70.0);
    // A closed-loop run's latency is not comparable with a fixed rate's (its callers wait for
    // answers before calling again), so the fixed-rate runs of a sweep are drawn alone.
    let fixed_rate: Vec<&LoadReport> = reports.iter().filter(|r| r.plan.rate.is_some()).collect();
    let mut points = if fixed_rate.is_empty() {
        reports.iter().collect()
    } else {
        fixed_rate
    };
    points.sort_by(|a, b| a.checks_per_second.total_cmp(&b.checks_per_second));
    let max_x = points
        .iter()
        .map(|r| r.checks_per_second)
        .fold(1.0, f64::max)
        * 1.05;
    let latencies = points.iter().flat_map(|r| [r.p50_us, r.p99_us]);
    let decade = |v: f64| v.max(1.0).log10();
    let low = latencies
        .clone()
        .map(decade)
        .fold(f64::MAX, f64::min)
        .floor();
    let high = latencies
        .map(decade)
        .fold(0.0, f64::max)
        .ceil()
        .max(low + 1.0);
    let x = |v: f64| margin + v / max_x * (width - 2.0 * margin);
    let y = |v: f64| height - margin - (decade(v) - low) / (high - low) * (height - 2.0 * margin);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{margin}" y="24" font-size="15">{title}</text>
<line x1="{margin}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{bottom}" stroke="black"/>
<text x="{right}" y="{below}" text-anchor="end">checks/s</text>
"#,
        bottom = height - margin,
        right = width - margin,
        below = height - margin + 36.0,
    );
    // Gridlines: every decade of latency, and every quarter of the throughput axis.
    for exponent in (low as i32)..=(high as i32) {
        let at = y(10f64.powi(exponent));
        let label = match exponent {
            e if e < 3 => format!("{} µs", 10u64.pow(e.max(0) as u32)),
            e if e < 6 => format!("{} ms", 10u64.pow(e as u32 - 3)),
            e => format!("{} s", 10u64.pow(e as u32 - 6)),
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{margin}" y1="{at:.1}" x2="{}" y2="{at:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            width - margin,
            margin - 6.0,
            at + 4.0,
        );
    }
    for quarter in 1..=4 {
        let value = max_x / 1.05 * f64::from(quarter) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{value:.0}</text>"#,
            x(value),
            height - margin + 16.0,
        );
    }
    for (colour, pick) in [
        (
            "#c0392b",
            (|r: &LoadReport| r.p99_us) as fn(&LoadReport) -> f64,
        ),
        ("#2980b9", |r: &LoadReport| r.p50_us),
    ] {
        let line: Vec<String> = points
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.checks_per_second), y(pick(r))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for point in &line {
            let (cx, cy) = point.split_once(',').unwrap_or_default();
            let _ = writeln!(
                svg,
                r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>"#
            );
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{right}" y="{margin}" text-anchor="end" fill="#c0392b">p99 per call</text>
<text x="{right}" y="{below}" text-anchor="end" fill="#2980b9">p50 per call</text>
</svg>
"##,
        right = width - margin,
        below = margin + 16.0,
    );
    svg
}
