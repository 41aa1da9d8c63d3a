//! Bulk import: loads an export of hundreds of millions of events by writing sorted SST files and
//! ingesting them, instead of committing them one group at a time through the writer.
//!
//! The outcome is the one the writer would reach (`DOMAIN.md` §3: the state is a fold of the set
//! of events), in memory bounded by a budget, with every sort done externally ([`crate::extsort`]):
//!
//! 1. [`BulkLoad::add`] takes validated events in file order. Card events (loss, issuance,
//!    revocation, cancellation) go to a log spool in file order and, keyed by `report_id`, to a
//!    sorter; withdrawals go to a spool of their own.
//! 2. The `report_id` sort is merged against the stored `reports` family: the first use of an id
//!    wins, the same content again is a duplicate, other content is refused.
//! 3. The log spool is read back in file order; each accepted event gets the next sequence and is
//!    written to the `events` SSTs, and its entry, keyed by number, goes to a second sorter.
//! 4. The accepted ids, still in id order, become the `reports` SSTs.
//! 5. The entries, merged by number with any stored state, are folded into the `citizens` SSTs,
//!    and the index of every number with a record is built on the way.
//! 6. The SSTs are ingested and the index saved. Then the withdrawals, whose effect depends on
//!    other events, are applied through the writer, in file order, by the code that applies them
//!    online.
//!
//! RocksDB ingests one column family at a time. So the SSTs are hard-linked aside and a marker is
//! written before ingestion starts; if a crash interrupts it, the next open ingests them again
//! (ingesting the same keys and values twice changes nothing) and only then serves.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use rocksdb::{Cache, DB, IngestExternalFileOptions, Options, SstFileWriter, WriteOptions};
use time::OffsetDateTime;
use xxhash_rust::xxh3::xxh3_128;

use super::codec::{self, ENTRY_BYTES, ReportSlot};
use super::writer::{Touches, what_it_touches};
use super::{
    ApplyError, CF_CITIZENS, CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, Corrupt, Store, StoreError,
    StoreOptions, column_family, family_options, last_sequence, open_db, snapshot, stored_event,
};
use crate::card::CitizenNumber;
use crate::event::{ValidEvent, validate_event};
use crate::extsort::{Runs, Sorter};
use crate::index::RecordIndex;
use crate::proto::{self, v1 as pb};
use crate::registry::{CitizenState, Entry, Fact};

/// The default column family's key marking an ingestion in progress.
const INGESTING_KEY: &[u8] = b"idguard.ingesting";
/// Where SSTs are kept while their ingestion may still have to be redone.
const KEPT_DIR: &str = "ingesting";
/// SST files are cut at about this size.
const SST_FILE_BYTES: u64 = 512 << 20;
/// Withdrawals in flight to the writer at once.
const WITHDRAWALS_IN_FLIGHT: usize = 1024;
/// How often (in records) a step reports progress.
const PROGRESS_EVERY: u64 = 1 << 16;

/// Where a record came from: the index of its input file and its line, for naming refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: u32,
    pub line: u64,
}

impl Origin {
    fn encode(self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.file.to_be_bytes());
        bytes[4..].copy_from_slice(&self.line.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Self {
        Self {
            file: u32::from_be_bytes(array(&bytes[..4])),
            line: u64::from_be_bytes(array(&bytes[4..12])),
        }
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[..N]);
    array
}

/// Why an imported record did not enter the registry (beyond breaking a rule of its own, which
/// the caller finds before [`BulkLoad::add`]).
#[derive(Debug)]
pub enum Refusal {
    /// The `report_id` was accepted before with other content.
    ConflictsWithStored { report_id: String, sequence: u64 },
    /// The `report_id` was used earlier in this import with other content.
    ConflictsWithEarlier { report_id: String, earlier: Origin },
    /// The writer refused a withdrawal (see [`ApplyError`]).
    Refused(ApplyError),
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkSummary {
    /// New events, now in the log.
    pub accepted: u64,
    /// Records whose `report_id` was already accepted with the same content.
    pub duplicates: u64,
    /// Records refused for a conflict, or withdrawals refused by the writer.
    pub refused: u64,
    /// The log's last sequence after the import.
    pub last_sequence: u64,
    /// Citizen numbers with a record, after the import.
    pub numbers: u64,
}

/// Reports how far a long step has got, for a progress display.
pub trait Progress {
    /// A step of `total` items starts.
    fn step(&mut self, name: &'static str, total: u64);
    /// `done` items of the current step are done.
    fn done(&mut self, done: u64);
}

/// An import in progress; see the module documentation for its steps.
pub struct BulkLoad {
    data_dir: PathBuf,
    work: PathBuf,
    db: DB,
    tuning: StoreOptions,
    memory_bytes: usize,
    /// The clock the events were validated against; also their `recorded_at`.
    now: OffsetDateTime,
    /// Stored withdrawals whose target had not arrived: target `report_id` → their sequences.
    waiting_withdrawals: HashMap<Vec<u8>, Vec<u64>>,
    by_report: Sorter,
    log: BufWriter<File>,
    withdrawals: BufWriter<File>,
    card_events: u64,
    withdrawal_events: u64,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::DataDir {
        path: path.to_owned(),
        why: format!("{what}: {error}"),
    }
}

impl BulkLoad {
    /// Opens (creating it if new) the registry in `data_dir` for an import, with exclusive
    /// access: a server cannot use it meanwhile. Temporary files go under `work_dir`, which should
    /// be on the data dir's file system (SSTs are moved, not copied, into the registry).
    pub fn open(
        data_dir: &Path,
        work_dir: &Path,
        memory_bytes: usize,
        tuning: StoreOptions,
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let db = open_db(data_dir, &tuning)?;
        let work = work_dir.to_owned();
        if work.exists() {
            std::fs::remove_dir_all(&work)
                .map_err(|error| io_error("clearing the work dir", &work, error))?;
        }
        std::fs::create_dir_all(&work)
            .map_err(|error| io_error("creating the work dir", &work, error))?;
        let create = |name: &str| -> Result<BufWriter<File>, StoreError> {
            let path = work.join(name);
            let file = File::create(&path).map_err(|error| io_error("creating", &path, error))?;
            Ok(BufWriter::with_capacity(1 << 20, file))
        };
        Ok(Self {
            waiting_withdrawals: waiting_withdrawals(&db)?,
            log: create("events.spool")?,
            withdrawals: create("withdrawals.spool")?,
            by_report: Sorter::new(&work, "by-report", memory_bytes),
            data_dir: data_dir.to_owned(),
            work,
            db,
            tuning,
            memory_bytes,
            now,
            card_events: 0,
            withdrawal_events: 0,
        })
    }

    /// The clock events are validated against.
    pub fn now(&self) -> OffsetDateTime {
        self.now
    }

    /// Takes one event that passed [`validate_event`], in file order.
    pub fn add(&mut self, origin: Origin, valid: &ValidEvent) -> Result<(), StoreError> {
        let spool_error = |error| io_error("writing a spool", &self.work, error);
        let canonical = valid.canonical.encode_to_vec();
        let (number, fact) = match what_it_touches(&valid.event.kind) {
            Touches::Withdrawal(_) => {
                self.withdrawal_events += 1;
                write_framed(&mut self.withdrawals, &origin.encode(), &canonical)
                    .map_err(spool_error)?;
                return Ok(());
            }
            Touches::Number(number, fact) => (number, fact),
        };
        let ordinal = self.card_events;
        self.card_events += 1;
        let report_id = valid.event.report_id.as_str().as_bytes();
        let mut key = Vec::with_capacity(report_id.len() + 8);
        key.extend_from_slice(report_id);
        key.extend_from_slice(&ordinal.to_be_bytes());
        let mut value = [0u8; 16 + 12 + 8];
        value[..16].copy_from_slice(&xxh3_128(&canonical).to_be_bytes());
        value[16..28].copy_from_slice(&origin.encode());
        value[28..].copy_from_slice(&number.packed().to_be_bytes());
        self.by_report
            .push(&key, &value)
            .map_err(|error| io_error("sorting", &self.work, error))?;

        let mut entries = vec![codec::encode_entry(&Entry {
            sequence: 0,
            occurred_at: valid.event.occurred_at,
            fact,
            withdrawn_by: None,
        })];
        for &sequence in self
            .waiting_withdrawals
            .get(report_id)
            .into_iter()
            .flatten()
        {
            entries.push(codec::encode_entry(&Entry {
                sequence,
                occurred_at: codec::occurred_at(&stored_event(&self.db, sequence)?)?,
                fact: Fact::Withdrawal { target: 0 },
                withdrawn_by: None,
            }));
        }
        let mut head = Vec::with_capacity(8 + entries.len() * ENTRY_BYTES);
        head.extend_from_slice(&number.packed().to_be_bytes());
        entries
            .iter()
            .for_each(|entry| head.extend_from_slice(entry));
        write_framed(&mut self.log, &head, &canonical).map_err(spool_error)
    }

    /// Runs steps 2 to 6 (see the module documentation), reporting refusals as it finds them.
    pub fn finish(
        self,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<BulkSummary, StoreError> {
        let BulkLoad {
            data_dir,
            work,
            db,
            tuning,
            memory_bytes,
            now,
            by_report,
            mut log,
            mut withdrawals,
            card_events,
            withdrawal_events,
            waiting_withdrawals: _,
        } = self;
        let spool_error = |error| io_error("writing a spool", &work, error);
        log.flush().map_err(spool_error)?;
        withdrawals.flush().map_err(spool_error)?;
        drop((log, withdrawals));
        let by_report = by_report
            .finish()
            .map_err(|error| io_error("sorting", &work, error))?;
        let collected = Collected {
            data_dir,
            work,
            db,
            memory_bytes,
            now,
            card_events,
        };
        let mut summary = collected.ingest(by_report, refused, progress)?;
        let Collected {
            data_dir, work, db, ..
        } = collected;
        // The writer's store opens the registry next; RocksDB allows one opener.
        drop(db);

        progress.step("applying withdrawals", withdrawal_events);
        let store = Store::open_with(&data_dir, &tuning)?;
        let spool = work.join("withdrawals.spool");
        apply_withdrawals(&store, &spool, now, &mut summary, refused, progress)?;
        summary.last_sequence = store.sequence();
        summary.numbers = store.index().len() as u64;
        drop(store);
        std::fs::remove_dir_all(&work).map_err(|error| io_error("removing", &work, error))?;
        Ok(summary)
    }
}

/// The registry and the spools once every record has been added.
struct Collected {
    data_dir: PathBuf,
    work: PathBuf,
    db: DB,
    memory_bytes: usize,
    now: OffsetDateTime,
    card_events: u64,
}

impl Collected {
    /// Steps 2 to 5, then ingestion and the saved index; closes the database.
    fn ingest(
        &self,
        by_report: Runs,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<BulkSummary, StoreError> {
        let last = last_sequence(&self.db)?;
        let mut summary = BulkSummary::default();
        let dropped = self.deduplicate(by_report, &mut summary, refused, progress)?;
        let sst_cache = Cache::new_lru_cache(8 << 20);
        let sst_options = family_options(&sst_cache);
        let (events, entries) = self.write_events(&sst_options, &dropped, last, progress)?;
        let reports = self.write_reports(&sst_options, &dropped, last, progress)?;
        let (citizens, index) = self.write_citizens(&sst_options, entries, progress)?;
        summary.accepted = self.card_events - dropped.count();
        summary.last_sequence = last + summary.accepted;

        progress.step("ingesting", 3);
        snapshot::discard(&self.data_dir).map_err(|why| StoreError::DataDir {
            path: self.data_dir.clone(),
            why,
        })?;
        let kept = self.data_dir.join(KEPT_DIR);
        std::fs::create_dir_all(&kept).map_err(|error| io_error("creating", &kept, error))?;
        for path in events.iter().chain(&reports).chain(&citizens) {
            let name = path.file_name().unwrap_or_default();
            std::fs::hard_link(path, kept.join(name))
                .map_err(|error| io_error("linking", path, error))?;
        }
        File::open(&kept)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| io_error("syncing", &kept, error))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.put_opt(INGESTING_KEY, b"1", &sync)?;
        for (done, (name, files)) in [
            (CF_EVENTS, &events),
            (CF_REPORTS, &reports),
            (CF_CITIZENS, &citizens),
        ]
        .into_iter()
        .enumerate()
        {
            ingest(&self.db, name, files)?;
            progress.done(done as u64 + 1);
        }
        let saved = snapshot::save(&self.data_dir, &self.db, &index, summary.last_sequence);
        if let Err(why) = saved {
            tracing::warn!(%why, "the next start will rebuild the index");
        }
        self.db.delete_opt(INGESTING_KEY, &sync)?;
        std::fs::remove_dir_all(&kept).map_err(|error| io_error("removing", &kept, error))?;
        Ok(summary)
    }

    /// Step 2: merges the `report_id` sort with the stored reports and marks every card event that
    /// does not enter (duplicate or conflict) in the returned set of ordinals. Writes the accepted
    /// ids, in id order, to `accepted.spool`.
    fn deduplicate(
        &self,
        by_report: Runs,
        summary: &mut BulkSummary,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<Ordinals, StoreError> {
        progress.step("checking report ids", by_report.len());
        let mut dropped = Ordinals::new(self.card_events);
        let accepted_path = self.work.join("accepted.spool");
        let mut accepted = BufWriter::with_capacity(
            1 << 20,
            File::create(&accepted_path)
                .map_err(|error| io_error("creating", &accepted_path, error))?,
        );
        let mut stored = self.db.raw_iterator_cf(column_family(&self.db, CF_REPORTS));
        stored.seek_to_first();
        /// The use of an id that the later ones are compared with.
        enum First {
            Stored { sequence: u64, hash: u128 },
            Imported { origin: Origin, hash: u128 },
        }
        let mut current: Option<(Vec<u8>, First)> = None;
        let mut seen = 0u64;
        by_report.merge(|key, value| -> Result<(), StoreError> {
            let (report_id, ordinal) = key.split_at(key.len() - 8);
            let ordinal = u64::from_be_bytes(array(ordinal));
            let hash = u128::from_be_bytes(array(&value[..16]));
            let origin = Origin::decode(&value[16..28]);
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            let first = match &current {
                Some((id, first)) if id == report_id => first,
                _ => {
                    while stored.key().is_some_and(|key| key < report_id) {
                        stored.next();
                    }
                    stored.status()?;
                    let first = match (stored.key(), stored.value()) {
                        (Some(key), Some(slot)) if key == report_id => {
                            let sequence = ReportSlot::decode(slot)?.sequence;
                            First::Stored {
                                sequence,
                                hash: stored_hash(&self.db, sequence)?,
                            }
                        }
                        _ => {
                            let mut body = [0u8; 16];
                            body[..8].copy_from_slice(&ordinal.to_be_bytes());
                            body[8..].copy_from_slice(&value[28..36]);
                            write_framed(&mut accepted, report_id, &body)?;
                            current = Some((report_id.to_vec(), First::Imported { origin, hash }));
                            return Ok(());
                        }
                    };
                    &current.insert((report_id.to_vec(), first)).1
                }
            };
            dropped.insert(ordinal);
            let report_id = String::from_utf8_lossy(report_id).into_owned();
            match *first {
                First::Stored { hash: h, .. } | First::Imported { hash: h, .. } if h == hash => {
                    summary.duplicates += 1;
                }
                First::Stored { sequence, .. } => {
                    summary.refused += 1;
                    refused(
                        origin,
                        Refusal::ConflictsWithStored {
                            report_id,
                            sequence,
                        },
                    );
                }
                First::Imported {
                    origin: earlier, ..
                } => {
                    summary.refused += 1;
                    refused(origin, Refusal::ConflictsWithEarlier { report_id, earlier });
                }
            }
            Ok(())
        })?;
        accepted
            .flush()
            .map_err(|error| io_error("writing", &accepted_path, error))?;
        dropped.count_ranks();
        Ok(dropped)
    }

    /// Step 3: the accepted card events in file order become the log's next sequences; their
    /// entries are sorted by number for step 5.
    fn write_events(
        &self,
        sst_options: &Options,
        dropped: &Ordinals,
        last: u64,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<PathBuf>, Runs), StoreError> {
        progress.step("writing events", self.card_events);
        let spool = self.work.join("events.spool");
        let mut input = BufReader::with_capacity(
            1 << 20,
            File::open(&spool).map_err(|error| io_error("opening", &spool, error))?,
        );
        let read_error = |error| io_error("reading", &spool, error);
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_EVENTS);
        let mut entries = Sorter::new(&self.work, "by-number", self.memory_bytes);
        let recorded_at = proto::timestamp(self.now);
        let (mut head, mut canonical, mut change) = (Vec::new(), Vec::new(), Vec::new());
        let mut sequence = last;
        for ordinal in 0..self.card_events {
            read_framed(&mut input, &mut head, &mut canonical).map_err(read_error)?;
            if ordinal.is_multiple_of(PROGRESS_EVERY) {
                progress.done(ordinal);
            }
            if dropped.contains(ordinal) {
                continue;
            }
            sequence += 1;
            encode_change(sequence, &canonical, &recorded_at, &mut change);
            ssts.put(&codec::sequence_key(sequence), &change)?;
            let (number, stated) = head.split_at(8);
            for (n, bytes) in stated.chunks_exact(ENTRY_BYTES).enumerate() {
                let mut entry = decode_stored_entry(bytes)?;
                if n == 0 {
                    entry.sequence = sequence;
                } else {
                    entry.fact = Fact::Withdrawal { target: sequence };
                }
                let mut key = [0u8; 8 + ENTRY_BYTES];
                key[..8].copy_from_slice(number);
                key[8..].copy_from_slice(&codec::encode_entry(&entry));
                entries
                    .push(&key, &[])
                    .map_err(|error| io_error("sorting", &self.work, error))?;
            }
        }
        let entries = entries
            .finish()
            .map_err(|error| io_error("sorting", &self.work, error))?;
        Ok((ssts.finish()?, entries))
    }

    /// Step 4: the accepted ids, in id order, with the sequences step 3 gave them.
    fn write_reports(
        &self,
        sst_options: &Options,
        dropped: &Ordinals,
        last: u64,
        progress: &mut dyn Progress,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let accepted = self.card_events - dropped.count();
        progress.step("writing report ids", accepted);
        let spool = self.work.join("accepted.spool");
        let mut input = BufReader::with_capacity(
            1 << 20,
            File::open(&spool).map_err(|error| io_error("opening", &spool, error))?,
        );
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_REPORTS);
        let (mut report_id, mut body) = (Vec::new(), Vec::new());
        for done in 0..accepted {
            // Each record: the id, then its ordinal and number.
            read_framed(&mut input, &mut report_id, &mut body)
                .map_err(|error| io_error("reading", &spool, error))?;
            let ordinal = u64::from_be_bytes(array(&body[..8]));
            let slot = ReportSlot {
                sequence: last + 1 + ordinal - dropped.rank(ordinal),
                number: CitizenNumber::from_packed(u64::from_be_bytes(array(&body[8..16]))),
            };
            ssts.put(&report_id, &slot.encode())?;
            if done.is_multiple_of(PROGRESS_EVERY) {
                progress.done(done);
            }
        }
        ssts.finish()
    }

    /// Step 5: each number's new entries folded into its stored state; every number with a
    /// record, stored or new, goes into the index.
    fn write_citizens(
        &self,
        sst_options: &Options,
        entries: Runs,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<PathBuf>, RecordIndex), StoreError> {
        progress.step("folding citizens", entries.len());
        let cf = column_family(&self.db, CF_CITIZENS);
        let estimate = self
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")?
            .unwrap_or(0);
        let mut stored = StoredCitizens {
            keys: self.db.raw_iterator_cf(cf),
            index: RecordIndex::with_capacity(usize::try_from(estimate).unwrap_or(0)),
            indexed: Vec::with_capacity(4096),
        };
        stored.keys.seek_to_first();
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_CITIZENS);
        let mut fold = |number: u64, new: Vec<Entry>| -> Result<(), StoreError> {
            let mut state = stored.through(number)?.unwrap_or_default();
            // A withdrawal marks a target already recorded, as the writer records them.
            let (withdrawals, facts): (Vec<Entry>, Vec<Entry>) = new
                .into_iter()
                .partition(|entry| matches!(entry.fact, Fact::Withdrawal { .. }));
            facts
                .into_iter()
                .chain(withdrawals)
                .for_each(|entry| state.record(entry));
            ssts.put(&number.to_be_bytes(), &codec::encode_citizen(&state))
        };
        let mut group: Option<(u64, Vec<Entry>)> = None;
        let mut seen = 0u64;
        entries.merge(|key, _| -> Result<(), StoreError> {
            let number = u64::from_be_bytes(array(&key[..8]));
            let entry = decode_stored_entry(&key[8..])?;
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            match &mut group {
                Some((current, new)) if *current == number => new.push(entry),
                _ => {
                    if let Some((current, new)) = group.replace((number, vec![entry])) {
                        fold(current, new)?;
                    }
                }
            }
            Ok(())
        })?;
        if let Some((current, new)) = group.take() {
            fold(current, new)?;
        }
        Ok((ssts.finish()?, stored.rest()?))
    }
}

/// The stored citizen keys, walked in step with the new entries' numbers, indexing every number
/// passed.
struct StoredCitizens<'db> {
    keys: rocksdb::DBRawIterator<'db>,
    index: RecordIndex,
    indexed: Vec<CitizenNumber>,
}

impl StoredCitizens<'_> {
    /// Indexes every stored number up to `number` and `number` itself, and returns its stored
    /// state, if any.
    fn through(&mut self, number: u64) -> Result<Option<CitizenState>, StoreError> {
        let key = number.to_be_bytes();
        let mut state = None;
        while let Some(stored) = self.keys.key() {
            if stored > &key[..] {
                break;
            }
            if stored == key {
                state = Some(codec::decode_citizen(
                    self.keys.value().unwrap_or_default(),
                )?);
            } else {
                self.indexed.push(codec::decode_citizen_key(stored)?);
            }
            self.keys.next();
        }
        self.keys.status()?;
        self.indexed.push(codec::decode_citizen_key(&key)?);
        if self.indexed.len() >= 4096 {
            self.index.insert(self.indexed.drain(..));
        }
        Ok(state)
    }

    /// Indexes the stored numbers after the last new one and returns the index.
    fn rest(mut self) -> Result<RecordIndex, StoreError> {
        while let Some(stored) = self.keys.key() {
            self.indexed.push(codec::decode_citizen_key(stored)?);
            self.keys.next();
        }
        self.keys.status()?;
        self.index.insert(self.indexed);
        Ok(self.index)
    }
}

/// A set of ordinals (card events that did not enter), with ranks: how many are below a given
/// ordinal, which turns an ordinal into a sequence.
struct Ordinals {
    bits: Vec<u64>,
    /// Members in the words before each word, once counted.
    below: Vec<u64>,
}

impl Ordinals {
    fn new(capacity: u64) -> Self {
        Self {
            bits: vec![0; capacity.div_ceil(64) as usize],
            below: Vec::new(),
        }
    }

    fn insert(&mut self, ordinal: u64) {
        self.bits[(ordinal / 64) as usize] |= 1 << (ordinal % 64);
    }

    fn contains(&self, ordinal: u64) -> bool {
        self.bits[(ordinal / 64) as usize] & (1 << (ordinal % 64)) != 0
    }

    fn count_ranks(&mut self) {
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

    fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// Members below `ordinal` (after [`Ordinals::count_ranks`]).
    fn rank(&self, ordinal: u64) -> u64 {
        let word = (ordinal / 64) as usize;
        let below_in_word = self.bits[word] & ((1u64 << (ordinal % 64)) - 1);
        self.below[word] + u64::from(below_in_word.count_ones())
    }
}

/// SST files of one column family, cut at [`SST_FILE_BYTES`]; keys must come in order.
struct SstFiles<'a> {
    options: &'a Options,
    dir: PathBuf,
    family: &'static str,
    writer: Option<SstFileWriter<'a>>,
    puts: u64,
    files: Vec<PathBuf>,
}

impl<'a> SstFiles<'a> {
    fn new(options: &'a Options, dir: &Path, family: &'static str) -> Self {
        Self {
            options,
            dir: dir.to_owned(),
            family,
            writer: None,
            puts: 0,
            files: Vec::new(),
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let path = self
                    .dir
                    .join(format!("{}-{:05}.sst", self.family, self.files.len()));
                let writer = SstFileWriter::create(self.options);
                writer.open(&path)?;
                self.files.push(path);
                self.writer.insert(writer)
            }
        };
        writer.put(key, value)?;
        self.puts += 1;
        if self.puts.is_multiple_of(4096) && writer.file_size() >= SST_FILE_BYTES {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<(), StoreError> {
        if let Some(mut writer) = self.writer.take() {
            writer.finish()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<PathBuf>, StoreError> {
        self.cut()?;
        Ok(self.files)
    }
}

/// Ingests SSTs into a family, moving (hard-linking) them in rather than copying.
fn ingest(db: &DB, family: &'static str, files: &[PathBuf]) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut options = IngestExternalFileOptions::default();
    options.set_move_files(true);
    db.ingest_external_file_cf_opts(column_family(db, family), &options, files.to_vec())?;
    Ok(())
}

/// Ingests again the SSTs of an ingestion a crash interrupted (see the module documentation).
pub(super) fn finish_interrupted_ingestion(data_dir: &Path, db: &DB) -> Result<(), StoreError> {
    if db.get(INGESTING_KEY)?.is_none() {
        return Ok(());
    }
    let kept = data_dir.join(KEPT_DIR);
    tracing::warn!(dir = %kept.display(), "completing an import that was interrupted");
    let refuse = |why: String| StoreError::DataDir {
        path: data_dir.to_owned(),
        why,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kept)
        .map_err(|error| refuse(format!("an interrupted import left no {KEPT_DIR}: {error}")))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(|error| refuse(error.to_string()))?;
    files.sort();
    for family in [CF_EVENTS, CF_REPORTS, CF_CITIZENS] {
        let prefix = format!("{family}-");
        let of_family: Vec<PathBuf> = files
            .iter()
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix))
            })
            .cloned()
            .collect();
        ingest(db, family, &of_family)?;
    }
    snapshot::discard(data_dir).map_err(refuse)?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.delete_opt(INGESTING_KEY, &sync)?;
    std::fs::remove_dir_all(&kept).map_err(|error| refuse(error.to_string()))?;
    Ok(())
}

/// Step 6: the withdrawals, through the writer, many in flight, in file order.
fn apply_withdrawals(
    store: &Store,
    spool: &Path,
    now: OffsetDateTime,
    summary: &mut BulkSummary,
    refused: &mut dyn FnMut(Origin, Refusal),
    progress: &mut dyn Progress,
) -> Result<(), StoreError> {
    let mut input = BufReader::with_capacity(
        1 << 20,
        File::open(spool).map_err(|error| io_error("opening", spool, error))?,
    );
    let mut in_flight = VecDeque::with_capacity(WITHDRAWALS_IN_FLIGHT);
    let (mut head, mut canonical) = (Vec::new(), Vec::new());
    let mut settle = |origin: Origin,
                      outcome: Result<super::Applied, ApplyError>,
                      summary: &mut BulkSummary|
     -> Result<(), StoreError> {
        match outcome {
            Ok(applied) if applied.duplicate => summary.duplicates += 1,
            Ok(_) => summary.accepted += 1,
            Err(ApplyError::Store(error)) => return Err(error),
            Err(ApplyError::Closed) => {
                return Err(StoreError::Interrupted("the writer stopped".into()));
            }
            Err(refusal) => {
                summary.refused += 1;
                refused(origin, Refusal::Refused(refusal));
            }
        }
        Ok(())
    };
    let mut done = 0u64;
    loop {
        match read_framed(&mut input, &mut head, &mut canonical) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(io_error("reading", spool, error)),
        }
        let origin = Origin::decode(&head);
        let wire = pb::RegistryEvent::decode(canonical.as_slice())
            .map_err(|error| io_error("reading", spool, std::io::Error::other(error)))?;
        match validate_event(&wire, now) {
            Ok(valid) => in_flight.push_back((origin, store.enqueue_blocking(valid)?)),
            Err(error) => settle(origin, Err(error.into()), summary)?,
        }
        if in_flight.len() == WITHDRAWALS_IN_FLIGHT
            && let Some((origin, pending)) = in_flight.pop_front()
        {
            settle(origin, pending.outcome_blocking(), summary)?;
        }
        done += 1;
        if done.is_multiple_of(1024) {
            progress.done(done);
        }
    }
    for (origin, pending) in in_flight {
        settle(origin, pending.outcome_blocking(), summary)?;
    }
    progress.done(done);
    Ok(())
}

/// The stored withdrawals still waiting for their target, by target.
fn waiting_withdrawals(db: &DB) -> Result<HashMap<Vec<u8>, Vec<u64>>, StoreError> {
    let mut waiting: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let mut keys = db.raw_iterator_cf(column_family(db, CF_WITHDRAWALS));
    keys.seek_to_first();
    while let Some(key) = keys.key() {
        let (target, sequence) = codec::decode_withdrawal_key(key)?;
        waiting.entry(target.to_vec()).or_default().push(sequence);
        keys.next();
    }
    keys.status()?;
    Ok(waiting)
}

/// The content hash of the stored event with this sequence, comparable with an imported one's.
fn stored_hash(db: &DB, sequence: u64) -> Result<u128, StoreError> {
    let event = stored_event(db, sequence)?.event.unwrap_or_default();
    Ok(xxh3_128(&event.encode_to_vec()))
}

fn decode_stored_entry(bytes: &[u8]) -> Result<Entry, Corrupt> {
    codec::decode_entry(bytes).map_err(|why| Corrupt {
        what: "import spool entry",
        why,
    })
}

/// The `RegistryChange` bytes prost would write, built around already-encoded event bytes.
fn encode_change(
    sequence: u64,
    canonical: &[u8],
    recorded_at: &prost_types::Timestamp,
    out: &mut Vec<u8>,
) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    out.clear();
    prost::encoding::uint64::encode(1, &sequence, out);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(canonical.len() as u64, out);
    out.extend_from_slice(canonical);
    prost::encoding::message::encode(3, recorded_at, out);
}

/// Writes a record as a `u32` head length, the head, a `u32` body length and the body.
fn write_framed(out: &mut impl Write, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    for part in [head, body] {
        out.write_all(&(part.len() as u32).to_le_bytes())?;
        out.write_all(part)?;
    }
    Ok(())
}

/// Reads what [`write_framed`] wrote.
fn read_framed(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_encoded_as_prost_encodes_them() {
        let event = pb::RegistryEvent {
            report_id: "r-1".into(),
            authority: "440305".into(),
            ..Default::default()
        };
        let recorded_at = prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 5,
        };
        let mut ours = Vec::new();
        encode_change(300, &event.encode_to_vec(), &recorded_at, &mut ours);
        let theirs = pb::RegistryChange {
            sequence: 300,
            event: Some(event),
            recorded_at: Some(recorded_at),
        }
        .encode_to_vec();
        assert_eq!(ours, theirs);
    }

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
}
