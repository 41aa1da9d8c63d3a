//! The in-memory index of the numbers that have records, with what a check of each one's current
//! card needs ([`Memo`]): at national steady state nearly every check is answered here, exactly,
//! with no store read.
//!
//! # Design
//!
//! **Keys without their redundancy.** A number's 17 digits carry far less than their 57 bits: a
//! division code under one of 35 province codes (350,000 values), a birth date since 1800 (coded
//! as `(year - 1800) * 372 + (month - 1) * 31 + day - 1`, under 2^17 until 2152) and a
//! three-digit sequence. Their *rank*, `((division * 2^17) + birth) * 1000 + sequence`, is below
//! 4.59 * 10^13 < 2^46. A fixed bijection of 46-bit words (multiply by an odd constant, xor-shift,
//! three rounds) scatters ranks into hashes `h` spread evenly over `[0, 2^46)`.
//!
//! **Quotienting.** With `B` buckets, `h`'s home bucket is `q = floor(h * B / 2^46)`, so the hashes
//! homed in one bucket form a run of at most `ceil(2^46 / B)` consecutive values, and within the
//! run their low `k = ceil(log2(ceil(2^46 / B)))` bits differ. A slot keeps only those `k` bits:
//! the bucket it is found in supplies the rest, and the key is exact (no false answer).
//!
//! **Two choices.** Each key may also live in a second bucket, `q + offset(r)` (mod `B`) where `r`
//! is its remainder, which a slot can invert; a bit says which. Inserting into the emptier of the
//! two keeps buckets within a slot or two of each other, so 64-byte buckets fill to 95% before a
//! key finds both full (it then goes to a small exact overflow map, which also holds the rare
//! number that cannot be ranked). A lookup reads at most two cache lines, fetched together.
//!
//! **The memo in 18 bits.** A class (3 bits: empty slot, consult the store, nothing in force, or
//! the newest card's expiry as unstated, long-term, or 5, 10 or 20 years after issue, the periods
//! of `DOMAIN.md` §2) and the newest card's issue date as a 15-bit count of days since
//! 1990-01-01 (through 2079-09-18). A memo outside that, say a card with an unusual expiry, is kept as
//! "consult the store": exact, only slower.
//!
//! # Arithmetic at 1.4 billion citizens
//!
//! Sized for them, `B` = 1.4e9 / (13 * 0.88) = 1.22e8 buckets, so `ceil(2^46 / B)` = 574,860 and
//! `k` = 20: a slot is 20 + 1 + 18 = 39 bits, 13 slots to a 512-bit bucket, 7.8 GB in all, 5.6
//! bytes per citizen. The table grows at 95% full to 85% full (by about 1.12x), so between
//! growths it stays within 5.2 and 5.8 bytes per citizen at this size; a growth holds the old
//! table and the new for its duration (see [`RecordIndex`]). The information
//! limit for the keys alone is about log2(C(2^45.4, 1.4e9)) / 1.4e9 = 16.5 bits per citizen, for
//! the memo about 17; a slot's 39 bits are within 6 of that. `benches/index.rs` measures it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use time::{Date, macros::date};
use xxhash_rust::xxh3::Xxh3;

use crate::card::{CitizenNumber, Expiry, PROVINCE_COUNT, province_ordinal, years_after};
use crate::registry::Memo;

/// Ranks are below `2^RANK_BITS`: see the module doc.
const RANK_BITS: u32 = 46;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;
/// Birth-date codes per division code: 352 years of 372 codes.
const BIRTH_CODES: u64 = 1 << 17;
const FIRST_BIRTH_YEAR: u64 = 1800;

const BUCKET_BITS: u32 = 512;
const VALUE_BITS: u32 = 18;
const DAY_BITS: u32 = 15;
const CLASS_EMPTY: u64 = 0;
const CLASS_CONSULT: u64 = 1;
const CLASS_NOTHING: u64 = 2;
const CLASS_EXPIRY_UNKNOWN: u64 = 3;
const CLASS_LONG: u64 = 4;
/// Classes 5, 6 and 7: the newest card expires this many years after its issue.
const PERIOD_CLASSES: [(u64, i32); 3] = [(5, 5), (6, 10), (7, 20)];
/// Day 0 of the memo's issue date.
const DAY_EPOCH: Date = date!(1990 - 01 - 01);

const MIN_BUCKETS: u64 = 64;
const MAX_BUCKETS: u64 = 1 << 34;
/// A table is grown before more of its slots than this are taken.
const MAX_LOAD: f64 = 0.95;
/// What a grown table's load is; what a table sized beforehand is given.
const GROWN_LOAD: f64 = 0.85;
const SIZED_LOAD: f64 = 0.88;

/// Buckets per read or write when the table is saved or loaded.
const BUCKET_CHUNK: usize = 1 << 14;

/// The rank of a packed number (see the module doc), or `None` for one that is not a valid
/// number's (such a key lives in the overflow map).
fn rank(packed: u64) -> Option<u64> {
    let sequence = packed % 1000;
    let birth = packed / 1000 % 100_000_000;
    let division = packed / 100_000_000_000;
    let province = province_ordinal(division / 10_000)?;
    let (year, month, day) = (birth / 10_000, birth / 100 % 100, birth % 100);
    let years = year.checked_sub(FIRST_BIRTH_YEAR)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || years >= BIRTH_CODES / 372 {
        return None;
    }
    let birth_code = years * 372 + (month - 1) * 31 + day - 1;
    let division_code = province * 10_000 + division % 10_000;
    Some((division_code * BIRTH_CODES + birth_code) * 1000 + sequence)
}

const _: () = assert!((PROVINCE_COUNT as u64 * 10_000 * BIRTH_CODES * 1000) <= 1 << RANK_BITS);

/// A bijection of `[0, 2^46)`: each round multiplies by an odd constant and xor-shifts, both
/// invertible modulo `2^46`, so distinct ranks give distinct hashes.
fn scatter(rank: u64) -> u64 {
    let mut x = rank;
    for multiplier in [
        0x9E37_79B9_7F4A_7C15_u64,
        0xBF58_476D_1CE4_E5B9,
        0x94D0_49BB_1331_11EB,
    ] {
        x = x.wrapping_mul(multiplier) & RANK_MASK;
        x ^= x >> 23;
    }
    x
}

/// A memo as a slot's value bits.
fn pack(memo: Memo) -> u64 {
    let consult = CLASS_CONSULT << DAY_BITS;
    let Memo::Newest { issued, expiry } = memo else {
        return match memo {
            Memo::NothingInForce => CLASS_NOTHING << DAY_BITS,
            _ => consult,
        };
    };
    let Some(day) = u64::try_from((issued - DAY_EPOCH).whole_days())
        .ok()
        .filter(|&day| day < 1 << DAY_BITS)
    else {
        return consult;
    };
    let class = match expiry {
        Expiry::Unknown => CLASS_EXPIRY_UNKNOWN,
        Expiry::Long => CLASS_LONG,
        Expiry::On(end) => match PERIOD_CLASSES
            .iter()
            .find(|&&(_, years)| years_after(issued, years) == Some(end))
        {
            Some(&(class, _)) => class,
            None => return consult,
        },
    };
    (class << DAY_BITS) | day
}

/// The memo a slot's value bits hold (see [`pack`]).
fn unpack(value: u64) -> Memo {
    let class = value >> DAY_BITS;
    let issued = DAY_EPOCH + time::Duration::days((value & ((1 << DAY_BITS) - 1)) as i64);
    let expiry = match class {
        CLASS_EXPIRY_UNKNOWN => Expiry::Unknown,
        CLASS_LONG => Expiry::Long,
        CLASS_NOTHING => return Memo::NothingInForce,
        _ => match PERIOD_CLASSES.iter().find(|&&(period, _)| period == class) {
            Some(&(_, years)) => match years_after(issued, years) {
                Some(end) => Expiry::On(end),
                None => return Memo::Consult,
            },
            None => return Memo::Consult,
        },
    };
    Memo::Newest { issued, expiry }
}

/// A 64-byte bucket of bit-packed slots, aligned so that probing it reads one cache line.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([u64; 8]);

impl Bucket {
    fn get(&self, at: u32, bits: u32) -> u64 {
        let (word, shift) = ((at / 64) as usize, at % 64);
        let mut value = self.0[word] >> shift;
        if shift + bits > 64 {
            value |= self.0[word + 1] << (64 - shift);
        }
        value & ((1 << bits) - 1)
    }

    fn set(&mut self, at: u32, bits: u32, value: u64) {
        let (word, shift) = ((at / 64) as usize, at % 64);
        let mask = (1u64 << bits) - 1;
        self.0[word] = (self.0[word] & !(mask << shift)) | (value << shift);
        if shift + bits > 64 {
            let high = 64 - shift;
            self.0[word + 1] = (self.0[word + 1] & !(mask >> high)) | (value >> high);
        }
    }
}

/// `count` empty buckets, on huge pages where the kernel offers them (`madvise` mode): at
/// national size a lookup's two random buckets would otherwise cost two TLB misses beside their
/// two cache misses, as 4 KiB pages' translations do not fit the TLB's few thousand entries.
fn empty_buckets(count: usize) -> Vec<Bucket> {
    let mut buckets = Vec::with_capacity(count);
    // Advised before the pages are first touched, so that the faults that fill them take huge ones.
    advise_huge_pages(buckets.spare_capacity_mut());
    buckets.resize(count, Bucket::default());
    buckets
}

/// Asks the kernel to back the whole 2 MiB pages within `memory` with huge pages.
fn advise_huge_pages<T>(memory: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = memory.as_mut_ptr() as usize;
        let (first, end) = (
            start.next_multiple_of(HUGE_PAGE),
            (start + std::mem::size_of_val(memory)) / HUGE_PAGE * HUGE_PAGE,
        );
        if first < end {
            // SAFETY: advice about whole pages inside the allocation `memory` borrows; madvise
            // neither reads nor writes them. A kernel without huge pages refuses it, harmlessly.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = memory;
}

/// Where a key's slot is in one bucket, or why it is not there.
enum InBucket {
    Found(u32),
    /// Not there, and slot `n` is the first free one.
    Free(u32),
    Full,
}

/// A table's shape, which follows from its bucket count.
#[derive(Clone, Copy, Debug)]
struct Layout {
    buckets: u64,
    remainder_bits: u32,
    slot_bits: u32,
    slots: u32,
}

impl Layout {
    fn of(buckets: u64) -> Self {
        let buckets = buckets.clamp(MIN_BUCKETS, MAX_BUCKETS);
        let run = (1u64 << RANK_BITS).div_ceil(buckets);
        let remainder_bits = u64::BITS - (run - 1).leading_zeros();
        let slot_bits = remainder_bits + 1 + VALUE_BITS;
        Self {
            buckets,
            remainder_bits,
            slot_bits,
            slots: BUCKET_BITS / slot_bits,
        }
    }

    /// The smallest table that holds `numbers` at `load`.
    fn for_numbers(numbers: usize, load: f64) -> Self {
        // The slots per bucket depend on the bucket count, which depends on them: two rounds
        // settle it.
        let mut layout = Self::of(MIN_BUCKETS);
        for _ in 0..3 {
            layout = Self::of((numbers as f64 / (f64::from(layout.slots) * load)).ceil() as u64);
        }
        while (layout.capacity() as f64) * load < numbers as f64 && layout.buckets < MAX_BUCKETS {
            layout = Self::of(layout.buckets + layout.buckets / 64 + 1);
        }
        layout
    }

    fn capacity(&self) -> u64 {
        self.buckets * u64::from(self.slots)
    }

    fn home(&self, hash: u64) -> u64 {
        ((u128::from(hash) * u128::from(self.buckets)) >> RANK_BITS) as u64
    }

    fn remainder(&self, hash: u64) -> u64 {
        hash & ((1 << self.remainder_bits) - 1)
    }

    /// How far the second choice of a key with remainder `r` is from its home: 1 to `B - 1`.
    fn offset(&self, remainder: u64) -> u64 {
        let spread = (remainder ^ remainder >> 29).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        1 + ((u128::from(spread) * u128::from(self.buckets - 1)) >> 64) as u64
    }

    fn second(&self, home: u64, remainder: u64) -> u64 {
        (home + self.offset(remainder)) % self.buckets
    }

    /// The hash whose home is `home` and whose remainder is `remainder`.
    fn hash(&self, home: u64, remainder: u64) -> u64 {
        let start = ((u128::from(home) << RANK_BITS).div_ceil(u128::from(self.buckets))) as u64;
        start + (remainder.wrapping_sub(start) & ((1 << self.remainder_bits) - 1))
    }

    fn tag(remainder: u64, second: bool) -> u64 {
        (remainder << 1) | u64::from(second)
    }

    fn find(&self, bucket: &Bucket, tag: u64) -> InBucket {
        for slot in 0..self.slots {
            let held = bucket.get(slot * self.slot_bits, self.slot_bits);
            if (held >> DAY_BITS) & 0b111 == CLASS_EMPTY {
                return InBucket::Free(slot);
            }
            if held >> VALUE_BITS == tag {
                return InBucket::Found(slot);
            }
        }
        InBucket::Full
    }
}

/// How many keys ahead a run of lookups or inserts asks for the buckets it will read. Each key
/// costs only a few nanoseconds once its buckets are in cache, so the memory's latency has to be
/// covered by many keys in flight: on a 200M-citizen index, batches of 1,000 national checks ran
/// at 1.48-1.53M checks/s with 8 keys ahead and 2.01-2.18M with 32 or 64 (3 alternating rounds
/// each, docs/data-at-scale.md).
const PREFETCH_AHEAD: usize = 32;

/// Where a ranked key may be.
#[derive(Clone, Copy)]
struct Probe {
    hash: u64,
    home: u64,
    second: u64,
    remainder: u64,
}

struct Table {
    layout: Layout,
    buckets: Vec<Bucket>,
    /// Keys in buckets and in the overflow map.
    len: usize,
    /// Keys whose two buckets were full, and numbers that cannot be ranked.
    overflow: HashMap<u64, u64>,
    /// How many of the overflow's keys are there because their buckets were full: a bigger table
    /// takes them back.
    crowded: usize,
}

impl Table {
    fn with_layout(layout: Layout) -> Self {
        Self {
            layout,
            buckets: empty_buckets(layout.buckets as usize),
            len: 0,
            overflow: HashMap::new(),
            crowded: 0,
        }
    }

    fn probe(&self, hash: u64) -> Probe {
        let home = self.layout.home(hash);
        let remainder = self.layout.remainder(hash);
        Probe {
            hash,
            home,
            second: self.layout.second(home, remainder),
            remainder,
        }
    }

    fn prefetch(&self, probe: &Probe) {
        #[cfg(target_arch = "x86_64")]
        for bucket in [probe.home, probe.second] {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let line = std::ptr::from_ref(&self.buckets[bucket as usize]).cast::<i8>();
            // SAFETY: a prefetch is only a hint; it never faults, and `line` points into the
            // table anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = probe;
    }

    /// The probes of `packed` keys (`None` for a key kept in the overflow map), with the buckets
    /// of the first few already asked for: see [`Table::prefetch_ahead`].
    fn probes(&self, packed: impl Iterator<Item = u64>) -> Vec<Option<Probe>> {
        let probes: Vec<Option<Probe>> = packed
            .map(|packed| rank(packed).map(|rank| self.probe(scatter(rank))))
            .collect();
        probes
            .iter()
            .take(PREFETCH_AHEAD)
            .flatten()
            .for_each(|probe| self.prefetch(probe));
        probes
    }

    /// Asks for the buckets of the probe [`PREFETCH_AHEAD`] places after `at`: going through
    /// many keys in turn, each one's buckets are then on their way from memory while the ones
    /// before it are handled, so that the cache misses overlap.
    fn prefetch_ahead(&self, probes: &[Option<Probe>], at: usize) {
        if let Some(Some(ahead)) = probes.get(at + PREFETCH_AHEAD) {
            self.prefetch(ahead);
        }
    }

    fn value_at(&self, bucket: u64, slot: u32) -> u64 {
        let layout = &self.layout;
        self.buckets[bucket as usize].get(slot * layout.slot_bits, VALUE_BITS)
    }

    /// The value held for a ranked key.
    fn get_ranked(&self, probe: &Probe) -> Option<u64> {
        let layout = &self.layout;
        let home = &self.buckets[probe.home as usize];
        let home_full = match layout.find(home, Layout::tag(probe.remainder, false)) {
            InBucket::Found(slot) => return Some(self.value_at(probe.home, slot)),
            InBucket::Free(_) => false,
            InBucket::Full => true,
        };
        let second = &self.buckets[probe.second as usize];
        match layout.find(second, Layout::tag(probe.remainder, true)) {
            InBucket::Found(slot) => Some(self.value_at(probe.second, slot)),
            // A key overflows only when both its buckets are full, and slots are never freed.
            InBucket::Full if home_full => self.overflow.get(&(probe.hash | (1 << 63))).copied(),
            _ => None,
        }
    }

    fn get(&self, packed: u64) -> Option<u64> {
        match rank(packed) {
            Some(rank) => self.get_ranked(&self.probe(scatter(rank))),
            None => self.overflow.get(&packed).copied(),
        }
    }

    fn set_slot(&mut self, bucket: u64, slot: u32, tag: u64, value: u64) {
        let bits = self.layout.slot_bits;
        self.buckets[bucket as usize].set(slot * bits, bits, (tag << VALUE_BITS) | value);
    }

    /// Sets the value of a ranked key, adding the key if it is new.
    fn set_ranked(&mut self, hash: u64, value: u64) {
        self.set_probed(&self.probe(hash), value);
    }

    /// [`Table::set_ranked`] of the key `probe` was made for.
    fn set_probed(&mut self, probe: &Probe, value: u64) {
        let layout = self.layout;
        let (home_tag, second_tag) = (
            Layout::tag(probe.remainder, false),
            Layout::tag(probe.remainder, true),
        );
        let home_free = match layout.find(&self.buckets[probe.home as usize], home_tag) {
            InBucket::Found(slot) => return self.set_slot(probe.home, slot, home_tag, value),
            InBucket::Free(slot) => Some(slot),
            InBucket::Full => None,
        };
        let second_free = match layout.find(&self.buckets[probe.second as usize], second_tag) {
            InBucket::Found(slot) => return self.set_slot(probe.second, slot, second_tag, value),
            InBucket::Free(slot) => Some(slot),
            InBucket::Full => None,
        };
        match (home_free, second_free) {
            (Some(home), Some(second)) if second < home => {
                self.set_slot(probe.second, second, second_tag, value);
            }
            (Some(home), _) => self.set_slot(probe.home, home, home_tag, value),
            (None, Some(second)) => self.set_slot(probe.second, second, second_tag, value),
            (None, None) => {
                if self
                    .overflow
                    .insert(probe.hash | (1 << 63), value)
                    .is_some()
                {
                    return;
                }
                self.crowded += 1;
            }
        }
        self.len += 1;
    }

    fn set(&mut self, packed: u64, value: u64) {
        match rank(packed) {
            Some(rank) => self.set_ranked(scatter(rank), value),
            None => {
                if self.overflow.insert(packed, value).is_none() {
                    self.len += 1;
                }
            }
        }
    }

    /// Whether the table should be replaced by a bigger one.
    fn needs_growth(&self) -> bool {
        self.len as f64 > self.layout.capacity() as f64 * MAX_LOAD
            || self.crowded > 64 + self.len / 2048
    }

    /// Every key's hash (ranked) or overflow key, with its value.
    fn for_each(&self, mut each: impl FnMut(Key, u64)) {
        self.for_each_in(0..self.buckets.len(), &mut each);
        for (&key, &value) in &self.overflow {
            each(Key::Overflow(key), value);
        }
    }

    /// The keys held in the buckets `range`, with their values.
    fn for_each_in(&self, range: std::ops::Range<usize>, each: &mut impl FnMut(Key, u64)) {
        let layout = &self.layout;
        for (bucket, at) in self.buckets[range.clone()].iter().zip(range) {
            let at = at as u64;
            for slot in 0..layout.slots {
                let held = bucket.get(slot * layout.slot_bits, layout.slot_bits);
                let value = held & ((1 << VALUE_BITS) - 1);
                if value >> DAY_BITS == CLASS_EMPTY {
                    break;
                }
                let (remainder, second) = (held >> (VALUE_BITS + 1), (held >> VALUE_BITS) & 1 == 1);
                let home = if second {
                    (at + layout.buckets - layout.offset(remainder)) % layout.buckets
                } else {
                    at
                };
                each(Key::Hash(layout.hash(home, remainder)), value);
            }
        }
    }

    /// The shape of the table that replaces this one when it grows: its keys at the grown load,
    /// and always bigger, so that a table grown for its crowded overflow does not come back the
    /// same.
    fn grown_layout(&self) -> Layout {
        let buckets = Layout::for_numbers(self.len, GROWN_LOAD).buckets;
        Layout::of(buckets.max(self.layout.buckets + self.layout.buckets / 8 + 1))
    }

    /// Whether so many keys overflowed while a grown copy is built that inserts should wait for it.
    fn is_crowded(&self) -> bool {
        self.crowded > 1024 + self.len / 64
    }

    fn set_key(&mut self, key: Key, value: u64) {
        match key {
            Key::Hash(hash) => self.set_ranked(hash, value),
            Key::Overflow(key) if key >> 63 == 1 => self.set_ranked(key & RANK_MASK, value),
            Key::Overflow(packed) => self.set(packed, value),
        }
    }
}

/// A key as a table can give it back without knowing the number.
enum Key {
    Hash(u64),
    Overflow(u64),
}

/// What it takes to read a saved table back: see [`RecordIndex::write_slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotsHeader {
    pub numbers: u64,
    pub buckets: u64,
    pub overflow: u64,
    pub checksum: u64,
}

/// Buckets copied into a grown table per read lock, so that inserts wait for one chunk at most.
const GROWTH_CHUNK: usize = 1 << 16;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The numbers that have records, each with its [`Memo`], shared by every request.
///
/// When the table must grow, a bigger copy is built on a thread of its own, a chunk of buckets
/// per read lock, while checks read and inserts write the current table (which always holds
/// everything); inserts made meanwhile are kept in a journal and applied to the copy at the swap.
/// So neither checks nor the writer wait for a growth, which at 1.4 billion numbers takes minutes;
/// only an insert that finds the current table overflowing by more than 1/64 waits for the copy.
pub struct RecordIndex {
    inner: Arc<Inner>,
}

struct Inner {
    table: RwLock<Table>,
    /// Serialises inserts with each other and with the swap of a grown copy.
    inserting: Mutex<()>,
    /// While a grown copy is being built: every insert since it began, to apply to it at the swap.
    journal: Mutex<Option<Vec<(u64, u64)>>>,
    /// Signalled when a growth has ended.
    grown: Condvar,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds a bigger copy of the table and puts it in its place, with the journal's inserts.
    fn grow(&self) {
        /// Ends the growth however the build ends, so that no insert waits on one that failed.
        struct Ended<'i>(&'i Inner);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                *lock(&self.0.journal) = None;
                self.0.grown.notify_all();
            }
        }
        let _ended = Ended(self);
        let (layout, buckets) = {
            let table = self.read();
            (table.grown_layout(), table.buckets.len())
        };
        let mut grown = Table::with_layout(layout);
        let mut copy = |key, value| grown.set_key(key, value);
        for start in (0..buckets).step_by(GROWTH_CHUNK) {
            let range = start..(start + GROWTH_CHUNK).min(buckets);
            self.read().for_each_in(range, &mut copy);
        }
        for (&key, &value) in &self.read().overflow {
            grown.set_key(Key::Overflow(key), value);
        }
        let _only_inserter = lock(&self.inserting);
        let mut table = self.write();
        for (packed, value) in lock(&self.journal).take().unwrap_or_default() {
            grown.set(packed, value);
        }
        *table = grown;
    }
}

impl Default for RecordIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl RecordIndex {
    /// An empty index sized for `expected` numbers without growing.
    pub fn with_capacity(expected: usize) -> Self {
        Self::of(Table::with_layout(Layout::for_numbers(
            expected, SIZED_LOAD,
        )))
    }

    fn of(table: Table) -> Self {
        Self {
            inner: Arc::new(Inner {
                table: RwLock::new(table),
                inserting: Mutex::new(()),
                journal: Mutex::new(None),
                grown: Condvar::new(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.inner.read()
    }

    /// The memo of a number with records; `None` is exact: the number has none.
    pub fn get(&self, number: CitizenNumber) -> Option<Memo> {
        self.read().get(number.packed()).map(unpack)
    }

    /// [`RecordIndex::get`] for many numbers, in order: one lock for all, and each lookup's two
    /// buckets fetched from memory a few lookups ahead, so that the misses overlap.
    pub fn get_many(&self, numbers: &[CitizenNumber]) -> Vec<Option<Memo>> {
        let table = self.read();
        let probes = table.probes(numbers.iter().map(|number| number.packed()));
        numbers
            .iter()
            .zip(&probes)
            .enumerate()
            .map(|(at, (number, probe))| {
                table.prefetch_ahead(&probes, at);
                match probe {
                    Some(probe) => table.get_ranked(probe),
                    None => table.get(number.packed()),
                }
                .map(unpack)
            })
            .collect()
    }

    /// Sets the memos of numbers that have records, adding the numbers that are new: visible to
    /// the next lookup when this returns. Starts a growth when the table is full (see
    /// [`RecordIndex`]).
    pub fn insert(&self, memos: impl IntoIterator<Item = (CitizenNumber, Memo)>) {
        let values: Vec<(u64, u64)> = memos
            .into_iter()
            .map(|(number, memo)| (number.packed(), pack(memo)))
            .collect();
        self.wait_while_crowded();
        let inner = &self.inner;
        let _only_inserter = lock(&inner.inserting);
        let needs_growth = {
            let mut table = inner.write();
            // An import inserts every number: prefetched, as lookups are in `get_many`.
            let probes = table.probes(values.iter().map(|&(packed, _)| packed));
            for (at, (&(packed, value), probe)) in values.iter().zip(&probes).enumerate() {
                table.prefetch_ahead(&probes, at);
                match probe {
                    Some(probe) => table.set_probed(probe, value),
                    None => table.set(packed, value),
                }
            }
            table.needs_growth()
        };
        let mut journal = lock(&inner.journal);
        match journal.as_mut() {
            Some(journal) => journal.extend(values),
            None if needs_growth => {
                *journal = Some(Vec::new());
                drop(journal);
                let growing = Arc::clone(inner);
                let spawned = std::thread::Builder::new()
                    .name("index-growth".into())
                    .spawn(move || growing.grow());
                if spawned.is_err() {
                    // No thread to spare: this insert grows the table itself.
                    drop(_only_inserter);
                    inner.grow();
                }
            }
            None => {}
        }
    }

    /// Waits while a growth runs and the current table overflows too much to take more.
    fn wait_while_crowded(&self) {
        loop {
            let crowded = self.read().is_crowded();
            let journal = lock(&self.inner.journal);
            if !crowded || journal.is_none() {
                return;
            }
            drop(
                self.inner
                    .grown
                    .wait(journal)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
        }
    }

    /// Waits for a growth under way to end.
    pub fn settle(&self) {
        let mut journal = lock(&self.inner.journal);
        while journal.is_some() {
            journal = self
                .inner
                .grown
                .wait(journal)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// How many numbers the index holds.
    pub fn len(&self) -> usize {
        self.read().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the table (its buckets' words, little-endian, then the overflow's key and value
    /// pairs) to `out`, and returns what [`RecordIndex::read_slots`] needs to read it back.
    pub fn write_slots(&self, out: &mut impl Write) -> io::Result<SlotsHeader> {
        let table = self.read();
        let mut checksum = Xxh3::new();
        let mut chunk = Vec::with_capacity(BUCKET_CHUNK * 64);
        for buckets in table.buckets.chunks(BUCKET_CHUNK) {
            chunk.clear();
            for word in buckets.iter().flat_map(|bucket| bucket.0) {
                chunk.extend_from_slice(&word.to_le_bytes());
            }
            checksum.update(&chunk);
            out.write_all(&chunk)?;
        }
        for (&key, &value) in &table.overflow {
            let pair = [key.to_le_bytes(), value.to_le_bytes()].concat();
            checksum.update(&pair);
            out.write_all(&pair)?;
        }
        Ok(SlotsHeader {
            numbers: table.len as u64,
            buckets: table.layout.buckets,
            overflow: table.overflow.len() as u64,
            checksum: checksum.digest(),
        })
    }

    /// Reads back what [`RecordIndex::write_slots`] wrote, refusing it unless the bucket count is
    /// plausible, the checksum matches and the count of numbers is right.
    pub fn read_slots(input: &mut impl Read, header: SlotsHeader) -> io::Result<Self> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
        if !(MIN_BUCKETS..=MAX_BUCKETS).contains(&header.buckets) || header.overflow > 1 << 32 {
            return Err(invalid("implausible bucket or overflow count"));
        }
        let mut table = Table::with_layout(Layout::of(header.buckets));
        let mut checksum = Xxh3::new();
        let mut chunk = vec![0u8; BUCKET_CHUNK * 64];
        for buckets in table.buckets.chunks_mut(BUCKET_CHUNK) {
            let bytes = &mut chunk[..buckets.len() * 64];
            input.read_exact(bytes)?;
            checksum.update(bytes);
            for (word, raw) in buckets
                .iter_mut()
                .flat_map(|bucket| bucket.0.iter_mut())
                .zip(bytes.chunks_exact(8))
            {
                *word = u64::from_le_bytes(raw.try_into().unwrap_or_default());
            }
        }
        for _ in 0..header.overflow {
            let mut pair = [0u8; 16];
            input.read_exact(&mut pair)?;
            checksum.update(&pair);
            let half =
                |at: usize| u64::from_le_bytes(pair[at..at + 8].try_into().unwrap_or_default());
            table.overflow.insert(half(0), half(8));
        }
        if checksum.digest() != header.checksum {
            return Err(invalid("checksum mismatch"));
        }
        let mut numbers = 0;
        table.for_each(|_, _| numbers += 1);
        table.len = numbers;
        table.crowded = table.overflow.keys().filter(|&&key| key >> 63 == 1).count();
        if table.len as u64 != header.numbers {
            return Err(invalid("count of numbers does not match"));
        }
        Ok(Self::of(table))
    }

    /// The memory the table itself occupies, in bytes (the overflow map counted at its entries').
    pub fn table_bytes(&self) -> usize {
        let table = self.read();
        table.buckets.len() * std::mem::size_of::<Bucket>() + table.overflow.capacity() * 17
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(i: u64) -> CitizenNumber {
        // Division 110105, born 1949-12-31 plus i days' worth of sequence codes: valid and
        // rankable, spread over many birth dates.
        let born = date!(1949 - 12 - 31) + time::Duration::days((i / 1000) as i64);
        let birth = u64::from(born.year() as u32) * 10_000
            + u64::from(u8::from(born.month())) * 100
            + u64::from(born.day());
        CitizenNumber::from_packed(110_105 * 100_000_000_000 + birth * 1000 + i % 1000).unwrap()
    }

    /// A packed number from its 17 digits.
    fn packed(digits: &str) -> u64 {
        digits.parse().unwrap()
    }

    fn newest(day: i64, expiry: Expiry) -> Memo {
        at(date!(2010 - 03 - 01) + time::Duration::days(day), expiry)
    }

    fn at(issued: Date, expiry: Expiry) -> Memo {
        Memo::Newest { issued, expiry }
    }

    #[test]
    fn ranks_are_distinct_below_2_pow_46_and_only_for_valid_numbers() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let rank = rank(number(i).packed()).unwrap();
            assert!(rank < 1 << RANK_BITS && seen.insert(scatter(rank)));
        }
        assert_eq!(rank(packed("99010519491231002")), None, "province 99");
        assert_eq!(rank(packed("11010517991231002")), None, "born before 1800");
        assert_eq!(rank(packed("11010519491331002")), None, "month 13");
        let last = rank(packed("83000021511231999")).unwrap();
        assert!(last < 1 << RANK_BITS);
    }

    #[test]
    fn a_memo_packs_into_18_bits_exactly_or_becomes_consult() {
        let leap = date!(2012 - 02 - 29);
        // Each memo, and whether the index keeps it as it is (or as "consult the store").
        let cases = [
            (Memo::NothingInForce, true),
            (Memo::Consult, true),
            (newest(0, Expiry::Unknown), true),
            (newest(7, Expiry::Long), true),
            (at(leap, Expiry::On(date!(2022 - 02 - 28))), true),
            (at(leap, Expiry::On(date!(2032 - 02 - 29))), true),
            (at(leap, Expiry::On(date!(2022 - 03 - 01))), false),
            (at(date!(1989 - 12 - 31), Expiry::Long), false),
            (at(date!(2079 - 09 - 18), Expiry::Long), true),
            (at(date!(2079 - 09 - 19), Expiry::Long), false),
        ];
        for (memo, kept) in cases {
            let packed = pack(memo);
            assert!(packed < 1 << VALUE_BITS && packed >> DAY_BITS != CLASS_EMPTY);
            let expected = if kept { memo } else { Memo::Consult };
            assert_eq!(unpack(packed), expected, "{memo:?}");
        }
    }

    #[test]
    fn holds_exactly_what_was_set_across_growth_and_updates() {
        let index = RecordIndex::default();
        index.insert((0..60_000).map(|i| (number(i), newest(i as i64 % 5000, Expiry::Long))));
        index.insert((0..30_000).map(|i| (number(i), Memo::Consult)));
        // A number no valid one could be lives in the overflow map.
        let odd = CitizenNumber::from_packed(packed("99000000000000000")).unwrap();
        index.insert([(odd, Memo::NothingInForce)]);
        assert_eq!(index.len(), 60_001);
        assert_eq!(index.get(odd), Some(Memo::NothingInForce));
        for i in 0..60_000 {
            let expected = if i < 30_000 {
                Memo::Consult
            } else {
                newest(i as i64 % 5000, Expiry::Long)
            };
            assert_eq!(index.get(number(i)), Some(expected), "{i}");
        }
        assert!((60_000..120_000).all(|i| index.get(number(i)).is_none()));
        let numbers: Vec<CitizenNumber> = (29_990..60_010).map(number).chain([odd]).collect();
        let one_by_one: Vec<Option<Memo>> = numbers.iter().map(|&n| index.get(n)).collect();
        assert_eq!(index.get_many(&numbers), one_by_one);
        // The same once every growth has swapped its copy in.
        index.settle();
        assert_eq!(index.len(), 60_001);
        assert_eq!(index.get_many(&numbers), one_by_one);
        assert!(index.table_bytes() as f64 / 60_001.0 < 16.0);
    }

    #[test]
    fn saved_slots_read_back_identical_and_damage_is_refused() {
        let index = RecordIndex::default();
        index.insert((0..30_000).map(|i| (number(i), newest(i as i64 % 10_000, Expiry::Unknown))));
        let odd = CitizenNumber::from_packed(packed("99000000000000000")).unwrap();
        index.insert([(odd, Memo::Consult)]);
        let mut bytes = Vec::new();
        let header = index.write_slots(&mut bytes).unwrap();
        assert_eq!(header.numbers, 30_001);
        assert!(
            header.overflow >= 1,
            "the number that cannot be ranked overflows"
        );
        let loaded = RecordIndex::read_slots(&mut bytes.as_slice(), header).unwrap();
        assert_eq!(loaded.len(), 30_001);
        assert!(
            (0..30_000)
                .all(|i| loaded.get(number(i)) == Some(newest(i as i64 % 10_000, Expiry::Unknown)))
        );
        assert!((30_000..40_000).all(|i| loaded.get(number(i)).is_none()));
        assert_eq!(loaded.get(odd), Some(Memo::Consult));

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
        index.insert((0..1000).map(|i| (number(i), Memo::Consult)));
        let reader = {
            let index = std::sync::Arc::clone(&index);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while index.len() < 200_000 {
                    let seen = index.len() as u64;
                    for i in (0..seen).step_by(97) {
                        assert!(index.get(number(i)).is_some(), "{i} lost at {seen}");
                        checks += 1;
                    }
                }
                checks
            })
        };
        for chunk in (1000..200_000u64).collect::<Vec<_>>().chunks(1000) {
            index.insert(chunk.iter().map(|&i| (number(i), Memo::Consult)));
        }
        assert!(reader.join().unwrap() > 0);
        assert_eq!(index.len(), 200_000);
    }

    /// The module doc's arithmetic: sized for 1.4 billion citizens, or grown to them, the table
    /// takes under 6 bytes each (`benches/index.rs` builds it for real).
    #[test]
    fn a_national_table_takes_under_6_bytes_per_citizen() {
        let citizens = 1_400_000_000usize;
        for load in [SIZED_LOAD, GROWN_LOAD, MAX_LOAD] {
            let layout = Layout::for_numbers(citizens, load);
            let per_citizen = (layout.buckets * 64) as f64 / citizens as f64;
            assert!(per_citizen < 6.0, "{per_citizen} bytes at load {load}");
            assert!(layout.capacity() as f64 * MAX_LOAD >= citizens as f64);
        }
        let sized = Layout::for_numbers(citizens, SIZED_LOAD);
        assert_eq!(
            (sized.remainder_bits, sized.slot_bits, sized.slots),
            (20, 39, 13)
        );
    }

    /// Every slot of a table decodes back to the hash that was put in it, whichever of its two
    /// buckets it went to.
    #[test]
    fn slots_give_back_the_hashes_put_in_them() {
        for buckets in [64, 1000, 123_457] {
            let mut table = Table::with_layout(Layout::of(buckets));
            let hashes: Vec<u64> = (0..(buckets * 9)).map(|i| scatter(i * 7919 + 3)).collect();
            for (at, &hash) in hashes.iter().enumerate() {
                table.set_ranked(hash, (CLASS_LONG << DAY_BITS) | (at as u64 % 1000));
            }
            let mut given_back = Vec::new();
            table.for_each(|key, _| {
                given_back.push(match key {
                    Key::Hash(hash) => hash,
                    Key::Overflow(key) => key & RANK_MASK,
                })
            });
            let (mut expected, mut given_back) = (hashes.clone(), given_back);
            expected.sort_unstable();
            given_back.sort_unstable();
            assert_eq!(given_back, expected, "{buckets} buckets");
        }
    }
}
