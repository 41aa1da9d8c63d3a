//! Step 5: the accepted ids, in id order, with the sequences step 4 gave them.

use std::path::PathBuf;

use rocksdb::Options;

use super::Collected;
use super::deduplicate::AcceptedIds;
use super::ordinals::Sequences;
use super::sst::SstFiles;
use crate::card::CitizenNumber;
use crate::store::codec::ReportSlot;
use crate::store::{CF_REPORTS, StoreError};

impl Collected {
    /// Step 5: the accepted ids, in id order, with the sequences step 4 gives them.
    pub(super) fn write_reports(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut accepted = AcceptedIds::open(&self.work.join("accepted.spool"))?;
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_REPORTS);
        while accepted.advance()? {
            // A withdrawal refused in step 3 is in the spool but did not enter.
            let Some(sequence) = sequences.of(accepted.ordinal) else {
                continue;
            };
            let slot = ReportSlot {
                sequence,
                number: CitizenNumber::from_packed(accepted.number),
            };
            ssts.put(&accepted.report_id, &slot.encode())?;
        }
        ssts.finish()
    }
}
