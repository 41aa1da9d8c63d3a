//! The import's temporary files, laid out by hand because they are written once and read once,
//! in order: framed records (a head and a body) and sort keys.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::Origin;
use super::extsort::Sorter;
use crate::registry::Entry;
use crate::store::codec::{self, ENTRY_BYTES};
use crate::store::{Corrupt, StoreError};

impl Origin {
    pub(super) fn encode(self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.file.to_be_bytes());
        bytes[4..].copy_from_slice(&self.line.to_be_bytes());
        bytes
    }

    pub(super) fn decode(bytes: &[u8]) -> Self {
        Self {
            file: u32::from_be_bytes(array(&bytes[..4])),
            line: u64::from_be_bytes(array(&bytes[4..12])),
        }
    }
}

pub(super) fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[..N]);
    array
}

pub(super) fn io_error(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::data_dir(path, format!("{what}: {error}"))
}

pub(super) fn create_spool(path: &Path) -> Result<BufWriter<File>, StoreError> {
    let file = File::create(path).map_err(|error| io_error("creating", path, error))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

pub(super) fn open_spool(path: &Path) -> Result<BufReader<File>, StoreError> {
    let file = File::open(path).map_err(|error| io_error("opening", path, error))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

/// Writes a record as a `u32` head length, the head, a `u32` body length and the body.
pub(super) fn write_framed(out: &mut impl Write, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    for part in [head, body] {
        out.write_all(&(part.len() as u32).to_le_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads what [`write_framed`] wrote.
pub(super) fn read_framed(
    input: &mut impl Read,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> std::io::Result<()> {
    for part in [head, body] {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        part.resize(u32::from_le_bytes(len) as usize, 0);
        input.read_exact(part)?;
    }
    Ok(())
}

pub(super) fn corrupt_spool(why: &str) -> StoreError {
    Corrupt {
        what: "import spool",
        why: why.into(),
    }
    .into()
}

pub(super) fn decode_spooled_entry(bytes: &[u8]) -> Result<Entry, Corrupt> {
    codec::decode_entry(bytes).map_err(|why| Corrupt {
        what: "import spool entry",
        why,
    })
}

/// The spooled head of a withdrawal, whose change records its sender's grant; a card event's
/// head is empty.
pub(super) const WITHDRAWAL_HEAD: &[u8] = &[1];

/// Entries sorted by number, then sequence (an entry's encoding starts with its sequence).
pub(super) struct EntrySort(pub(super) Sorter);

impl EntrySort {
    pub(super) fn push(&mut self, number: u64, entry: &Entry) -> Result<(), StoreError> {
        let mut key = [0u8; 8 + ENTRY_BYTES];
        key[..8].copy_from_slice(&number.to_be_bytes());
        key[8..].copy_from_slice(&codec::encode_entry(entry));
        Ok(self.0.push(&key, &[])?)
    }
}
