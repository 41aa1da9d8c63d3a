//! Step 3: each withdrawal's target, found by merging the withdrawals sorted by target with the
//! accepted and the stored ids; and step 5's withdrawals still waiting for theirs.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use rocksdb::{DB, Options};
use time::OffsetDateTime;

use super::deduplicate::{AcceptedIds, stored_slot};
use super::extsort::{Runs, Sorter, read_more};
use super::ordinals::{Ordinals, Sequences, provisional};
use super::spool::{
    EntrySort, array, corrupt_spool, create_spool, open_spool, read_framed, write_framed,
};
use super::sst::SstFiles;
use super::{BulkSummary, Collected, Origin, PROGRESS_EVERY, Place, Progress, Refusal};
use crate::card::CitizenNumber;
use crate::event::ReportKey;
use crate::registry::{
    Entry, Fact, FirstUse, Grant, ReportIds, Target, WithdrawsWithdrawal, withdrawal_target,
};
use crate::store::codec;
use crate::store::writer::ParkedWithdrawal;
use crate::store::{CF_REPORTS, CF_WITHDRAWALS, StoreError, column_family};

impl Collected {
    /// Step 3: finds each accepted withdrawal's target. One that marks a card event adds its entry
    /// to the target's number in `entries`, one whose target has not arrived waits
    /// (`waiting.spool`), and one that withdraws an earlier withdrawal is refused and joins
    /// `dropped`.
    pub(super) fn resolve_withdrawals(
        &self,
        by_target: Runs,
        entries: &mut EntrySort,
        dropped: &mut Ordinals,
        summary: &mut BulkSummary,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<(), StoreError> {
        progress.step("resolving withdrawals", by_target.len());
        let mut waiting = create_spool(&self.work.join("waiting.spool"))?;
        let mut reports = AcceptedOrStored {
            accepted: AcceptedIds::open(&self.work.join("accepted.spool"))?,
            stored: self.db.raw_iterator_cf(column_family(&self.db, CF_REPORTS)),
        };
        reports.stored.seek_to_first();
        // Withdrawals of withdrawals: whether one of an imported withdrawal is refused depends on
        // whether that one was, so they are decided in file order after the merge.
        let mut of_withdrawals: Vec<(u64, Origin, WithdrawsWithdrawal<Place>, Vec<u8>)> =
            Vec::new();
        let mut target_key = ReportKey::default();
        let mut seen = 0u64;
        by_target.merge(|key, value| -> Result<(), StoreError> {
            let (target, ordinal) = key.split_at(key.len() - 8);
            let ordinal = u64::from_be_bytes(array(ordinal));
            let origin = Origin::decode(&value[16..28]);
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            if dropped.contains(ordinal) {
                return Ok(());
            }
            // A withdrawal marks a card event wherever it is in the input: one that came first
            // would wait for it and undo it on arrival, with the same outcome. A withdrawal
            // later in the input has not arrived yet, so this one waits for it, as online.
            target_key.set_bytes(target);
            match withdrawal_target(&mut reports, &target_key)? {
                Ok(Target::Awaited) => write_framed(&mut waiting, target, &ordinal.to_be_bytes())?,
                Ok(Target::Event { at, number }) => {
                    let target = match at {
                        Place::Imported(target_ordinal) => provisional(self.last, target_ordinal),
                        Place::Stored(sequence) => sequence,
                    };
                    let nanos = i128::from_be_bytes(array(&value[..16]));
                    let entry = Entry {
                        sequence: provisional(self.last, ordinal),
                        occurred_at: OffsetDateTime::from_unix_timestamp_nanos(nanos)
                            .map_err(|error| corrupt_spool(&error.to_string()))?,
                        fact: Fact::Withdrawal { target },
                        withdrawn_by: None,
                    };
                    entries.push(number.packed(), &entry)?;
                }
                Err(WithdrawsWithdrawal {
                    at: Place::Imported(target_ordinal),
                }) if target_ordinal > ordinal => {
                    write_framed(&mut waiting, target, &ordinal.to_be_bytes())?;
                }
                Err(refusal) => of_withdrawals.push((ordinal, origin, refusal, target.to_vec())),
            }
            Ok(())
        })?;
        of_withdrawals.sort_unstable_by_key(|(ordinal, ..)| *ordinal);
        let mut refusals: HashSet<u64> = HashSet::new();
        for (ordinal, origin, refusal, target) in of_withdrawals {
            if let Place::Imported(target_ordinal) = refusal.at
                && refusals.contains(&target_ordinal)
            {
                // Its target never entered: it waits, as it would have online.
                write_framed(&mut waiting, &target, &ordinal.to_be_bytes())?;
                continue;
            }
            dropped.insert(ordinal);
            refusals.insert(ordinal);
            summary.refused += 1;
            refused(origin, Refusal::Invalid(refusal.into()));
        }
        waiting.flush()?;
        Ok(())
    }

    /// Step 5, continued: withdrawals whose target has not arrived, keyed as the writer keys them.
    pub(super) fn write_waiting(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut input = open_spool(&self.work.join("waiting.spool"))?;
        let mut keys = Sorter::new(&self.work, "waiting", self.memory_bytes / 8);
        let (mut target, mut ordinal) = (Vec::new(), Vec::new());
        while read_more(read_framed(&mut input, &mut target, &mut ordinal))? {
            let sequence = sequences
                .of(u64::from_be_bytes(array(&ordinal)))
                .ok_or_else(|| corrupt_spool("a waiting withdrawal that did not enter"))?;
            keys.push(&codec::withdrawal_key(&target, sequence), &[])?;
        }
        // The import is the operator's: its withdrawals may undo anything.
        let grant = codec::encode_grant(&Grant::everything());
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_WITHDRAWALS);
        keys.finish()?
            .merge(|key, _| -> Result<(), StoreError> { ssts.put(key, &grant) })?;
        ssts.finish()
    }
}

/// The reports as step 3 sees them, asked in id order: the ids this import accepted, then the
/// stored ones.
struct AcceptedOrStored<'db> {
    accepted: AcceptedIds,
    stored: rocksdb::DBRawIterator<'db>,
}

impl ReportIds for AcceptedOrStored<'_> {
    type Place = Place;
    type Error = StoreError;

    fn first_use(&mut self, key: &ReportKey) -> Result<Option<FirstUse<Place>>, StoreError> {
        if let Some((ordinal, number)) = self.accepted.find(key.as_bytes())? {
            return Ok(Some(FirstUse {
                at: Place::Imported(ordinal),
                // 0 marks a withdrawal.
                number: CitizenNumber::from_packed(number).filter(|_| number != 0),
            }));
        }
        Ok(
            stored_slot(&mut self.stored, key.as_bytes())?.map(|slot| FirstUse {
                at: Place::Stored(slot.sequence),
                number: slot.number,
            }),
        )
    }
}

/// The stored withdrawals still waiting for their target, by target.
pub(super) fn waiting_withdrawals(
    db: &DB,
) -> Result<HashMap<Vec<u8>, Vec<ParkedWithdrawal>>, StoreError> {
    let mut waiting: HashMap<Vec<u8>, Vec<ParkedWithdrawal>> = HashMap::new();
    let mut keys = db.raw_iterator_cf(column_family(db, CF_WITHDRAWALS));
    keys.seek_to_first();
    while let (Some(key), Some(value)) = (keys.key(), keys.value()) {
        let (target, sequence) = codec::decode_withdrawal_key(key)?;
        let grant = codec::decode_grant(value)?;
        waiting
            .entry(target.to_vec())
            .or_default()
            .push(ParkedWithdrawal { sequence, grant });
        keys.next();
    }
    keys.status()?;
    Ok(waiting)
}
