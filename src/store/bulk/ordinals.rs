//! Which events of the import did not enter, as a rank bitset: one bit per event, in file order,
//! with counts per word, so that an event's sequence is its ordinal less the drops before it.
//!
//! Entries are sorted by number while the input is still being read, before anyone knows which
//! events will enter, so they name their events by a provisional sequence ([`provisional`]) that
//! [`Sequences::settle`] turns into the real one. Sorting by it sorts by the real sequences: the
//! accepted events keep their file order, and every provisional sequence is above every stored one.

/// Turns ordinals into sequences: accepted events follow the log's last sequence in file order.
pub(super) struct Sequences {
    pub(super) last: u64,
    pub(super) dropped: Ordinals,
}

impl Sequences {
    /// The sequence of the event with this ordinal; `None` if it did not enter.
    pub(super) fn of(&self, ordinal: u64) -> Option<u64> {
        (!self.dropped.contains(ordinal))
            .then(|| self.last + 1 + ordinal - self.dropped.rank(ordinal))
    }

    /// The sequence an entry sorted during reading names: a stored one (at most `last`) as it is,
    /// a [`provisional`] one as the sequence its event got; `None` if that event did not enter.
    pub(super) fn settle(&self, named: u64) -> Option<u64> {
        match named.checked_sub(self.last + 1) {
            Some(ordinal) => self.of(ordinal),
            None => Some(named),
        }
    }
}

/// The sequence the event with this ordinal would get if every event entered: the sort key of its
/// entries until [`Sequences::settle`] knows the real one.
pub(super) fn provisional(last: u64, ordinal: u64) -> u64 {
    last + 1 + ordinal
}

/// A set of ordinals (events that did not enter), with ranks: how many are below a given
/// ordinal, which turns an ordinal into a sequence.
pub(super) struct Ordinals {
    bits: Vec<u64>,
    /// Members in the words before each word, once counted.
    below: Vec<u64>,
}

impl Ordinals {
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            bits: vec![0; capacity.div_ceil(64) as usize],
            below: Vec::new(),
        }
    }

    pub(super) fn insert(&mut self, ordinal: u64) {
        self.bits[(ordinal / 64) as usize] |= 1 << (ordinal % 64);
    }

    pub(super) fn contains(&self, ordinal: u64) -> bool {
        self.bits[(ordinal / 64) as usize] & (1 << (ordinal % 64)) != 0
    }

    pub(super) fn count_ranks(&mut self) {
        let mut total = 0;
        self.below = self
            .bits
            .iter()
            .map(|word| {
                let before = total;
                total += u64::from(word.count_ones());
                before
            })
            .collect();
    }

    pub(super) fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// Members below `ordinal` (after [`Ordinals::count_ranks`]).
    pub(super) fn rank(&self, ordinal: u64) -> u64 {
        let word = (ordinal / 64) as usize;
        let below_in_word = self.bits[word] & ((1u64 << (ordinal % 64)) - 1);
        self.below[word] + u64::from(below_in_word.count_ones())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_the_members_below() {
        let mut set = Ordinals::new(200);
        for ordinal in [0, 5, 63, 64, 130] {
            set.insert(ordinal);
        }
        set.count_ranks();
        assert_eq!(set.count(), 5);
        assert_eq!(
            [0, 1, 63, 64, 65, 131, 199].map(|o| set.rank(o)),
            [0, 1, 2, 3, 4, 5, 5]
        );
        assert!(set.contains(64) && !set.contains(65));
    }

    #[test]
    fn provisional_sequences_settle_in_order_and_stored_ones_stay() {
        let mut dropped = Ordinals::new(10);
        dropped.insert(1);
        dropped.count_ranks();
        let sequences = Sequences { last: 100, dropped };
        let settled = [0, 1, 2, 3].map(|ordinal| sequences.settle(provisional(100, ordinal)));
        assert_eq!(settled, [Some(101), None, Some(102), Some(103)]);
        assert_eq!(sequences.settle(100), Some(100));
        assert_eq!(sequences.settle(7), Some(7));
    }
}
