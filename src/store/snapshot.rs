//! The index saved at a clean stop, so that a restart of a registry with hundreds of millions of
//! numbers loads it instead of scanning every citizen key.
//!
//! The file is trusted only as far as it proves itself: it carries the sequence it reflects and a
//! fingerprint of the event at that sequence (so it belongs to *this* event log), and a checksum of
//! its slots. Events after its sequence (written after a crash, say) are replayed into it from the
//! log (each touched number's memo read again from its stored state), and a sample of stored
//! numbers must be found in it. Anything else, and the index is
//! rebuilt from RocksDB.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use rocksdb::DB;
use xxhash_rust::xxh3::xxh3_64;

use super::{CF_CITIZENS, CF_EVENTS, CF_REPORTS, codec, column_family};
use crate::card::{CitizenNumber, parse_registrable_number};
use crate::event::{ReportId, ReportKey};
use crate::proto::v1 as pb;
use crate::store::index::{RecordIndex, SlotsHeader};

const FILE_NAME: &str = "idguard-index.snapshot";
/// Version 2 holds each number's memo beside it; a version-1 file is not used (the index is
/// rebuilt once).
const MAGIC: &[u8; 8] = b"IDGIDX02";
const HEADER_BYTES: usize = 8 + 8 * 6;
/// Stored numbers looked up in a loaded index before it is trusted.
const SAMPLE: usize = 4096;

/// A fingerprint of the event log at `sequence`: the hash of the last event stored at or before
/// it (a cluster node's log may have a hole at `sequence` itself); 0 for none.
fn anchor(db: &DB, sequence: u64) -> Result<u64, String> {
    let mut log = db.raw_iterator_cf(column_family(db, CF_EVENTS));
    log.seek_for_prev(codec::sequence_key(sequence));
    log.status().map_err(|error| error.to_string())?;
    Ok(log.value().map_or(0, xxh3_64))
}

/// Saves `index`, which reflects the log up to `sequence`, atomically (temp file, sync, rename).
pub(super) fn save(
    data_dir: &Path,
    db: &DB,
    index: &RecordIndex,
    sequence: u64,
) -> Result<(), String> {
    let anchor = anchor(db, sequence)?;
    let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
    let write = || -> io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
        out.write_all(&[0; HEADER_BYTES])?;
        let slots = index.write_slots(&mut out)?;
        out.seek(SeekFrom::Start(0))?;
        out.write_all(MAGIC)?;
        for field in [
            sequence,
            anchor,
            slots.numbers,
            slots.buckets,
            slots.overflow,
            slots.checksum,
        ] {
            out.write_all(&field.to_le_bytes())?;
        }
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&temporary, data_dir.join(FILE_NAME))
    };
    write().map_err(|error| format!("saving the index: {error}"))
}

/// Removes the saved index, before a change to the registry it could not follow (a bulk import).
pub(super) fn discard(data_dir: &Path) -> Result<(), String> {
    match std::fs::remove_file(data_dir.join(FILE_NAME)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(format!("removing the saved index: {error}"))
        }
        _ => Ok(()),
    }
}

/// Loads the saved index, brought up to `last` from the log; `Ok(None)` when there is none, and
/// `Err` saying why one was not used.
pub(super) fn load(data_dir: &Path, db: &DB, last: u64) -> Result<Option<RecordIndex>, String> {
    let file = match File::open(data_dir.join(FILE_NAME)) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_BYTES];
    input
        .read_exact(&mut header)
        .map_err(|error| error.to_string())?;
    if &header[..8] != MAGIC {
        return Err("not an idguard index snapshot of this version".into());
    }
    let field =
        |n: usize| u64::from_le_bytes(header[8 + 8 * n..16 + 8 * n].try_into().unwrap_or_default());
    let (sequence, saved_anchor) = (field(0), field(1));
    if sequence > last {
        return Err(format!(
            "it reflects sequence {sequence}, beyond the log's last, {last}"
        ));
    }
    if anchor(db, sequence)? != saved_anchor {
        return Err(format!(
            "it was saved from another event log (sequence {sequence} differs)"
        ));
    }
    let slots = SlotsHeader {
        numbers: field(2),
        buckets: field(3),
        overflow: field(4),
        checksum: field(5),
    };
    let index = RecordIndex::read_slots(&mut input, slots).map_err(|error| error.to_string())?;
    replay(db, &index, sequence + 1)?;
    sample_agrees(db, &index)?;
    Ok(Some(index))
}

/// Brings the memos of the numbers touched by events from `from` on up to date, from their
/// stored states.
fn replay(db: &DB, index: &RecordIndex, from: u64) -> Result<(), String> {
    let mut log = db.raw_iterator_cf(column_family(db, CF_EVENTS));
    log.seek(codec::sequence_key(from));
    let mut touched = BTreeSet::new();
    while let Some(value) = log.value() {
        let change = codec::decode_change(value).map_err(|error| error.to_string())?;
        if let Some(event) = &change.event {
            touched.extend(touched_number(db, event)?);
        }
        log.next();
    }
    log.status().map_err(|error| error.to_string())?;
    let citizens = column_family(db, CF_CITIZENS);
    let keys: Vec<[u8; 8]> = touched.into_iter().map(codec::citizen_key).collect();
    let mut memos = Vec::with_capacity(keys.len());
    for (key, found) in keys
        .iter()
        .zip(db.batched_multi_get_cf(citizens, &keys, false))
    {
        if let Some(value) = found.map_err(|error| error.to_string())? {
            memos.push(codec::decode_citizen_memo(key, &value).map_err(|error| error.to_string())?);
        }
    }
    index.insert(memos);
    Ok(())
}

/// The number an event touches: the one it names, or for a withdrawal its target's, if the
/// target had arrived (one that arrives later names the number itself).
fn touched_number(db: &DB, event: &pb::RegistryEvent) -> Result<Option<CitizenNumber>, String> {
    use pb::registry_event::Kind;
    let text = match event.kind.as_ref() {
        Some(
            Kind::Reported(pb::CardReported { card, .. })
            | Kind::Issued(pb::CardIssued { card })
            | Kind::Revoked(pb::CardRevoked { card, .. }),
        ) => card.as_ref().map(|card| &card.id_number),
        Some(Kind::Cancelled(cancelled)) => Some(&cancelled.id_number),
        Some(Kind::Withdrawn(withdrawn)) => {
            // Stored events were validated when accepted.
            let target = ReportId::parse(&withdrawn.withdrawn_report_id)
                .map_err(|rule| format!("a stored withdrawal's target: {rule}"))?;
            let slot = db
                .get_pinned_cf(
                    column_family(db, CF_REPORTS),
                    ReportKey::new(&event.authority, &target).as_bytes(),
                )
                .map_err(|error| error.to_string())?;
            return match slot {
                Some(slot) => Ok(codec::ReportSlot::decode(&slot)
                    .map_err(|error| error.to_string())?
                    .number),
                None => Ok(None),
            };
        }
        None => None,
    };
    // Stored numbers were validated when accepted; any birth date is in the past by now.
    Ok(text.and_then(|text| parse_registrable_number(text, time::Date::MAX).ok()))
}

/// Checks that stored numbers, from the start and from the middle of the key space, are in the
/// loaded index.
fn sample_agrees(db: &DB, index: &RecordIndex) -> Result<(), String> {
    let mut keys = db.raw_iterator_cf(column_family(db, CF_CITIZENS));
    for start in [0u64, 44_000_000_000_000_000] {
        keys.seek(start.to_be_bytes());
        for _ in 0..SAMPLE / 2 {
            let Some(key) = keys.key() else { break };
            let number = codec::decode_citizen_key(key).map_err(|error| error.to_string())?;
            if index.get(number).is_none() {
                return Err(format!(
                    "stored number {} is missing from it",
                    number.masked()
                ));
            }
            keys.next();
        }
    }
    keys.status().map_err(|error| error.to_string())
}
