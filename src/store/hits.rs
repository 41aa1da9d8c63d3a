//! The hit log: every check that found a lost, stolen, revoked or cancelled card, numbered in
//! order and WAL-synced before the checker is answered, so that police are never told less than a
//! bank was.
//!
//! Like the event writer, one thread commits whatever has queued as one synced batch; it is
//! separate so that a burst of hits never waits behind a burst of events, or the reverse.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prost::Message;
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::event_log::read_log;
use super::writer::drain_in_groups;
use super::{CF_HITS, Shared, StoreError, codec};
use crate::proto::{self, v1 as pb};
use time::OffsetDateTime;

/// A check that found a lost, stolen, revoked or cancelled card, as the hit log records it. Its
/// recorded form (protobuf, as stored) is the store's; `WatchHits` sends it whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit(pb::Hit);

impl Hit {
    /// A hit of `principal` at `terminal` (empty without one) presenting `card`, answered at
    /// `checked_at` with `verdict`, the whole verdict as delivered; the log numbers it.
    pub fn new(
        principal: String,
        terminal: String,
        card: Option<pb::CardRef>,
        verdict: pb::CheckResponse,
        checked_at: OffsetDateTime,
    ) -> Self {
        Self(pb::Hit {
            sequence: 0,
            principal,
            terminal,
            card,
            verdict: Some(verdict),
            checked_at: Some(proto::timestamp(checked_at)),
        })
    }

    /// Its place in the hit log (0 until recorded).
    pub fn sequence(&self) -> u64 {
        self.0.sequence
    }
}

impl From<Hit> for pb::Hit {
    fn from(hit: Hit) -> Self {
        hit.0
    }
}

/// The hit log of a [`super::Store`].
#[derive(Clone, Copy)]
pub struct HitLog<'s> {
    pub(super) shared: &'s Shared,
    /// The hit writer; gone once the store is closing.
    pub(super) writer: Option<&'s mpsc::Sender<HitSubmission>>,
}

impl HitLog<'_> {
    /// Records `hits`; resolves once they are durable and sent to watchers.
    pub async fn record(&self, hits: Vec<Hit>) -> Result<(), StoreError> {
        let closed = || StoreError::Interrupted("the registry is shutting down".into());
        let writer = self.writer.ok_or_else(closed)?;
        let (reply, outcome) = oneshot::channel();
        writer
            .send(HitSubmission { hits, reply })
            .await
            .map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// The last durable hit's sequence.
    pub fn sequence(&self) -> u64 {
        self.shared.hit_sequence.load(Ordering::Acquire)
    }

    /// New hits from now on, once durable, in order (see [`super::EventLog::subscribe`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Hit>> {
        self.shared.hits.subscribe()
    }

    /// Up to `limit` recorded hits from hit sequence `from` through `through`. Blocking.
    pub fn read(&self, from: u64, through: u64, limit: usize) -> Result<Vec<Hit>, StoreError> {
        read_log(self.shared, CF_HITS, from, through, limit, Hit)
    }
}

/// The default column family's key a group of hit-log submissions without hits writes.
const SYNC_MARKER_KEY: &[u8] = b"idguard.hit_sync";

/// Hits of one check call waiting for the hit writer; none for a check that only waits as long
/// as a hit would.
pub(super) struct HitSubmission {
    pub hits: Vec<Hit>,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The hit writer thread's loop: runs until every sender is gone.
pub(super) fn run(shared: &Shared, queue: mpsc::Receiver<HitSubmission>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    drain_in_groups(queue, |group| commit(shared, &sync, group));
}

fn commit(shared: &Shared, sync: &WriteOptions, group: Vec<HitSubmission>) {
    let mut next = shared.hit_sequence.load(Ordering::Acquire) + 1;
    let mut batch = WriteBatch::default();
    let mut numbered = Vec::new();
    let mut replies = Vec::with_capacity(group.len());
    for submission in group {
        for mut hit in submission.hits {
            hit.0.sequence = next;
            next += 1;
            batch.put_cf(
                shared.cf(CF_HITS),
                codec::sequence_key(next - 1),
                hit.0.encode_to_vec(),
            );
            numbered.push(hit);
        }
        replies.push(submission.reply);
    }
    if numbered.is_empty() {
        // Only checks that wait as long as a hit would (see the verification service): the same
        // synced write, of a marker, so that they wait exactly as long.
        batch.put(SYNC_MARKER_KEY, next.to_be_bytes());
    }
    let outcome = shared.db.write_opt(batch, sync).map_err(StoreError::from);
    if outcome.is_ok() {
        metrics::counter!("idguard_hits_recorded_total").increment(numbered.len() as u64);
        shared.hit_sequence.store(next - 1, Ordering::Release);
        for hit in numbered {
            // No auditor listening is fine.
            let _ = shared.hits.send(Arc::new(hit));
        }
    } else {
        shared.writable.store(false, Ordering::Release);
        tracing::error!(?outcome, "recording hits failed");
    }
    for reply in replies {
        // A checker that gave up waiting is no reason to stop.
        let _ = reply.send(outcome.clone());
    }
}
