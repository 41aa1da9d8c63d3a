//! Step 2: one event per `report_id`. The first use of an id wins; the same content again is a
//! duplicate, other content is refused.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use prost::Message;
use rocksdb::DB;
use xxhash_rust::xxh3::xxh3_128;

use super::extsort::{Runs, read_more};
use super::ordinals::Ordinals;
use super::spool::{array, create_spool, io_error, open_spool, read_framed, write_framed};
use super::{BulkSummary, Collected, Origin, PROGRESS_EVERY, Progress, Refusal};
use crate::store::codec::ReportSlot;
use crate::store::{CF_REPORTS, StoreError, column_family, stored_event};

impl Collected {
    /// Step 2: merges the `report_id` sort with the stored reports and marks every event that
    /// does not enter (duplicate or conflict) in the returned set of ordinals. Writes the accepted
    /// ids, in id order, to `accepted.spool`.
    pub(super) fn deduplicate(
        &self,
        by_report: Runs,
        summary: &mut BulkSummary,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<Ordinals, StoreError> {
        progress.step("checking report ids", by_report.len());
        let mut dropped = Ordinals::new(self.events);
        let accepted_path = self.work.join("accepted.spool");
        let mut accepted = create_spool(&accepted_path)?;
        let mut stored = self.db.raw_iterator_cf(column_family(&self.db, CF_REPORTS));
        stored.seek_to_first();
        /// The use of an id that the later ones are compared with.
        enum First {
            Stored { sequence: u64, hash: u128 },
            Imported { origin: Origin, hash: u128 },
        }
        let mut current: Option<(Vec<u8>, First)> = None;
        let mut seen = 0u64;
        by_report.merge(|key, value| -> Result<(), StoreError> {
            let (report_id, ordinal) = key.split_at(key.len() - 8);
            let ordinal = u64::from_be_bytes(array(ordinal));
            let hash = u128::from_be_bytes(array(&value[..16]));
            let origin = Origin::decode(&value[16..28]);
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            let first = match &current {
                Some((id, first)) if id == report_id => first,
                _ => {
                    let first = match stored_slot(&mut stored, report_id)? {
                        Some(slot) => First::Stored {
                            sequence: slot.sequence,
                            hash: stored_hash(&self.db, slot.sequence)?,
                        },
                        None => {
                            let mut body = [0u8; 16];
                            body[..8].copy_from_slice(&ordinal.to_be_bytes());
                            body[8..].copy_from_slice(&value[28..36]);
                            write_framed(&mut accepted, report_id, &body)?;
                            current = Some((report_id.to_vec(), First::Imported { origin, hash }));
                            return Ok(());
                        }
                    };
                    &current.insert((report_id.to_vec(), first)).1
                }
            };
            dropped.insert(ordinal);
            let report_id = String::from_utf8_lossy(&report_id[2..]).into_owned();
            match *first {
                First::Stored { hash: h, .. } | First::Imported { hash: h, .. } if h == hash => {
                    summary.duplicates += 1;
                }
                First::Stored { sequence, .. } => {
                    summary.refused += 1;
                    refused(
                        origin,
                        Refusal::ConflictsWithStored {
                            report_id,
                            sequence,
                        },
                    );
                }
                First::Imported {
                    origin: earlier, ..
                } => {
                    summary.refused += 1;
                    refused(origin, Refusal::ConflictsWithEarlier { report_id, earlier });
                }
            }
            Ok(())
        })?;
        accepted
            .flush()
            .map_err(|error| io_error("writing", &accepted_path, error))?;
        Ok(dropped)
    }
}

/// The stored slot of `report_id`, moving a `reports` iterator forward; ids must be asked in
/// order.
pub(super) fn stored_slot(
    stored: &mut rocksdb::DBRawIterator<'_>,
    report_id: &[u8],
) -> Result<Option<ReportSlot>, StoreError> {
    while stored.key().is_some_and(|key| key < report_id) {
        stored.next();
    }
    stored.status()?;
    match (stored.key(), stored.value()) {
        (Some(key), Some(slot)) if key == report_id => Ok(Some(ReportSlot::decode(slot)?)),
        _ => Ok(None),
    }
}

/// The content hash of the stored event with this sequence, comparable with an imported one's.
fn stored_hash(db: &DB, sequence: u64) -> Result<u128, StoreError> {
    let event = stored_event(db, sequence)?.event.unwrap_or_default();
    Ok(xxh3_128(&event.encode_to_vec()))
}

/// The accepted ids of step 2, read in id order.
pub(super) struct AcceptedIds {
    input: BufReader<File>,
    pub(super) report_id: Vec<u8>,
    pub(super) ordinal: u64,
    /// The packed number, 0 for a withdrawal.
    pub(super) number: u64,
    body: Vec<u8>,
    ended: bool,
}

impl AcceptedIds {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            input: open_spool(path)?,
            report_id: Vec::new(),
            ordinal: 0,
            number: 0,
            body: Vec::new(),
            ended: false,
        })
    }

    /// Moves to the next id; `false` at the end.
    pub(super) fn advance(&mut self) -> Result<bool, StoreError> {
        if !read_more(read_framed(
            &mut self.input,
            &mut self.report_id,
            &mut self.body,
        ))? {
            self.ended = true;
            return Ok(false);
        }
        self.ordinal = u64::from_be_bytes(array(&self.body[..8]));
        self.number = u64::from_be_bytes(array(&self.body[8..16]));
        Ok(true)
    }

    /// The ordinal and number of `report_id` if it was accepted; ids must be asked in order.
    pub(super) fn find(&mut self, report_id: &[u8]) -> Result<Option<(u64, u64)>, StoreError> {
        while !self.ended && (self.report_id.is_empty() || self.report_id.as_slice() < report_id) {
            self.advance()?;
        }
        Ok((!self.ended && self.report_id == report_id).then_some((self.ordinal, self.number)))
    }
}
