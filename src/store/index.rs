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

use std::io::{self, Read, Write};
use std::sync::{Mutex, RwLock};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::card::CitizenNumber;

const SLOTS_PER_BUCKET: usize = 8;
const MIN_BUCKETS: usize = 64;
/// Marks an empty slot: no valid number packs to 0 (province codes start at 11).
const EMPTY: u64 = 0;

/// Slots per read or write when the table is saved or loaded.
const SLOT_CHUNK: usize = 1 << 17;

/// What it takes to read saved slots back: see [`RecordIndex::write_slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotsHeader {
    pub numbers: u64,
    pub buckets: u64,
    pub checksum: u64,
}

/// A 64-byte bucket of slots, aligned so that probing it reads one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u64; SLOTS_PER_BUCKET]);

/// The fill rule: a table is grown before more than 85% of its slots are taken, where linear
/// probing across buckets would start to make misses read many cache lines.
fn too_full(numbers: usize, buckets: usize) -> bool {
    numbers * 100 >= buckets * SLOTS_PER_BUCKET * 85
}

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
        self.find_from(self.home(key), key)
    }

    /// [`Table::find`] from a home bucket computed beforehand.
    fn find_from(&self, home: usize, key: u64) -> Result<(), (usize, usize)> {
        let mut bucket = home;
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

    /// Asks the CPU to start loading a bucket into cache, so that probing it later does not
    /// wait on memory: the table is far larger than the caches, and a lookup is otherwise one
    /// DRAM round trip.
    fn prefetch(&self, bucket: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let line = std::ptr::from_ref(&self.buckets[bucket]).cast::<i8>();
            // SAFETY: a prefetch is only a hint; it never faults, and `line` points into the
            // table anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bucket;
    }

    fn insert(&mut self, key: u64) {
        if let Err((bucket, slot)) = self.find(key) {
            self.buckets[bucket].0[slot] = key;
            self.len += 1;
        }
    }

    fn is_too_full(&self) -> bool {
        self.would_be_too_full(self.len)
    }

    fn would_be_too_full(&self, numbers: usize) -> bool {
        too_full(numbers, self.buckets.len())
    }

    /// A copy grown by 1.7x as often as it takes to hold `extra` more numbers.
    fn grown_for(&self, extra: usize) -> Self {
        let mut buckets = self.buckets.len();
        while too_full(self.len + extra, buckets) {
            buckets = buckets * 17 / 10;
        }
        let mut grown = Self::with_buckets(buckets);
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
    /// Serialises inserts, so that a grown copy can be built outside the table's write lock.
    inserting: Mutex<()>,
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
            inserting: Mutex::new(()),
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

    /// [`RecordIndex::may_have_record`] for many numbers, in order: one lock for all, and each
    /// lookup's bucket fetched from memory a few lookups ahead, so that the misses overlap.
    pub fn may_have_records(&self, numbers: &[CitizenNumber]) -> Vec<bool> {
        const AHEAD: usize = 8;
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let homes: Vec<usize> = numbers
            .iter()
            .map(|number| table.home(number.packed()))
            .collect();
        homes
            .iter()
            .take(AHEAD)
            .for_each(|&home| table.prefetch(home));
        numbers
            .iter()
            .zip(&homes)
            .enumerate()
            .map(|(at, (number, &home))| {
                if let Some(&ahead) = homes.get(at + AHEAD) {
                    table.prefetch(ahead);
                }
                table.find_from(home, number.packed()).is_ok()
            })
            .collect()
    }

    /// Adds numbers that now have records.
    ///
    /// When the table must grow, the grown copy is built while readers go on reading the current
    /// one (a rehash of 100M numbers takes about a second); they wait only for the swap and the
    /// inserts themselves.
    pub fn insert(&self, numbers: impl IntoIterator<Item = CitizenNumber>) {
        let keys: Vec<u64> = numbers.into_iter().map(CitizenNumber::packed).collect();
        let _only_inserter = self
            .inserting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let grown = {
            let table = self
                .table
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            table
                .would_be_too_full(table.len + keys.len())
                .then(|| table.grown_for(keys.len()))
        };
        let mut table = self
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(grown) = grown {
            *table = grown;
        }
        for key in keys {
            table.insert(key);
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

    /// Writes the table's slots (little-endian `u64`s, bucket by bucket) to `out`, and returns
    /// what [`RecordIndex::read_slots`] needs to read them back: the number of numbers, of
    /// buckets, and the xxh3 checksum of the bytes written.
    pub fn write_slots(&self, out: &mut impl Write) -> io::Result<SlotsHeader> {
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut checksum = Xxh3::new();
        let mut chunk = Vec::with_capacity(SLOT_CHUNK * 8);
        for buckets in table.buckets.chunks(SLOT_CHUNK / SLOTS_PER_BUCKET) {
            chunk.clear();
            for slot in buckets.iter().flat_map(|bucket| bucket.0) {
                chunk.extend_from_slice(&slot.to_le_bytes());
            }
            checksum.update(&chunk);
            out.write_all(&chunk)?;
        }
        Ok(SlotsHeader {
            numbers: table.len as u64,
            buckets: table.buckets.len() as u64,
            checksum: checksum.digest(),
        })
    }

    /// Reads back what [`RecordIndex::write_slots`] wrote, refusing it unless the bucket count is
    /// plausible, the checksum matches and the count of numbers is right.
    pub fn read_slots(input: &mut impl Read, header: SlotsHeader) -> io::Result<Self> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
        let buckets = usize::try_from(header.buckets)
            .ok()
            .filter(|buckets| (MIN_BUCKETS..=(1 << 34)).contains(buckets))
            .ok_or_else(|| invalid("implausible bucket count"))?;
        let mut table = Table::with_buckets(buckets);
        let mut checksum = Xxh3::new();
        let mut chunk = vec![0u8; SLOT_CHUNK * 8];
        for buckets in table.buckets.chunks_mut(SLOT_CHUNK / SLOTS_PER_BUCKET) {
            let bytes = &mut chunk[..buckets.len() * SLOTS_PER_BUCKET * 8];
            input.read_exact(bytes)?;
            checksum.update(bytes);
            for (slot, raw) in buckets
                .iter_mut()
                .flat_map(|bucket| bucket.0.iter_mut())
                .zip(bytes.chunks_exact(8))
            {
                *slot = u64::from_le_bytes(raw.try_into().unwrap_or_default());
            }
        }
        if checksum.digest() != header.checksum {
            return Err(invalid("checksum mismatch"));
        }
        table.len = table
            .buckets
            .iter()
            .map(|bucket| bucket.0.iter().filter(|&&slot| slot != EMPTY).count())
            .sum();
        if table.len as u64 != header.numbers || table.is_too_full() {
            return Err(invalid("count of numbers does not match"));
        }
        Ok(Self {
            table: RwLock::new(table),
            inserting: Mutex::new(()),
        })
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
    fn saved_slots_read_back_identical_and_damage_is_refused() {
        let index = RecordIndex::default();
        index.insert((0..30_000).map(number));
        let mut bytes = Vec::new();
        let header = index.write_slots(&mut bytes).unwrap();
        assert_eq!(header.numbers, 30_000);
        let loaded = RecordIndex::read_slots(&mut bytes.as_slice(), header).unwrap();
        assert_eq!(loaded.len(), 30_000);
        assert!((0..30_000).all(|i| loaded.may_have_record(number(i))));
        assert!((30_000..40_000).all(|i| !loaded.may_have_record(number(i))));

        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        assert!(RecordIndex::read_slots(&mut damaged.as_slice(), header).is_err());
        let short = &bytes[..bytes.len() - 8];
        assert!(RecordIndex::read_slots(&mut &short[..], header).is_err());
        let wrong_count = SlotsHeader {
            numbers: 29_999,
            ..header
        };
        assert!(RecordIndex::read_slots(&mut bytes.as_slice(), wrong_count).is_err());
    }

    /// Readers running while inserts grow the table never miss a number inserted before.
    #[test]
    fn readers_see_every_earlier_number_while_the_table_grows() {
        let index = std::sync::Arc::new(RecordIndex::default());
        index.insert((0..1000).map(number));
        let reader = {
            let index = std::sync::Arc::clone(&index);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while index.len() < 200_000 {
                    let seen = index.len() as u64;
                    for i in (0..seen).step_by(97) {
                        assert!(index.may_have_record(number(i)), "{i} lost at {seen}");
                        checks += 1;
                    }
                }
                checks
            })
        };
        for chunk in (1000..200_000u64).collect::<Vec<_>>().chunks(1000) {
            index.insert(chunk.iter().copied().map(number));
        }
        assert!(reader.join().unwrap() > 0);
        assert_eq!(index.len(), 200_000);
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
