//! The in-memory hashed index of citizen numbers that have records.
//!
//! Almost every card presented has no record (`DOMAIN.md` §4), so "no record" must be answered
//! without touching disk. The index holds every packed number with a record in an open-addressing
//! table hashed with xxh3: bucketed linear probing with eight 8-byte slots per 64-byte bucket, so a
//! miss usually reads one cache line. It stores the numbers themselves, so a negative is exact;
//! a positive only sends the check on to the store, which decides.
//!
//! The table grows by 1.7x when 85% full, which keeps it between 50% and 85% full: 9.4 to 16 bytes
//! per number with records.

use std::sync::RwLock;

use xxhash_rust::xxh3::xxh3_64;

use crate::card::CitizenNumber;

const SLOTS_PER_BUCKET: usize = 8;
const MIN_BUCKETS: usize = 64;
/// Marks an empty slot: no valid number packs to 0 (province codes start at 11).
const EMPTY: u64 = 0;

/// A 64-byte bucket of slots, aligned so that probing it reads one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u64; SLOTS_PER_BUCKET]);

struct Table {
    buckets: Vec<Bucket>,
    len: usize,
}

impl Table {
    fn with_buckets(count: usize) -> Self {
        Self {
            buckets: vec![Bucket::default(); count.max(MIN_BUCKETS)],
            len: 0,
        }
    }

    fn home(&self, key: u64) -> usize {
        // Multiply-shift maps the hash onto any bucket count, so growth need not double.
        ((u128::from(xxh3_64(&key.to_le_bytes())) * self.buckets.len() as u128) >> 64) as usize
    }

    /// Probes from the key's home bucket: `Ok` where the key is, `Err` where it would go.
    fn find(&self, key: u64) -> Result<(), (usize, usize)> {
        let mut bucket = self.home(key);
        loop {
            for (slot, &held) in self.buckets[bucket].0.iter().enumerate() {
                if held == key {
                    return Ok(());
                }
                if held == EMPTY {
                    return Err((bucket, slot));
                }
            }
            bucket = (bucket + 1) % self.buckets.len();
        }
    }

    fn insert(&mut self, key: u64) {
        if let Err((bucket, slot)) = self.find(key) {
            self.buckets[bucket].0[slot] = key;
            self.len += 1;
        }
    }

    fn is_too_full(&self) -> bool {
        self.len * 100 >= self.buckets.len() * SLOTS_PER_BUCKET * 85
    }

    fn grown(&self) -> Self {
        let mut grown = Self::with_buckets(self.buckets.len() * 17 / 10);
        for bucket in &self.buckets {
            for &key in bucket.0.iter().filter(|&&key| key != EMPTY) {
                grown.insert(key);
            }
        }
        grown
    }
}

/// The set of citizen numbers that have at least one record, shared by every request.
pub struct RecordIndex {
    table: RwLock<Table>,
}

impl Default for RecordIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl RecordIndex {
    /// An empty index sized for `expected` numbers without growing.
    pub fn with_capacity(expected: usize) -> Self {
        let buckets = (expected * 100).div_ceil(SLOTS_PER_BUCKET * 70);
        Self {
            table: RwLock::new(Table::with_buckets(buckets)),
        }
    }

    /// Whether the number may have a record. `false` is exact: the number has none.
    pub fn may_have_record(&self, number: CitizenNumber) -> bool {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table.find(number.packed()).is_ok()
    }

    /// Adds numbers that now have records.
    pub fn insert(&self, numbers: impl IntoIterator<Item = CitizenNumber>) {
        let mut table = self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for number in numbers {
            table.insert(number.packed());
            if table.is_too_full() {
                *table = table.grown();
            }
        }
    }

    /// How many numbers the index holds.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the table itself occupies, in bytes.
    pub fn table_bytes(&self) -> usize {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table.buckets.len() * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(i: u64) -> CitizenNumber {
        CitizenNumber::from_packed(11_000_000_000_000_000 + i * 7919).unwrap()
    }

    #[test]
    fn holds_exactly_what_was_inserted_across_growth() {
        let index = RecordIndex::default();
        index.insert((0..50_000).map(number));
        index.insert((0..10).map(number));
        assert_eq!(index.len(), 50_000);
        assert!((0..50_000).all(|i| index.may_have_record(number(i))));
        assert!((50_000..100_000).all(|i| !index.may_have_record(number(i))));
    }

    #[test]
    fn stays_within_16_bytes_per_number() {
        let index = RecordIndex::default();
        for chunk in (0..200_000u64).collect::<Vec<_>>().chunks(10_000) {
            index.insert(chunk.iter().copied().map(number));
            let per_number = index.table_bytes() as f64 / index.len() as f64;
            assert!(
                per_number <= 16.0,
                "{per_number} bytes per number at {}",
                index.len()
            );
        }
    }
}
