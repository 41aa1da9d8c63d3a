//! An external merge sort of byte records, so that a bulk import of hundreds of millions of
//! events sorts them in a fixed amount of memory.
//!
//! Records are `(key, value)` byte strings ordered by key (bytewise, the order RocksDB keys sort
//! in). They collect in one flat arena until it reaches the memory budget; the arena is then sorted
//! and written out as a run file. [`Sorter::finish`] writes the last run, and [`Runs::merge`]
//! streams every record back in key order with a k-way merge that reads each run sequentially.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Bytes of buffered reading per run while merging.
const RUN_READ_BUFFER: usize = 1 << 20;

/// Collects records and spills them to sorted runs whenever `budget` bytes are buffered.
///
/// A full buffer is sorted and written by a thread of its own while the next one fills, so the
/// budget is split between the two. The two buffers are allocated once, at their full size, and
/// reused run after run: grown by doubling and freed after each run, they were copied on every
/// doubling and their pages faulted in afresh each time, which the kernel zeroes (a sixth of an
/// import's CPU time at 5M events, in `perf`).
pub struct Sorter {
    dir: PathBuf,
    name: &'static str,
    budget: usize,
    buffer: Buffer,
    /// The other buffer, back from the last run written; `None` before the first spill.
    spare: Option<Buffer>,
    runs: Vec<PathBuf>,
    /// The run being written in the background, which hands its buffer back, emptied.
    spilling: Option<JoinHandle<io::Result<Buffer>>>,
    count: u64,
}

/// Records as they are collected: their bytes in one arena, and an index to sort.
struct Buffer {
    arena: Vec<u8>,
    /// Per record: the first 8 key bytes (most comparisons end there) and its arena offset.
    records: Vec<(u64, usize)>,
}

impl Buffer {
    /// A buffer that holds `budget` bytes (arena and index together, see [`Sorter::push`])
    /// without growing, for records of 16 bytes or more (an import's are 60 to 100): reserved
    /// address space, whose pages cost nothing until records reach them.
    fn with_budget(budget: usize) -> Self {
        Self {
            arena: Vec::with_capacity(budget),
            records: Vec::with_capacity(budget / 32),
        }
    }

    fn bytes(&self) -> usize {
        self.arena.len() + self.records.len() * std::mem::size_of::<(u64, usize)>()
    }
}

/// The sorted runs of a finished [`Sorter`].
pub struct Runs {
    runs: Vec<PathBuf>,
    count: u64,
}

fn key_prefix(key: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = key.len().min(8);
    prefix[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(prefix)
}

/// The key and value stored at `offset`: a `u16` key length, a `u32` value length, then both.
fn record_at(arena: &[u8], offset: usize) -> (&[u8], &[u8]) {
    let key_len = u16::from_le_bytes([arena[offset], arena[offset + 1]]) as usize;
    let mut value_len = [0u8; 4];
    value_len.copy_from_slice(&arena[offset + 2..offset + 6]);
    let value_len = u32::from_le_bytes(value_len) as usize;
    let key_start = offset + 6;
    let value_start = key_start + key_len;
    (
        &arena[key_start..value_start],
        &arena[value_start..value_start + value_len],
    )
}

impl Sorter {
    /// A sorter writing its runs as `dir/name-N.run`, buffering about `budget` bytes.
    pub fn new(dir: &Path, name: &'static str, budget: usize) -> Self {
        let budget = (budget / 2).max(1 << 16);
        Self {
            dir: dir.to_owned(),
            name,
            budget,
            buffer: Buffer::with_budget(budget),
            spare: None,
            runs: Vec::new(),
            spilling: None,
            count: 0,
        }
    }

    /// Adds one record. Keys are at most 64 KiB; values at most 4 GiB.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let key_len = u16::try_from(key.len()).map_err(io::Error::other)?;
        let value_len = u32::try_from(value.len()).map_err(io::Error::other)?;
        let Buffer { arena, records } = &mut self.buffer;
        records.push((key_prefix(key), arena.len()));
        arena.extend_from_slice(&key_len.to_le_bytes());
        arena.extend_from_slice(&value_len.to_le_bytes());
        arena.extend_from_slice(key);
        arena.extend_from_slice(value);
        self.count += 1;
        if self.buffer.bytes() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.wait_for_spill()?;
        if self.buffer.records.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{}-{}.run", self.name, self.runs.len()));
        self.runs.push(path.clone());
        let next = match self.spare.take() {
            Some(spare) => spare,
            None => Buffer::with_budget(self.budget),
        };
        let full = std::mem::replace(&mut self.buffer, next);
        self.spilling = Some(std::thread::spawn(move || write_run(&path, full)));
        Ok(())
    }

    fn wait_for_spill(&mut self) -> io::Result<()> {
        if let Some(spilling) = self.spilling.take() {
            let emptied = spilling
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            self.spare = Some(emptied);
        }
        Ok(())
    }

    /// Writes what is still buffered and frees the buffers.
    pub fn finish(mut self) -> io::Result<Runs> {
        self.spill()?;
        self.wait_for_spill()?;
        Ok(Runs {
            runs: std::mem::take(&mut self.runs),
            count: self.count,
        })
    }
}

/// Sorts a buffer by key, writes it out as a run, and hands it back emptied for the next one.
fn write_run(path: &Path, mut buffer: Buffer) -> io::Result<Buffer> {
    let Buffer { arena, records } = &mut buffer;
    records.sort_unstable_by(|(a_prefix, a), (b_prefix, b)| {
        a_prefix
            .cmp(b_prefix)
            .then_with(|| record_at(arena, *a).0.cmp(record_at(arena, *b).0))
    });
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    for &(_, offset) in records.iter() {
        let (key, value) = record_at(arena, offset);
        out.write_all(&arena[offset..offset + 6 + key.len() + value.len()])?;
    }
    out.flush()?;
    arena.clear();
    records.clear();
    Ok(buffer)
}

/// Whether a read of the next record of a file read to its end got one: `false` when the file
/// ended where a record would start. Sort runs and import spools are both read this way.
pub(crate) fn read_more(read: io::Result<()>) -> io::Result<bool> {
    match read {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error),
    }
}

/// One run being read during a merge, holding its current record.
struct Cursor {
    input: BufReader<File>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Cursor {
    /// Reads the next record into the cursor; `false` at the end of the run.
    fn advance(&mut self) -> io::Result<bool> {
        let mut lengths = [0u8; 6];
        if !read_more(self.input.read_exact(&mut lengths))? {
            return Ok(false);
        }
        let key_len = u16::from_le_bytes([lengths[0], lengths[1]]) as usize;
        let value_len =
            u32::from_le_bytes([lengths[2], lengths[3], lengths[4], lengths[5]]) as usize;
        self.key.resize(key_len, 0);
        self.input.read_exact(&mut self.key)?;
        self.value.resize(value_len, 0);
        self.input.read_exact(&mut self.value)?;
        Ok(true)
    }
}

impl Runs {
    /// How many records were sorted.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Calls `each` with every record in key order, then deletes the run files.
    pub fn merge<E>(self, mut each: impl FnMut(&[u8], &[u8]) -> Result<(), E>) -> Result<(), E>
    where
        E: From<io::Error>,
    {
        let mut cursors = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::with_capacity(self.runs.len());
        for path in &self.runs {
            let mut cursor = Cursor {
                input: BufReader::with_capacity(RUN_READ_BUFFER, File::open(path)?),
                key: Vec::new(),
                value: Vec::new(),
            };
            if cursor.advance()? {
                heap.push(Reverse((cursor.key.clone(), cursors.len())));
            }
            cursors.push(cursor);
        }
        while let Some(Reverse((mut key, run))) = heap.pop() {
            let cursor = &mut cursors[run];
            each(&cursor.key, &cursor.value)?;
            if cursor.advance()? {
                key.clear();
                key.extend_from_slice(&cursor.key);
                heap.push(Reverse((key, run)));
            }
        }
        drop(cursors);
        for path in &self.runs {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn merged_runs_come_back_in_key_order_with_their_values(
            records in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..12), proptest::collection::vec(any::<u8>(), 0..6)),
                0..400,
            ),
            budget in 1usize..4096,
        ) {
            let dir = tempfile::tempdir().unwrap();
            // A tiny budget forces many runs; the floor of 64 KiB is bypassed on purpose.
            let mut sorter = Sorter::new(dir.path(), "t", 0);
            sorter.budget = budget;
            for (key, value) in &records {
                sorter.push(key, value).unwrap();
            }
            let runs = sorter.finish().unwrap();
            prop_assert_eq!(runs.len(), records.len() as u64);
            let mut merged = Vec::new();
            runs.merge(|key, value| -> io::Result<()> {
                merged.push((key.to_vec(), value.to_vec()));
                Ok(())
            }).unwrap();
            let mut expected = records.clone();
            expected.sort();
            let mut got = merged.clone();
            got.sort();
            prop_assert_eq!(got, expected);
            prop_assert!(merged.windows(2).all(|pair| pair[0].0 <= pair[1].0));
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
