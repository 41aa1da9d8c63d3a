//! Step 2: one event per `report_id`. The first use of an id wins; the same content again is a
//! duplicate, other content is refused.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use rocksdb::DB;

use super::extsort::{Runs, read_more};
use super::ordinals::Ordinals;
use super::spool::{
    array, corrupt_spool, create_spool, io_error, open_spool, read_framed, write_framed,
};
use super::{BulkSummary, Collected, Origin, PROGRESS_EVERY, Place, Progress, Refusal};
use crate::event::ReportKey;
use crate::registry::{Content, Contents, FirstUse, IdUse, ReportIds, judge_report_id};
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
        let mut reports = ReportsSoFar::new(&self.db);
        let mut report_key = ReportKey::default();
        let mut seen = 0u64;
        by_report.merge(|key, value| -> Result<(), StoreError> {
            let (report_id, ordinal) = key.split_at(key.len() - 8);
            let ordinal = u64::from_be_bytes(array(ordinal));
            let content = Content::from_bytes(array(&value[..16]));
            let origin = Origin::decode(&value[16..28]);
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            report_key.set_bytes(report_id);
            let at = match judge_report_id(&mut reports, &report_key, || content)? {
                IdUse::New => {
                    let mut body = [0u8; 16];
                    body[..8].copy_from_slice(&ordinal.to_be_bytes());
                    body[8..].copy_from_slice(&value[28..36]);
                    write_framed(&mut accepted, report_id, &body)?;
                    reports.first_in_input(report_id, ordinal, origin, content);
                    return Ok(());
                }
                IdUse::Duplicate(_) => {
                    dropped.insert(ordinal);
                    summary.duplicates += 1;
                    return Ok(());
                }
                IdUse::Conflict(at) => at,
            };
            dropped.insert(ordinal);
            summary.refused += 1;
            let report_id = String::from_utf8_lossy(&report_id[2..]).into_owned();
            refused(
                origin,
                match at {
                    Place::Stored(sequence) => Refusal::ConflictsWithStored {
                        report_id,
                        sequence,
                    },
                    Place::Imported(_) => Refusal::ConflictsWithEarlier {
                        report_id,
                        earlier: reports.first_origin,
                    },
                },
            );
            Ok(())
        })?;
        accepted
            .flush()
            .map_err(|error| io_error("writing", &accepted_path, error))?;
        Ok(dropped)
    }
}

/// The reports as step 2 sees them, asked in id order: the stored ones, and the first use in the
/// input of the id being merged, which the later uses are judged against.
struct ReportsSoFar<'db> {
    db: &'db DB,
    stored: rocksdb::DBRawIterator<'db>,
    /// The id being merged, where its first use is, and that use's content.
    first: Option<(Vec<u8>, FirstUse<Place>, Content)>,
    /// Where in the input the first use was, when it was in the input.
    first_origin: Origin,
}

impl<'db> ReportsSoFar<'db> {
    fn new(db: &'db DB) -> Self {
        let mut stored = db.raw_iterator_cf(column_family(db, CF_REPORTS));
        stored.seek_to_first();
        Self {
            db,
            stored,
            first: None,
            first_origin: Origin { file: 0, line: 0 },
        }
    }

    /// The id's first use was in the input, at `ordinal` (from `origin`).
    fn first_in_input(&mut self, report_id: &[u8], ordinal: u64, origin: Origin, content: Content) {
        let first = FirstUse {
            at: Place::Imported(ordinal),
            number: None,
        };
        self.first = Some((report_id.to_vec(), first, content));
        self.first_origin = origin;
    }
}

impl ReportIds for ReportsSoFar<'_> {
    type Place = Place;
    type Error = StoreError;

    fn first_use(&mut self, key: &ReportKey) -> Result<Option<FirstUse<Place>>, StoreError> {
        if let Some((report_id, first, _)) = &self.first
            && report_id.as_slice() == key.as_bytes()
        {
            return Ok(Some(*first));
        }
        let Some(slot) = stored_slot(&mut self.stored, key.as_bytes())? else {
            return Ok(None);
        };
        let event = stored_event(self.db, slot.sequence)?
            .event
            .unwrap_or_default();
        let first = FirstUse {
            at: Place::Stored(slot.sequence),
            number: slot.number,
        };
        self.first = Some((key.as_bytes().to_vec(), first, Content::of(&event)));
        Ok(Some(first))
    }
}

impl Contents for ReportsSoFar<'_> {
    fn content(&mut self, at: Place) -> Result<Content, StoreError> {
        match &self.first {
            Some((_, first, content)) if first.at == at => Ok(*content),
            _ => Err(corrupt_spool("a report id judged out of order")),
        }
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
