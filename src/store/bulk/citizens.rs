//! Step 6: each number's new entries, merged by number, folded into its stored state, and the
//! index of every number with a record built on the way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use rocksdb::Options;

use super::extsort::Runs;
use super::ordinals::Sequences;
use super::spool::{array, decode_spooled_entry};
use super::sst::SstFiles;
use super::{Collected, Progress, joined, step_done};
use crate::card::CitizenNumber;
use crate::registry::{CitizenState, DailyTally, Entry, Fact, Memo, Summary};
use crate::store::index::RecordIndex;
use crate::store::{CF_CITIZENS, StoreError, codec, column_family};

impl Collected {
    /// Step 6: each number's new entries folded into its stored state; every number with a
    /// record, stored or new, goes into the index. Adds the entries folded to `done`, which
    /// it reports to `progress` with what the steps beside it added.
    pub(super) fn write_citizens(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
        entries: Runs,
        done: &AtomicU64,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<PathBuf>, RecordIndex), StoreError> {
        let started = Instant::now();
        let cf = column_family(&self.db, CF_CITIZENS);
        let estimate = self
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")?
            .unwrap_or(0);
        // At most every stored number and one per new entry: sized so, the index does not grow
        // while it is built (a growth copies every number again).
        let numbers = usize::try_from(estimate).unwrap_or(0) + entries.len() as usize;
        let mut stored = StoredCitizens {
            keys: self.db.raw_iterator_cf(cf),
            index: RecordIndex::with_capacity(numbers),
            indexed: Vec::with_capacity(4096),
        };
        stored.keys.seek_to_first();
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_CITIZENS);
        let mut fold = |number: u64, new: Vec<Entry>| -> Result<(), StoreError> {
            // The import is the operator's: it counts against no division's daily allowance.
            let (mut state, tally) = stored.through(number)?.unwrap_or_default();
            // A withdrawal marks a target already recorded, as the writer records them.
            let (withdrawals, facts): (Vec<Entry>, Vec<Entry>) = new
                .into_iter()
                .partition(|entry| matches!(entry.fact, Fact::Withdrawal { .. }));
            facts
                .into_iter()
                .chain(withdrawals)
                .for_each(|entry| state.record(entry));
            let summary = Summary::of(&state);
            stored.index_new(number, Memo::of(&summary))?;
            ssts.put(
                &number.to_be_bytes(),
                &codec::encode_citizen(&summary, &state, &tally),
            )
        };
        // The merge runs on the other core, handing over whole numbers' entries.
        let (groups_out, groups_in) = sync_channel::<Vec<(u64, Vec<Entry>)>>(GROUP_CHUNKS_QUEUED);
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let merging = scope.spawn(move || group_entries(entries, sequences, &groups_out));
            for chunk in groups_in {
                let mut folded = 0;
                for (number, new) in chunk {
                    folded += new.len() as u64;
                    fold(number, new)?;
                }
                progress.done(done.fetch_add(folded, Ordering::Relaxed) + folded);
            }
            joined(merging)
        })?;
        let folded = (ssts.finish()?, stored.rest()?);
        step_done("folding citizens", started);
        Ok(folded)
    }
}

/// Numbers' entries handed from the merge to the fold at once.
const GROUP_CHUNK: usize = 4096;
/// Chunks of numbers queued between the merge and the fold.
const GROUP_CHUNKS_QUEUED: usize = 8;

/// Merges the entry sort and sends each number's entries, in number order, in chunks, with their
/// sequences settled; stops early if the receiver has gone. An entry of an event that did not
/// enter is left out, and so is one marking such an event (a stored withdrawal waiting for it).
fn group_entries(
    entries: Runs,
    sequences: &Sequences,
    out: &SyncSender<Vec<(u64, Vec<Entry>)>>,
) -> Result<(), StoreError> {
    let receiver_gone = || StoreError::Interrupted("the fold stopped".into());
    let mut chunk: Vec<(u64, Vec<Entry>)> = Vec::with_capacity(GROUP_CHUNK);
    entries.merge(|key, _| -> Result<(), StoreError> {
        let number = u64::from_be_bytes(array(&key[..8]));
        let Some(entry) = settled(decode_spooled_entry(&key[8..])?, sequences) else {
            return Ok(());
        };
        match chunk.last_mut() {
            Some((current, new)) if *current == number => new.push(entry),
            _ => {
                // A number's entries are never split across chunks: the full chunk is sent
                // only when the next number starts.
                if chunk.len() == GROUP_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(GROUP_CHUNK));
                    out.send(full).map_err(|_| receiver_gone())?;
                }
                chunk.push((number, vec![entry]));
            }
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        out.send(chunk).map_err(|_| receiver_gone())?;
    }
    Ok(())
}

/// The entry with the sequences it names settled; `None` if one of them did not enter.
fn settled(mut entry: Entry, sequences: &Sequences) -> Option<Entry> {
    entry.sequence = sequences.settle(entry.sequence)?;
    if let Fact::Withdrawal { target } | Fact::RefusedWithdrawal { target } = &mut entry.fact {
        *target = sequences.settle(*target)?;
    }
    Some(entry)
}

/// The stored citizens, walked in step with the new entries' numbers, indexing every number
/// passed with its memo.
struct StoredCitizens<'db> {
    keys: rocksdb::DBRawIterator<'db>,
    index: RecordIndex,
    indexed: Vec<(CitizenNumber, Memo)>,
}

impl StoredCitizens<'_> {
    /// Indexes every stored number before `number`, and returns `number`'s stored history, if any.
    fn through(&mut self, number: u64) -> Result<Option<(CitizenState, DailyTally)>, StoreError> {
        let key = number.to_be_bytes();
        let mut state = None;
        while let (Some(stored), Some(value)) = (self.keys.key(), self.keys.value()) {
            if stored > &key[..] {
                break;
            }
            if stored == key {
                state = Some(codec::decode_citizen(value)?);
            } else {
                let memo = codec::decode_citizen_memo(stored, value)?;
                self.index_memo(memo);
            }
            self.keys.next();
        }
        self.keys.status()?;
        Ok(state)
    }

    /// Indexes a number folded with new entries, with the memo of its new state.
    fn index_new(&mut self, number: u64, memo: Memo) -> Result<(), StoreError> {
        let number = codec::decode_citizen_key(&number.to_be_bytes())?;
        self.index_memo((number, memo));
        Ok(())
    }

    fn index_memo(&mut self, memo: (CitizenNumber, Memo)) {
        self.indexed.push(memo);
        if self.indexed.len() >= 4096 {
            self.index.insert(self.indexed.drain(..));
        }
    }

    /// Indexes the stored numbers after the last new one and returns the index.
    fn rest(mut self) -> Result<RecordIndex, StoreError> {
        while let (Some(stored), Some(value)) = (self.keys.key(), self.keys.value()) {
            let memo = codec::decode_citizen_memo(stored, value)?;
            self.indexed.push(memo);
            self.keys.next();
        }
        self.keys.status()?;
        self.index.insert(self.indexed);
        Ok(self.index)
    }
}
