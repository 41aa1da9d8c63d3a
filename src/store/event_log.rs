//! The event log's read side: how far it is durable, waiting for it to get further, replaying it
//! and following it live, and judging a retry against it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::writer::{self, Applied};
use super::{ApplyError, CF_EVENTS, Shared, StoreError, codec, stored_event};
use crate::event::ValidEvent;
use crate::proto::v1 as pb;
use crate::registry::Recorder;

/// An accepted event as the log recorded it. Its recorded form (protobuf, as stored) is the
/// store's: readers ask for what they need, and the wire takes it whole, exactly as recorded
/// (`Watch`, `GetRecord`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change(pub(super) pb::RegistryChange);

impl Change {
    pub fn sequence(&self) -> u64 {
        self.0.sequence
    }
}

impl From<Change> for pb::RegistryChange {
    fn from(change: Change) -> Self {
        change.0
    }
}

/// The event log of a [`super::Store`].
#[derive(Clone, Copy)]
pub struct EventLog<'s>(pub(super) &'s Shared);

impl EventLog<'_> {
    /// The highest sequence whose event is durable and visible to checks.
    pub fn sequence(&self) -> u64 {
        self.0.sequence.load(Ordering::Acquire)
    }

    /// Resolves once the published sequence is at least `sequence`.
    pub async fn reached(&self, sequence: u64) {
        let mut published = self.0.published.subscribe();
        // The sender lives as long as the store, so waiting cannot fail while `self` exists.
        let _ = published.wait_for(|&published| published >= sequence).await;
    }

    /// Live changes from now on, each sent once durable and visible, in sequence order. A
    /// receiver that falls more than a few thousand changes behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.0.changes.subscribe()
    }

    /// Up to `limit` recorded events from sequence `from` through `through`, in order. Blocking.
    pub fn read(&self, from: u64, through: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        read_log(self.0, CF_EVENTS, from, through, limit, Change)
    }

    /// The recorded events with these sequences, in order. Blocking.
    pub fn get(&self, sequences: &[u64]) -> Result<Vec<Change>, StoreError> {
        sequences
            .iter()
            .map(|&sequence| stored_event(&self.0.db, sequence).map(Change))
            .collect()
    }

    /// The cluster stream the log follows, if it is bound to one: its sequences are the
    /// stream's, so a duplicate or refused stream message leaves a hole.
    pub fn stream(&self) -> Option<&str> {
        self.0.stream.get().map(String::as_str)
    }

    /// What `valid` amounts to if its `report_id` is in use, as the writer judges it: a retry
    /// (the original's sequence) or a conflict; `None` for the id's first use. Blocking.
    pub fn judge_retry(
        &self,
        valid: &ValidEvent,
        recorder: &Recorder,
    ) -> Result<Option<Applied>, ApplyError> {
        writer::judge_retry(self.0, &valid.report_key(), valid, recorder)
    }
}

/// Up to `limit` records of a sequence-keyed log, from `from` through `through`, each decoded
/// and then made a `R`. Blocking.
pub(super) fn read_log<T: prost::Message + Default, R>(
    shared: &Shared,
    family: &'static str,
    from: u64,
    through: u64,
    limit: usize,
    record: fn(T) -> R,
) -> Result<Vec<R>, StoreError> {
    let mut log = shared.db.raw_iterator_cf(shared.cf(family));
    log.seek(codec::sequence_key(from));
    let mut records = Vec::new();
    while let (Some(key), Some(value)) = (log.key(), log.value()) {
        if codec::decode_sequence(key)? > through || records.len() == limit {
            break;
        }
        records.push(record(codec::decode_record(family, value)?));
        log.next();
    }
    log.status()?;
    Ok(records)
}
