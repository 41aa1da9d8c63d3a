//! The single writer: folds accepted events into the stored state and commits them in groups.
//!
//! Submissions queue on a bounded channel. The writer takes whatever has queued (up to
//! [`MAX_GROUP`]), applies each in order to an overlay of the state it reads, writes the whole
//! group as one `WriteBatch` with a synced WAL, and only then updates the index, publishes the new
//! sequence and answers each submitter. One WAL sync serves every event of the group, and a failed
//! write answers every event of the group with an error and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prost::Message;
use rocksdb::{WriteBatch, WriteOptions};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, ReportSlot};
use super::{
    ApplyError, CF_CITIZENS, CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, Change, STREAM_POSITION_KEY,
    Shared, StoreError,
};
use crate::card::{CitizenNumber, FieldError, china_today};
use crate::event::{ReportId, ReportKey, ValidEvent};
use crate::proto::{self, v1 as pb};
use crate::registry::tally::division_of;
use crate::registry::{
    CitizenState, Content, Contents, DailyTally, Denial, Entry, Fact, FirstUse, Grant, IdUse, Memo,
    Recorder, ReportIds, Summary, Target, Touches, awaited_withdrawal, judge_report_id,
    what_it_touches, withdrawal_target,
};

/// The most submissions committed by one WAL sync.
const MAX_GROUP: usize = 1024;
/// The most withdrawals that may wait for one `report_id` that has not arrived.
pub const MAX_WAITING_WITHDRAWALS: usize = 16;

/// The outcome of applying an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The event's sequence: newly assigned, or the original one for a duplicate.
    pub sequence: u64,
    /// The same `report_id` had been accepted before with the same content; nothing changed.
    pub duplicate: bool,
}

/// Where an event goes in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// A single node: the next sequence, recorded now.
    Next,
    /// A cluster node: the sequence the shared stream gave it, recorded when it was published.
    /// Whatever its outcome (even a duplicate or a refusal, which register nothing), the node has
    /// applied the stream up to here, and says so in the same write.
    Stream {
        sequence: u64,
        recorded_at: OffsetDateTime,
    },
}

/// One event waiting for the writer, and where to send its outcome.
pub(super) struct Submission {
    /// The event; `None` for a stream message that is none, which registers nothing, though a
    /// cluster node has still applied the stream up to it (its outcome is then the message's
    /// place, as if applied).
    pub event: Option<ValidEvent>,
    /// The principal that sent it, and what it was allowed.
    pub recorder: Recorder,
    pub placement: Placement,
    pub reply: oneshot::Sender<Result<Applied, ApplyError>>,
}

/// The writer thread's loop: runs until every sender is gone.
pub(super) fn run(shared: &Shared, queue: mpsc::Receiver<Submission>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    drain_in_groups(queue, |group| commit_group(shared, &sync, group));
}

/// Hands `commit` whatever has queued, up to [`MAX_GROUP`] at a time, until every sender is gone:
/// the group commit that lets one WAL sync serve many callers.
pub(super) fn drain_in_groups<T>(mut queue: mpsc::Receiver<T>, mut commit: impl FnMut(Vec<T>)) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(submission) => group.push(submission),
                Err(_) => break,
            }
        }
        commit(group);
    }
}

fn commit_group(shared: &Shared, sync: &WriteOptions, group: Vec<Submission>) {
    let first_new = shared.sequence.load(Ordering::Acquire) + 1;
    let mut overlay = Overlay::new(shared, first_new, OffsetDateTime::now_utc());
    let outcomes: Vec<_> = group
        .iter()
        .map(|submission| match &submission.event {
            Some(valid) => overlay.apply(valid, &submission.recorder, submission.placement),
            None => overlay
                .place(submission.placement)
                .map(|(sequence, _)| Applied {
                    sequence,
                    duplicate: false,
                }),
        })
        .collect();
    let last = overlay.next_sequence - 1;
    let refused_withdrawals = overlay.refused_withdrawals;
    let (batch, touched, changes) = overlay.into_batch();
    let written = if batch.is_empty() {
        Ok(())
    } else {
        shared.db.write_opt(batch, sync)
    };
    metrics::histogram!("idguard_group_commit_events").record(group.len() as f64);
    match written {
        Ok(()) => {
            for (submission, outcome) in group.iter().zip(&outcomes) {
                let (kind, outcome) = match (&submission.event, outcome) {
                    (None, _) => ("unreadable", "refused"),
                    (Some(valid), Ok(applied)) if applied.duplicate => {
                        (valid.event.kind.name(), "duplicate")
                    }
                    (Some(valid), Ok(_)) => (valid.event.kind.name(), "accepted"),
                    (Some(valid), Err(_)) => (valid.event.kind.name(), "refused"),
                };
                metrics::counter!("idguard_events_total", "kind" => kind, "outcome" => outcome)
                    .increment(1);
            }
            metrics::counter!("idguard_withdrawals_refused_total").increment(refused_withdrawals);
            // Visible to checks (index, then sequence) and to watchers before anyone is told.
            shared.index.insert(touched);
            shared.sequence.store(last, Ordering::Release);
            shared.published.send_replace(last);
            for change in changes {
                // No watcher listening is fine.
                let _ = shared.changes.send(Arc::new(Change(change)));
            }
            for (submission, outcome) in group.into_iter().zip(outcomes) {
                // A submitter that gave up waiting is no reason to stop.
                let _ = submission.reply.send(outcome);
            }
        }
        Err(error) => {
            shared.writable.store(false, Ordering::Release);
            tracing::error!(%error, events = group.len(), "committing a group failed");
            for (submission, outcome) in group.into_iter().zip(outcomes) {
                // Anything that depended on this group's write is not durable either.
                let outcome = match outcome {
                    Ok(applied) if applied.sequence >= first_new => {
                        Err(StoreError::from(error.clone()).into())
                    }
                    other => other,
                };
                let _ = submission.reply.send(outcome);
            }
        }
    }
}

/// The stored state as the group being built sees it: reads fall through to RocksDB, writes stay
/// here until the group is committed.
struct Overlay<'a> {
    shared: &'a Shared,
    next_sequence: u64,
    recorded_at: OffsetDateTime,
    events: BTreeMap<u64, pb::RegistryChange>,
    reports: HashMap<ReportKey, ReportSlot>,
    citizens: HashMap<CitizenNumber, History>,
    /// Withdrawals accepted in this group whose target is not registered yet.
    pending_withdrawals: Vec<(ReportKey, ParkedWithdrawal)>,
    /// Withdrawals found in this group never to apply to the target they name.
    refused_withdrawals: u64,
    /// The last stream sequence this group applies, for a cluster node.
    stream_position: Option<u64>,
}

impl<'a> Overlay<'a> {
    fn new(shared: &'a Shared, next_sequence: u64, recorded_at: OffsetDateTime) -> Self {
        Self {
            shared,
            next_sequence,
            recorded_at,
            events: BTreeMap::new(),
            reports: HashMap::new(),
            citizens: HashMap::new(),
            pending_withdrawals: Vec::new(),
            refused_withdrawals: 0,
            stream_position: None,
        }
    }

    fn citizen(&mut self, number: CitizenNumber) -> Result<&mut History, StoreError> {
        if !self.citizens.contains_key(&number) {
            let stored = self
                .shared
                .db
                .get_pinned_cf(self.shared.cf(CF_CITIZENS), codec::citizen_key(number))?;
            let (state, tally) = match stored {
                Some(bytes) => codec::decode_citizen(&bytes)?,
                None => Default::default(),
            };
            self.citizens.insert(number, History { state, tally });
        }
        Ok(self.citizens.entry(number).or_default())
    }

    /// The history of `number`, once the event's division is admitted to it for the registry
    /// day of `recorded_at`.
    fn admitted(
        &mut self,
        number: CitizenNumber,
        valid: &ValidEvent,
        recorded_at: OffsetDateTime,
    ) -> Result<&mut History, ApplyError> {
        let history = self.citizen(number)?;
        history
            .tally
            .admit(
                division_of(&valid.event.authority),
                china_today(recorded_at),
            )
            .map_err(|full| ApplyError::Quota(full.to_string()))?;
        Ok(history)
    }

    /// The withdrawals waiting for `target`, stored or in this group.
    fn withdrawals_of(&self, target: &ReportKey) -> Result<Vec<ParkedWithdrawal>, StoreError> {
        let prefix = codec::withdrawal_prefix(target.as_bytes());
        let cf = self.shared.cf(CF_WITHDRAWALS);
        let mut parked = Vec::new();
        for item in self.shared.db.prefix_iterator_cf(cf, &prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            parked.push(ParkedWithdrawal {
                sequence: codec::decode_sequence(&key[prefix.len()..])?,
                grant: codec::decode_grant(&value)?,
            });
        }
        parked.extend(
            self.pending_withdrawals
                .iter()
                .filter(|(pending, _)| pending == target)
                .map(|(_, withdrawal)| withdrawal.clone()),
        );
        Ok(parked)
    }

    /// The sequence and recording time of the next event placed so. A stream message must be the
    /// one after the last applied: a node never skips one (after a failed write, say), which it
    /// would then never apply.
    fn place(&mut self, placement: Placement) -> Result<(u64, OffsetDateTime), ApplyError> {
        match placement {
            Placement::Next => Ok((self.next_sequence, self.recorded_at)),
            Placement::Stream {
                sequence,
                recorded_at,
            } => {
                if sequence != self.next_sequence {
                    return Err(ApplyError::OutOfTurn {
                        arrived: sequence,
                        expected: self.next_sequence,
                    });
                }
                self.stream_position = Some(sequence);
                self.next_sequence = sequence + 1;
                Ok((sequence, recorded_at))
            }
        }
    }

    /// Folds one event into the overlay, or says why it is a duplicate or refused.
    fn apply(
        &mut self,
        valid: &ValidEvent,
        recorder: &Recorder,
        placement: Placement,
    ) -> Result<Applied, ApplyError> {
        let (sequence, recorded_at) = self.place(placement)?;
        let event = &valid.event;
        let key = valid.report_key();
        if let Some(retry) = judge_retry(&*self, &key, valid, recorder)? {
            return Ok(retry);
        }
        let grant = match what_it_touches(&event.kind) {
            Touches::Withdrawal(target) => {
                self.withdraw(sequence, recorded_at, valid, &key, target, &recorder.grant)?;
                Some(recorder.grant.to_wire())
            }
            Touches::Number(number, fact) => {
                self.register(sequence, recorded_at, valid, &key, number, fact)?;
                None
            }
        };
        self.events.insert(
            sequence,
            pb::RegistryChange {
                sequence,
                event: Some(valid.canonical().clone()),
                recorded_at: Some(proto::timestamp(recorded_at)),
                recorded_by: recorder.principal.clone(),
                grant,
            },
        );
        let slot = ReportSlot {
            sequence,
            number: event.number(),
        };
        self.reports.insert(key, slot);
        self.next_sequence = sequence + 1;
        Ok(Applied {
            sequence,
            duplicate: false,
        })
    }

    /// Records an event about a number, together with the withdrawals of it that arrived first:
    /// each undoes it if its grant covers it, and is kept as refused otherwise. Refused when the
    /// event's division has used up its day's allowance on the number.
    fn register(
        &mut self,
        sequence: u64,
        recorded_at: OffsetDateTime,
        valid: &ValidEvent,
        key: &ReportKey,
        number: CitizenNumber,
        fact: Fact,
    ) -> Result<(), ApplyError> {
        self.admitted(number, valid, recorded_at)?;
        let mut entries = vec![Entry {
            sequence,
            occurred_at: valid.event.occurred_at,
            fact,
            withdrawn_by: None,
        }];
        for withdrawal in self.withdrawals_of(key)? {
            let fact = awaited_withdrawal(&withdrawal.grant, &valid.event, sequence);
            if matches!(fact, Fact::RefusedWithdrawal { .. }) {
                self.refused_withdrawals += 1;
            }
            entries.push(Entry {
                sequence: withdrawal.sequence,
                occurred_at: self.occurred_at(withdrawal.sequence)?,
                fact,
                withdrawn_by: None,
            });
        }
        let history = self.citizen(number)?;
        for entry in entries {
            history.state.record(entry);
        }
        Ok(())
    }

    /// Records a withdrawal against its target's number, or keeps it (with the withdrawer's
    /// grant) until the target arrives. Refused when it names a withdrawal or an event outside
    /// the grant, or when its division has used up its day's allowance on the target's number.
    /// A withdrawal is never withdrawn, whichever comes first (`DOMAIN.md` §3): one that named
    /// this one before it arrived is refused now, in the count of refused withdrawals, as it was
    /// acknowledged already; this one applies as it would have anyway, so that the order of
    /// arrival changes nothing.
    fn withdraw(
        &mut self,
        sequence: u64,
        recorded_at: OffsetDateTime,
        valid: &ValidEvent,
        key: &ReportKey,
        target: &ReportId,
        grant: &Grant,
    ) -> Result<(), ApplyError> {
        let named_this_one = self.withdrawals_of(key)?;
        let target_key = ReportKey::new(&valid.event.authority, target);
        match withdrawal_target(&mut Judged(&*self), &target_key)?.map_err(FieldError::from)? {
            Target::Awaited => {
                if self.withdrawals_of(&target_key)?.len() >= MAX_WAITING_WITHDRAWALS {
                    return Err(ApplyError::Quota(format!(
                        "withdrawn.withdrawn_report_id: {MAX_WAITING_WITHDRAWALS} withdrawals \
                         already wait for {:?}; no more are taken until it arrives",
                        target.as_str()
                    )));
                }
                self.pending_withdrawals.push((
                    target_key,
                    ParkedWithdrawal {
                        sequence,
                        grant: grant.clone(),
                    },
                ));
            }
            Target::Event {
                at: target_sequence,
                number,
            } => {
                let target_event = self.event(target_sequence)?.event.unwrap_or_default();
                let covered = target_event.kind.as_ref().is_some_and(|kind| {
                    grant.may_withdraw(&target_event.authority, proto::event_kind(kind))
                });
                if !covered {
                    return Err(Denial::TargetOutside.into());
                }
                self.admitted(number, valid, recorded_at)?
                    .state
                    .record(Entry {
                        sequence,
                        occurred_at: valid.event.occurred_at,
                        fact: Fact::Withdrawal {
                            target: target_sequence,
                        },
                        withdrawn_by: None,
                    });
            }
        }
        for earlier in named_this_one {
            tracing::warn!(
                withdrawal = earlier.sequence,
                names = sequence,
                "a withdrawal named a withdrawal before it arrived: it is refused and undoes nothing"
            );
            self.refused_withdrawals += 1;
        }
        Ok(())
    }

    fn occurred_at(&self, sequence: u64) -> Result<OffsetDateTime, StoreError> {
        Ok(codec::occurred_at(&self.event(sequence)?)?)
    }

    /// The group as one write batch, the numbers it gives records to with their new memos, and its
    /// new events in sequence order.
    fn into_batch(
        self,
    ) -> (
        WriteBatch,
        Vec<(CitizenNumber, Memo)>,
        Vec<pb::RegistryChange>,
    ) {
        let shared = self.shared;
        let mut batch = WriteBatch::default();
        for (sequence, change) in &self.events {
            batch.put_cf(
                shared.cf(CF_EVENTS),
                codec::sequence_key(*sequence),
                change.encode_to_vec(),
            );
        }
        for (key, slot) in &self.reports {
            batch.put_cf(shared.cf(CF_REPORTS), key.as_bytes(), slot.encode());
        }
        for (target, withdrawal) in &self.pending_withdrawals {
            batch.put_cf(
                shared.cf(CF_WITHDRAWALS),
                codec::withdrawal_key(target.as_bytes(), withdrawal.sequence),
                codec::encode_grant(&withdrawal.grant),
            );
        }
        if let Some(position) = self.stream_position {
            batch.put(STREAM_POSITION_KEY, position.to_be_bytes());
        }
        let mut touched = Vec::with_capacity(self.citizens.len());
        for (number, history) in &self.citizens {
            if !history.state.entries().is_empty() {
                let summary = Summary::of(&history.state);
                batch.put_cf(
                    shared.cf(CF_CITIZENS),
                    codec::citizen_key(*number),
                    codec::encode_citizen(&summary, &history.state, &history.tally),
                );
                touched.push((*number, Memo::of(&summary)));
            }
        }
        (batch, touched, self.events.into_values().collect())
    }
}

/// The log as the writer reads it: the events, and the reports that find them by `report_id`.
pub(super) trait LogView {
    fn report(&self, key: &ReportKey) -> Result<Option<ReportSlot>, StoreError>;
    fn event(&self, sequence: u64) -> Result<pb::RegistryChange, StoreError>;
}

impl LogView for Shared {
    fn report(&self, key: &ReportKey) -> Result<Option<ReportSlot>, StoreError> {
        let stored = self.db.get_pinned_cf(self.cf(CF_REPORTS), key.as_bytes())?;
        Ok(stored.map(|bytes| ReportSlot::decode(&bytes)).transpose()?)
    }

    fn event(&self, sequence: u64) -> Result<pb::RegistryChange, StoreError> {
        super::stored_event(&self.db, sequence)
    }
}

/// The group's writes first, then what is stored.
impl LogView for Overlay<'_> {
    fn report(&self, key: &ReportKey) -> Result<Option<ReportSlot>, StoreError> {
        match self.reports.get(key) {
            Some(slot) => Ok(Some(*slot)),
            None => self.shared.report(key),
        }
    }

    fn event(&self, sequence: u64) -> Result<pb::RegistryChange, StoreError> {
        match self.events.get(&sequence) {
            Some(change) => Ok(change.clone()),
            None => self.shared.event(sequence),
        }
    }
}

/// A log seen through the lookups the event rules ask ([`crate::registry::rules`]).
struct Judged<'a, L>(&'a L);

impl<L: LogView> ReportIds for Judged<'_, L> {
    type Place = u64;
    type Error = StoreError;

    fn first_use(&mut self, key: &ReportKey) -> Result<Option<FirstUse<u64>>, StoreError> {
        Ok(self.0.report(key)?.map(|slot| FirstUse {
            at: slot.sequence,
            number: slot.number,
        }))
    }
}

impl<L: LogView> Contents for Judged<'_, L> {
    fn content(&mut self, sequence: u64) -> Result<Content, StoreError> {
        Ok(Content::of(
            &self.0.event(sequence)?.event.unwrap_or_default(),
        ))
    }
}

/// What `valid` amounts to if its `report_id` is in use: the original's sequence for a retry, or
/// the conflict, which names the original's sequence only to a sender whose scopes cover it
/// (another jurisdiction's event is not this reporter's to locate). `None` for the id's first
/// use.
pub(super) fn judge_retry(
    log: &impl LogView,
    key: &ReportKey,
    valid: &ValidEvent,
    recorder: &Recorder,
) -> Result<Option<Applied>, ApplyError> {
    let content = || Content::of(valid.canonical());
    match judge_report_id(&mut Judged(log), key, content)? {
        IdUse::New => Ok(None),
        IdUse::Duplicate(sequence) => Ok(Some(Applied {
            sequence,
            duplicate: true,
        })),
        IdUse::Conflict(sequence) => Err(ApplyError::Conflict {
            report_id: valid.event.report_id.as_str().to_owned(),
            sequence: log
                .event(sequence)?
                .event
                .filter(|original| recorder.grant.scopes.cover(&original.authority))
                .map(|_| sequence),
        }),
    }
}

/// What the writer folds for one number: its state, and the day's tally of who recorded on it.
#[derive(Debug, Default)]
struct History {
    state: CitizenState,
    tally: DailyTally,
}

/// A withdrawal accepted before the event it names, waiting for it with what its sender was
/// allowed.
#[derive(Debug, Clone)]
pub(super) struct ParkedWithdrawal {
    pub sequence: u64,
    pub grant: Grant,
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::event::validate_event;
    use crate::store::Store;

    const AT: OffsetDateTime = datetime!(2026-11-22 04:00 UTC);

    fn loss(report_id: &str) -> ValidEvent {
        let wire = pb::RegistryEvent {
            report_id: report_id.into(),
            authority: "440305".into(),
            occurred_at: Some(proto::timestamp(AT)),
            kind: Some(pb::registry_event::Kind::Reported(pb::CardReported {
                card: Some(pb::CardRef {
                    id_number: "11010519491231002X".into(),
                    issue_date: "20200101".into(),
                    expiry_date: String::new(),
                }),
                kind: pb::LossKind::Lost as i32,
            })),
        };
        validate_event(wire, AT).unwrap()
    }

    async fn from_stream(
        store: &Store,
        event: Option<ValidEvent>,
        sequence: u64,
    ) -> Result<Applied, ApplyError> {
        let recorder = Recorder::trusted("node-a");
        let pending = store.enqueue_from_stream(event, &recorder, sequence, AT);
        pending.await?.outcome().await
    }

    #[tokio::test]
    async fn a_cluster_node_applies_the_stream_in_order_and_remembers_how_far() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.bind_stream("REGISTRY").unwrap();
        let first = from_stream(&store, Some(loss("r-1")), 1).await.unwrap();
        assert_eq!((first.sequence, first.duplicate), (1, false));
        // Skipping a message would lose it for good.
        let skipped = from_stream(&store, Some(loss("r-3")), 3).await.unwrap_err();
        assert!(
            matches!(
                skipped,
                ApplyError::OutOfTurn {
                    arrived: 3,
                    expected: 2
                }
            ),
            "{skipped}"
        );
        assert_eq!(store.log().sequence(), 1);
        // A message that is no event, and a retry, register nothing but are passed.
        let passed = from_stream(&store, None, 2).await.unwrap();
        assert_eq!((passed.sequence, passed.duplicate), (2, false));
        let retry = from_stream(&store, Some(loss("r-1")), 3).await.unwrap();
        assert_eq!((retry.sequence, retry.duplicate), (1, true));
        assert_eq!(store.log().sequence(), 3);
        let local = store
            .enqueue(loss("r-4"), &Recorder::trusted("local"))
            .await
            .err()
            .unwrap();
        assert!(matches!(local, ApplyError::FollowsStream(_)), "{local}");
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.log().sequence(),
            3,
            "the position outlives the last event"
        );
        // The index saved at the clean stop is used, though the log has a hole at its sequence.
        assert_eq!(
            store.citizens().index_origin(),
            &crate::store::IndexOrigin::Loaded
        );
        assert_eq!(store.log().stream(), Some("REGISTRY"));
        assert!(store.bind_stream("OTHER").is_err());
        assert_eq!(store.log().read(1, 3, 10).unwrap().len(), 1);
    }
}
