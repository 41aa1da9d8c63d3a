//! The numbers with a record: the in-memory index that answers "no record", and the current card
//! of a number with only issuances, without I/O; and the stored state of each number, read when
//! the index cannot settle a check.

use super::index::RecordIndex;
use super::{CF_CITIZENS, IndexOrigin, Shared, StoreError, codec};
use crate::card::CitizenNumber;
use crate::registry::{CitizenState, Memo, Summary};

/// The citizens of a [`super::Store`].
#[derive(Clone, Copy)]
pub struct Citizens<'s> {
    pub(super) shared: &'s Shared,
    pub(super) index_origin: &'s IndexOrigin,
}

impl<'s> Citizens<'s> {
    /// What the index remembers of the number; `None` is exact (it has no record), and neither
    /// costs I/O.
    pub fn memo(&self, number: CitizenNumber) -> Option<Memo> {
        self.shared.index.get(number)
    }

    /// [`Citizens::memo`] for many numbers, in order.
    pub fn memos(&self, numbers: &[CitizenNumber]) -> Vec<Option<Memo>> {
        self.shared.index.get_many(numbers)
    }

    /// Where the index came from at open.
    pub fn index_origin(&self) -> &'s IndexOrigin {
        self.index_origin
    }

    /// The index, for its size figures.
    pub fn index(&self) -> &'s RecordIndex {
        &self.shared.index
    }

    /// What checks need of several numbers, in order (`None`: no record). Blocking.
    pub fn summaries(&self, numbers: &[CitizenNumber]) -> Result<Vec<Option<Summary>>, StoreError> {
        let cf = self.shared.cf(CF_CITIZENS);
        let keys: Vec<[u8; 8]> = numbers.iter().copied().map(codec::citizen_key).collect();
        self.shared
            .db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .map(|found| {
                found?
                    .map(|bytes| codec::decode_citizen_summary(&bytes).map_err(StoreError::from))
                    .transpose()
            })
            .collect()
    }

    /// The whole state of a number (`None`: no record). Blocking.
    pub fn history(&self, number: CitizenNumber) -> Result<Option<CitizenState>, StoreError> {
        let stored = self
            .shared
            .db
            .get_pinned_cf(self.shared.cf(CF_CITIZENS), codec::citizen_key(number))?;
        Ok(stored
            .map(|bytes| codec::decode_citizen(&bytes).map(|(state, _)| state))
            .transpose()?)
    }
}
