//! The feeds behind `Watch` and `WatchHits`: replay a log from a sequence, then follow it live,
//! with no gap and no duplicate at the switch-over.
//!
//! The live side is a bounded broadcast shared by all watchers. A watcher subscribes *before*
//! reading the log, so every change published after its last log read is waiting in its
//! subscription; changes it already read from the log are skipped by sequence. A watcher too slow
//! for the live tail is told it lagged and goes back to the log where it stopped, so nobody is
//! dropped and no per-watcher buffer grows without bound.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};

use crate::store::{Change, Corrupt, Hit, Store, StoreError};

/// A sequence-numbered, append-only log that can be replayed and followed.
pub trait Log: Send + Sync + 'static {
    type Record: Clone + Send + Sync + 'static;
    /// The last durable sequence: every record up to it can be read.
    fn published(&self) -> u64;
    /// Records published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Self::Record>>;
    /// Up to `limit` records from `from` through `through`. Blocking.
    fn read(&self, from: u64, through: u64, limit: usize) -> Result<Vec<Self::Record>, StoreError>;
    fn sequence_of(record: &Self::Record) -> u64;
    /// Whether every sequence up to the published one holds a record, so that a hole means
    /// damage. A cluster node's event log has holes where a stream message registered nothing.
    fn gap_free(&self) -> bool {
        true
    }
}

/// The registry's event log (`Watch`).
pub struct EventFeed(pub Arc<Store>);

impl Log for EventFeed {
    type Record = Change;

    fn published(&self) -> u64 {
        self.0.log().sequence()
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Self::Record>> {
        self.0.log().subscribe()
    }

    fn read(&self, from: u64, through: u64, limit: usize) -> Result<Vec<Self::Record>, StoreError> {
        self.0.log().read(from, through, limit)
    }

    fn gap_free(&self) -> bool {
        self.0.log().stream().is_none()
    }

    fn sequence_of(change: &Self::Record) -> u64 {
        change.sequence()
    }
}

/// The hit log (`WatchHits`).
pub struct HitFeed(pub Arc<Store>);

impl Log for HitFeed {
    type Record = Hit;

    fn published(&self) -> u64 {
        self.0.hits().sequence()
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Self::Record>> {
        self.0.hits().subscribe()
    }

    fn read(&self, from: u64, through: u64, limit: usize) -> Result<Vec<Self::Record>, StoreError> {
        self.0.hits().read(from, through, limit)
    }

    fn sequence_of(hit: &Self::Record) -> u64 {
        hit.sequence()
    }
}

/// Records read from the log per blocking read.
const REPLAY_CHUNK: usize = 1024;

/// Why a feed ended before its reader hung up.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the server is shutting down: reconnect and resume from the next sequence")]
    ShuttingDown,
}

/// Why feeding stopped.
enum Stop {
    /// The reader hung up: nothing more to say.
    ReaderGone,
    /// Told to the reader as the last item.
    End(FeedError),
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Self {
        Self::End(error.into())
    }
}

type Out<R> = mpsc::Sender<Result<R, FeedError>>;

fn missing(sequence: u64) -> Stop {
    Stop::from(StoreError::from(Corrupt::missing_event(sequence)))
}

/// Sends every record from `from` (0 or 1: the start) to `out`, in order, until `out` is closed,
/// the server drains, or the store fails; the last two are sent as the final item.
pub async fn follow<L: Log>(
    log: Arc<L>,
    from: u64,
    out: Out<L::Record>,
    mut draining: watch::Receiver<bool>,
) {
    let mut next = from.max(1);
    let stop = loop {
        // Subscribe first: whatever is published after the log read below waits here.
        let mut live = log.subscribe();
        if let Err(stop) = replay(&log, &mut next, &out, &draining).await {
            break stop;
        }
        if let Err(stop) = tail::<L>(&mut live, &mut next, &out, &mut draining).await {
            break stop;
        }
    };
    if let Stop::End(error) = stop {
        let _ = out.send(Err(error)).await;
    }
}

/// Sends what the log holds from `next` up to the published sequence.
async fn replay<L: Log>(
    log: &Arc<L>,
    next: &mut u64,
    out: &Out<L::Record>,
    draining: &watch::Receiver<bool>,
) -> Result<(), Stop> {
    while *next <= log.published() {
        if *draining.borrow() {
            return Err(Stop::End(FeedError::ShuttingDown));
        }
        let (from, through) = (*next, log.published());
        // How far behind a watcher reading the log is: 0 for one that keeps up live.
        metrics::histogram!("idguard_watch_lag_events").record((through - from + 1) as f64);
        let reader = Arc::clone(log);
        let chunk = tokio::task::spawn_blocking(move || reader.read(from, through, REPLAY_CHUNK))
            .await
            .map_err(|error| StoreError::Interrupted(error.to_string()))??;
        if chunk.is_empty() {
            if log.gap_free() {
                return Err(missing(*next));
            }
            *next = through + 1;
        }
        for record in chunk {
            // In a gap-free log a hole means damage, not a reason to skip.
            let sequence = L::sequence_of(&record);
            if sequence < *next || (sequence > *next && log.gap_free()) {
                return Err(missing(*next));
            }
            *next = sequence + 1;
            out.send(Ok(record)).await.map_err(|_| Stop::ReaderGone)?;
        }
    }
    Ok(())
}

/// Sends live records until the tail outruns the reader (`Ok`: go back to the log).
async fn tail<L: Log>(
    live: &mut broadcast::Receiver<Arc<L::Record>>,
    next: &mut u64,
    out: &Out<L::Record>,
    draining: &mut watch::Receiver<bool>,
) -> Result<(), Stop> {
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            _ = draining.wait_for(|draining| *draining) => {
                return Err(Stop::End(FeedError::ShuttingDown));
            }
            // A reader that hung up is let go at once, not at the next record (hits are rare:
            // that could be hours).
            () = out.closed() => return Err(Stop::ReaderGone),
        };
        match received {
            Ok(record) if L::sequence_of(&record) < *next => {}
            Ok(record) if L::sequence_of(&record) == *next => {
                *next += 1;
                out.send(Ok(record.as_ref().clone()))
                    .await
                    .map_err(|_| Stop::ReaderGone)?;
            }
            // A gap or a lag means changes went by unseen: they are in the log (or, where the
            // log has holes, replaying says there were none).
            Ok(_) | Err(RecvError::Lagged(_)) => {
                metrics::counter!("idguard_watch_fell_behind_total").increment(1);
                return Ok(());
            }
            Err(RecvError::Closed) => return Err(Stop::End(FeedError::ShuttingDown)),
        }
    }
}
