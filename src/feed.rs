//! The change feed behind `Watch`: replays the event log from a sequence, then follows live
//! changes, with no gap and no duplicate at the switch-over.
//!
//! The live side is a bounded broadcast shared by all watchers. A watcher subscribes *before*
//! reading the log, so every change published after its last log read is waiting in its
//! subscription; changes it already read from the log are skipped by sequence. A watcher too slow
//! for the live tail is told it lagged and goes back to the log where it stopped, so nobody is
//! dropped and no per-watcher buffer grows without bound.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};

use crate::proto::v1 as pb;
use crate::store::{Corrupt, Store, StoreError};

/// Events read from the log per blocking read.
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

type Out = mpsc::Sender<Result<pb::RegistryChange, FeedError>>;

fn missing(sequence: u64) -> Stop {
    Stop::from(StoreError::from(Corrupt::missing_event(sequence)))
}

/// Sends every change from `from` (0 or 1: the start) to `out`, in order, until `out` is closed,
/// the server drains, or the store fails; the last two are sent as the final item.
pub async fn follow(store: Arc<Store>, from: u64, out: Out, mut draining: watch::Receiver<bool>) {
    let mut next = from.max(1);
    let stop = loop {
        // Subscribe first: whatever is published after the log read below waits here.
        let mut live = store.subscribe_changes();
        if let Err(stop) = replay(&store, &mut next, &out, &draining).await {
            break stop;
        }
        if let Err(stop) = tail(&mut live, &mut next, &out, &mut draining).await {
            break stop;
        }
    };
    if let Stop::End(error) = stop {
        let _ = out.send(Err(error)).await;
    }
}

/// Sends what the log holds from `next` up to the published sequence.
async fn replay(
    store: &Arc<Store>,
    next: &mut u64,
    out: &Out,
    draining: &watch::Receiver<bool>,
) -> Result<(), Stop> {
    while *next <= store.sequence() {
        if *draining.borrow() {
            return Err(Stop::End(FeedError::ShuttingDown));
        }
        let (from, through) = (*next, store.sequence());
        let chunk = store
            .read(move |store| store.changes(from, through, REPLAY_CHUNK))
            .await?;
        if chunk.is_empty() {
            return Err(missing(*next));
        }
        for change in chunk {
            // Published sequences are all in the log; a hole means damage, not a reason to skip.
            if change.sequence != *next {
                return Err(missing(*next));
            }
            *next = change.sequence + 1;
            out.send(Ok(change)).await.map_err(|_| Stop::ReaderGone)?;
        }
    }
    Ok(())
}

/// Sends live changes until the tail outruns the reader (`Ok`: go back to the log).
async fn tail(
    live: &mut broadcast::Receiver<Arc<pb::RegistryChange>>,
    next: &mut u64,
    out: &Out,
    draining: &mut watch::Receiver<bool>,
) -> Result<(), Stop> {
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            _ = draining.wait_for(|draining| *draining) => {
                return Err(Stop::End(FeedError::ShuttingDown));
            }
        };
        match received {
            Ok(change) if change.sequence < *next => {}
            Ok(change) if change.sequence == *next => {
                *next += 1;
                out.send(Ok(change.as_ref().clone()))
                    .await
                    .map_err(|_| Stop::ReaderGone)?;
            }
            // A gap or a lag means changes went by unseen: they are in the log.
            Ok(_) | Err(RecvError::Lagged(_)) => return Ok(()),
            Err(RecvError::Closed) => return Err(Stop::End(FeedError::ShuttingDown)),
        }
    }
}
