//! Bulk import: loads an export of hundreds of millions of events by writing sorted SST files and
//! ingesting them, instead of committing them one group at a time through the writer.
//!
//! The outcome is the one the writer reaches when given the same events in file order (`DOMAIN.md`
//! §3: the state is a fold of the events), in memory bounded by a budget, with every sort done
//! externally ([`crate::extsort`]). Each event gets an ordinal, its position in the input:
//!
//! 1. [`BulkLoad::add`] spools the validated events in file order, sorts them by `report_id`, and
//!    sorts withdrawals by the `report_id` they withdraw.
//! 2. The `report_id` sort is merged with the stored `reports` family: the first use of an id wins,
//!    the same content again is a duplicate, other content is refused.
//! 3. The withdrawal sort is merged with the accepted ids and the stored reports, which finds each
//!    withdrawal's target: a card event (the withdrawal will mark it), a withdrawal (refused when
//!    it came first, as the writer refuses it), or nothing yet (kept waiting for it).
//! 4. The spool is read back in file order; each accepted event gets the next sequence and goes to
//!    the `events` SSTs, and its entries, keyed by number, go to a second sort.
//! 5. The accepted ids, still in id order, become the `reports` SSTs, and the waiting withdrawals
//!    the `withdrawals` SSTs.
//! 6. The entries, merged by number with any stored state, are folded into the `citizens` SSTs
//!    (each number's summary, then its state), and the index of every number with a record is
//!    built on the way.
//! 7. The SSTs are ingested and the index saved for the next start.
//!
//! RocksDB ingests one column family at a time. So the SSTs are hard-linked aside and a marker is
//! written before ingestion starts; if a crash interrupts it, the next open ingests them again
//! (ingesting the same keys and values twice changes nothing) and only then serves.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};

use prost::Message;
use rocksdb::{Cache, DB, IngestExternalFileOptions, Options, SstFileWriter, WriteOptions};
use time::OffsetDateTime;
use xxhash_rust::xxh3::xxh3_128;

use super::codec::{self, ENTRY_BYTES, ReportSlot};
use super::writer::{ParkedWithdrawal, Touches, what_it_touches};
use super::{
    CF_CITIZENS, CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, Corrupt, STREAM_KEY, StoreError,
    StoreOptions, column_family, family_options, last_sequence, open_db, snapshot, stored_event,
};
use crate::card::{CitizenNumber, FieldError, Rule};
use crate::event::{ReportKey, ValidEvent};
use crate::extsort::{Runs, Sorter, read_more};
use crate::index::RecordIndex;
use crate::proto;
use crate::registry::{CitizenState, DailyTally, Entry, Fact, Grant};

/// The default column family's key marking an ingestion in progress.
const INGESTING_KEY: &[u8] = b"idguard.ingesting";
/// Where SSTs are kept while their ingestion may still have to be redone.
const KEPT_DIR: &str = "ingesting";
/// SST files are cut at about this size.
const SST_FILE_BYTES: u64 = 512 << 20;
/// How often (in records) a step reports progress.
const PROGRESS_EVERY: u64 = 1 << 16;
/// The column families an import writes, in the order they are ingested.
const INGESTED: [&str; 4] = [CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, CF_CITIZENS];

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
    /// A rule that depends on other events (a withdrawal of a withdrawal).
    Invalid(FieldError),
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkSummary {
    /// New events, now in the log.
    pub accepted: u64,
    /// Records whose `report_id` was already accepted with the same content.
    pub duplicates: u64,
    /// Records refused (see [`Refusal`]).
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
    memory_bytes: usize,
    /// The clock the events were validated against; also their `recorded_at`.
    now: OffsetDateTime,
    /// Stored withdrawals whose target had not arrived, by the target's [`ReportKey`].
    waiting_withdrawals: HashMap<Vec<u8>, Vec<ParkedWithdrawal>>,
    by_report: Sorter,
    by_target: Sorter,
    log: BufWriter<File>,
    events: u64,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::data_dir(path, format!("{what}: {error}"))
}

fn create_spool(path: &Path) -> Result<BufWriter<File>, StoreError> {
    let file = File::create(path).map_err(|error| io_error("creating", path, error))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

fn open_spool(path: &Path) -> Result<BufReader<File>, StoreError> {
    let file = File::open(path).map_err(|error| io_error("opening", path, error))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

impl BulkLoad {
    /// Opens (creating it if new) the registry in `data_dir` for an import, with exclusive
    /// access: a server cannot use it meanwhile. Temporary files go under `work_dir`, which should
    /// be on the data dir's file system (SSTs are moved, not copied, into the registry).
    pub fn open(
        data_dir: &Path,
        work_dir: &Path,
        memory_bytes: usize,
        tuning: &StoreOptions,
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let (db, _) = open_db(data_dir, tuning)?;
        // A cluster node's events come from its stream, with the stream's sequences.
        if let Some(stream) = db.get(STREAM_KEY)? {
            return Err(StoreError::data_dir(
                data_dir,
                format!(
                    "it follows the cluster stream {:?}: send the events to a cluster node with \
                     `idguard submit` instead",
                    String::from_utf8_lossy(&stream)
                ),
            ));
        }
        let work = work_dir.to_owned();
        if work.exists() {
            std::fs::remove_dir_all(&work)
                .map_err(|error| io_error("clearing the work dir", &work, error))?;
        }
        std::fs::create_dir_all(&work)
            .map_err(|error| io_error("creating the work dir", &work, error))?;
        Ok(Self {
            waiting_withdrawals: waiting_withdrawals(&db)?,
            log: create_spool(&work.join("events.spool"))?,
            // Withdrawals are a few percent of the events: their sort needs less.
            by_target: Sorter::new(&work, "by-target", memory_bytes / 8),
            by_report: Sorter::new(&work, "by-report", memory_bytes),
            data_dir: data_dir.to_owned(),
            work,
            db,
            memory_bytes,
            now,
            events: 0,
        })
    }

    /// Takes one event that passed [`crate::event::validate_event`], in file order.
    pub fn add(&mut self, origin: Origin, valid: &ValidEvent) -> Result<(), StoreError> {
        let sort_error = |error| io_error("sorting", &self.work, error);
        let ordinal = self.events;
        self.events += 1;
        let canonical = valid.canonical.encode_to_vec();
        let key = valid.report_key();
        let report_id = key.as_bytes();
        let (number, head) = match what_it_touches(&valid.event.kind) {
            Touches::Withdrawal(target) => {
                let target = ReportKey::new(&valid.canonical.authority, target);
                let mut value = [0u8; 16 + 12];
                value[..16]
                    .copy_from_slice(&valid.event.occurred_at.unix_timestamp_nanos().to_be_bytes());
                value[16..].copy_from_slice(&origin.encode());
                self.by_target
                    .push(&ordinal_key(target.as_bytes(), ordinal), &value)
                    .map_err(sort_error)?;
                (0, Vec::new())
            }
            Touches::Number(number, fact) => (
                number.packed(),
                self.card_head(report_id, number, valid, fact)?,
            ),
        };
        let mut value = [0u8; 16 + 12 + 8];
        value[..16].copy_from_slice(&xxh3_128(&canonical).to_be_bytes());
        value[16..28].copy_from_slice(&origin.encode());
        value[28..].copy_from_slice(&number.to_be_bytes());
        self.by_report
            .push(&ordinal_key(report_id, ordinal), &value)
            .map_err(sort_error)?;
        write_framed(&mut self.log, &head, &canonical)
            .map_err(|error| io_error("writing a spool", &self.work, error))
    }

    /// The spooled head of a card event: its number, its entry, and the entries of stored
    /// withdrawals that were waiting for it (their target's sequence to be filled in by step 4):
    /// each undoes it if its grant covers it, and is kept as refused otherwise, as the writer
    /// does.
    fn card_head(
        &self,
        report_id: &[u8],
        number: CitizenNumber,
        valid: &ValidEvent,
        fact: Fact,
    ) -> Result<Vec<u8>, StoreError> {
        let waiting = self.waiting_withdrawals.get(report_id);
        let mut head = Vec::with_capacity(8 + (1 + waiting.map_or(0, Vec::len)) * ENTRY_BYTES);
        head.extend_from_slice(&number.packed().to_be_bytes());
        head.extend_from_slice(&codec::encode_entry(&Entry {
            sequence: 0,
            occurred_at: valid.event.occurred_at,
            fact,
            withdrawn_by: None,
        }));
        for withdrawal in waiting.into_iter().flatten() {
            // The target is this event, whose sequence step 4 fills in.
            let fact = if withdrawal.grant.may_withdraw(&valid.canonical) {
                Fact::Withdrawal { target: u64::MAX }
            } else {
                Fact::RefusedWithdrawal { target: u64::MAX }
            };
            head.extend_from_slice(&codec::encode_entry(&Entry {
                sequence: withdrawal.sequence,
                occurred_at: codec::occurred_at(&stored_event(&self.db, withdrawal.sequence)?)?,
                fact,
                withdrawn_by: None,
            }));
        }
        Ok(head)
    }

    /// Runs steps 2 to 7 (see the module documentation), reporting refusals as it finds them.
    pub fn finish(
        self,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<BulkSummary, StoreError> {
        let BulkLoad {
            data_dir,
            work,
            db,
            memory_bytes,
            now,
            by_report,
            by_target,
            mut log,
            events,
            waiting_withdrawals: _,
        } = self;
        log.flush()
            .map_err(|error| io_error("writing a spool", &work, error))?;
        drop(log);
        let sort_error = |error| io_error("sorting", &work, error);
        let by_report = by_report.finish().map_err(sort_error)?;
        let by_target = by_target.finish().map_err(sort_error)?;
        let collected = Collected {
            data_dir,
            work,
            db,
            memory_bytes,
            now,
            events,
        };
        let summary = collected.ingest(by_report, by_target, refused, progress)?;
        std::fs::remove_dir_all(&collected.work)
            .map_err(|error| io_error("removing", &collected.work, error))?;
        Ok(summary)
    }
}

/// A sort key of an id then an ordinal. Ids are printable ASCII and an ordinal's first byte is 0,
/// so keys sort by id (bytewise, as RocksDB sorts them), then by ordinal.
fn ordinal_key(report_id: &[u8], ordinal: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(report_id.len() + 8);
    key.extend_from_slice(report_id);
    key.extend_from_slice(&ordinal.to_be_bytes());
    key
}

/// The registry and the spools once every record has been added.
struct Collected {
    data_dir: PathBuf,
    work: PathBuf,
    db: DB,
    memory_bytes: usize,
    now: OffsetDateTime,
    events: u64,
}

/// The SSTs of each ingested column family, in [`INGESTED`] order.
type SstSet = [Vec<PathBuf>; 4];

impl Collected {
    /// Steps 2 to 7.
    fn ingest(
        &self,
        by_report: Runs,
        by_target: Runs,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<BulkSummary, StoreError> {
        let last = last_sequence(&self.db, CF_EVENTS)?;
        let mut summary = BulkSummary::default();
        let mut dropped = self.deduplicate(by_report, &mut summary, refused, progress)?;
        self.resolve_withdrawals(by_target, &mut dropped, &mut summary, refused, progress)?;
        dropped.count_ranks();
        let sequences = Sequences { last, dropped };
        let sst_cache = Cache::new_lru_cache(8 << 20);
        let sst_options = family_options(&sst_cache);
        // Independent, so the reports are written on the other core meanwhile.
        let (events, reports) = std::thread::scope(|scope| {
            let reports = scope.spawn(|| self.write_reports(&sst_options, &sequences));
            let events = self.write_events(&sst_options, &sequences, progress);
            let reports = reports
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (events, reports)
        });
        let (events, entries) = events?;
        let reports = reports?;
        let withdrawals = self.write_waiting(&sst_options, &sequences)?;
        let (citizens, index) = self.write_citizens(&sst_options, entries, progress)?;
        summary.accepted = self.events - sequences.dropped.count();
        summary.last_sequence = last + summary.accepted;
        summary.numbers = index.len() as u64;
        self.ingest_all(&[events, reports, withdrawals, citizens], progress)?;
        if let Err(why) = snapshot::save(&self.data_dir, &self.db, &index, summary.last_sequence) {
            tracing::warn!(%why, "the next start will rebuild the index");
        }
        Ok(summary)
    }

    /// Ingests every family's SSTs, crash-safely (see the module documentation).
    fn ingest_all(&self, ssts: &SstSet, progress: &mut dyn Progress) -> Result<(), StoreError> {
        progress.step("ingesting", INGESTED.len() as u64);
        // The saved index does not know the imported numbers; a new one is saved after.
        snapshot::discard(&self.data_dir)
            .map_err(|why| StoreError::data_dir(&self.data_dir, why))?;
        // Opening the registry removed any copy left by an import killed before its marker.
        let kept = self.data_dir.join(KEPT_DIR);
        std::fs::create_dir_all(&kept).map_err(|error| io_error("creating", &kept, error))?;
        for path in ssts.iter().flatten() {
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
        for (done, (family, files)) in INGESTED.into_iter().zip(ssts).enumerate() {
            ingest(&self.db, family, files)?;
            progress.done(done as u64 + 1);
        }
        self.db.delete_opt(INGESTING_KEY, &sync)?;
        std::fs::remove_dir_all(&kept).map_err(|error| io_error("removing", &kept, error))
    }

    /// Step 2: merges the `report_id` sort with the stored reports and marks every event that
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
        let mut dropped = Ordinals::new(self.events);
        let accepted_path = self.work.join("accepted.spool");
        let mut accepted = create_spool(&accepted_path)?;
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
                    let first = match stored_slot(&mut stored, report_id)? {
                        Some(slot) => First::Stored {
                            sequence: slot.sequence,
                            hash: stored_hash(&self.db, slot.sequence)?,
                        },
                        None => {
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
            let report_id = String::from_utf8_lossy(&report_id[2..]).into_owned();
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
        Ok(dropped)
    }

    /// Step 3: finds each accepted withdrawal's target. One that marks a card event becomes a link
    /// (`links.spool`), one whose target has not arrived waits (`waiting.spool`), and one that
    /// withdraws an earlier withdrawal is refused and joins `dropped`.
    fn resolve_withdrawals(
        &self,
        by_target: Runs,
        dropped: &mut Ordinals,
        summary: &mut BulkSummary,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<(), StoreError> {
        progress.step("resolving withdrawals", by_target.len());
        let mut links = create_spool(&self.work.join("links.spool"))?;
        let mut waiting = create_spool(&self.work.join("waiting.spool"))?;
        let mut accepted = AcceptedIds::open(&self.work.join("accepted.spool"))?;
        let mut stored = self.db.raw_iterator_cf(column_family(&self.db, CF_REPORTS));
        stored.seek_to_first();
        let mut refusals: HashSet<u64> = HashSet::new();
        // Withdrawals of earlier withdrawals of this import: whether each is refused depends on
        // whether its target was, so they are decided in file order after the merge.
        let mut of_withdrawals: Vec<(u64, u64, Origin, Vec<u8>)> = Vec::new();
        let refuse = |ordinal: u64,
                      origin: Origin,
                      dropped: &mut Ordinals,
                      summary: &mut BulkSummary,
                      refusals: &mut HashSet<u64>,
                      refused: &mut dyn FnMut(Origin, Refusal)| {
            dropped.insert(ordinal);
            refusals.insert(ordinal);
            summary.refused += 1;
            refused(
                origin,
                Refusal::Invalid(FieldError::new(
                    "withdrawn.withdrawn_report_id",
                    Rule::WithdrawsWithdrawal,
                )),
            );
        };
        let mut seen = 0u64;
        by_target.merge(|key, value| -> Result<(), StoreError> {
            let (target, ordinal) = key.split_at(key.len() - 8);
            let ordinal = u64::from_be_bytes(array(ordinal));
            let origin = Origin::decode(&value[16..28]);
            seen += 1;
            if seen.is_multiple_of(PROGRESS_EVERY) {
                progress.done(seen);
            }
            if dropped.contains(ordinal) {
                return Ok(());
            }
            let link = |links: &mut BufWriter<File>, number: u64, kind: u8, at: u64| {
                let mut record = [0u8; LINK_BYTES];
                record[..8].copy_from_slice(&number.to_be_bytes());
                record[8..16].copy_from_slice(&ordinal.to_be_bytes());
                record[16] = kind;
                record[17..25].copy_from_slice(&at.to_be_bytes());
                record[25..].copy_from_slice(&value[..16]);
                links.write_all(&record)
            };
            if let Some((target_ordinal, number)) = accepted.find(target)? {
                match number {
                    0 if target_ordinal < ordinal => {
                        of_withdrawals.push((ordinal, target_ordinal, origin, target.to_vec()));
                    }
                    0 => write_framed(&mut waiting, target, &ordinal.to_be_bytes())?,
                    number => link(&mut links, number, LINK_IMPORTED, target_ordinal)?,
                }
            } else if let Some(slot) = stored_slot(&mut stored, target)? {
                match slot.number {
                    None => refuse(ordinal, origin, dropped, summary, &mut refusals, refused),
                    Some(number) => link(&mut links, number.packed(), LINK_STORED, slot.sequence)?,
                }
            } else {
                write_framed(&mut waiting, target, &ordinal.to_be_bytes())?;
            }
            Ok(())
        })?;
        of_withdrawals.sort_unstable_by_key(|(ordinal, ..)| *ordinal);
        for (ordinal, target_ordinal, origin, target) in of_withdrawals {
            if refusals.contains(&target_ordinal) {
                // Its target never entered: it waits, as it would have online.
                write_framed(&mut waiting, &target, &ordinal.to_be_bytes())?;
            } else {
                refuse(ordinal, origin, dropped, summary, &mut refusals, refused);
            }
        }
        links.flush()?;
        waiting.flush()?;
        Ok(())
    }

    /// Step 4: the accepted events in file order become the log's next sequences; the entries of
    /// card events and of the withdrawals that mark them are sorted by number for step 6.
    fn write_events(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<PathBuf>, Runs), StoreError> {
        progress.step("writing events and report ids", self.events);
        let mut input = open_spool(&self.work.join("events.spool"))?;
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_EVENTS);
        let mut entries = EntrySort(Sorter::new(&self.work, "by-number", self.memory_bytes));
        let recorded_at = proto::timestamp(self.now);
        let (mut head, mut canonical, mut change) = (Vec::new(), Vec::new(), Vec::new());
        for ordinal in 0..self.events {
            read_framed(&mut input, &mut head, &mut canonical)?;
            if ordinal.is_multiple_of(PROGRESS_EVERY) {
                progress.done(ordinal);
            }
            let Some(sequence) = sequences.of(ordinal) else {
                continue;
            };
            encode_change(
                sequence,
                &canonical,
                &recorded_at,
                head.is_empty(),
                &mut change,
            );
            ssts.put(&codec::sequence_key(sequence), &change)?;
            // A withdrawal's head is empty: its entry comes from its link below.
            if let Some((number, stated)) = head.split_first_chunk::<8>() {
                let number = u64::from_be_bytes(*number);
                for (n, bytes) in stated.chunks_exact(ENTRY_BYTES).enumerate() {
                    let mut entry = decode_spooled_entry(bytes)?;
                    match &mut entry.fact {
                        _ if n == 0 => entry.sequence = sequence,
                        Fact::Withdrawal { target } | Fact::RefusedWithdrawal { target } => {
                            *target = sequence;
                        }
                        _ => return Err(corrupt_spool("a waiting withdrawal's entry")),
                    }
                    entries.push(number, &entry)?;
                }
            }
        }
        let mut links = open_spool(&self.work.join("links.spool"))?;
        let mut record = [0u8; LINK_BYTES];
        while read_more(links.read_exact(&mut record))? {
            let at = u64::from_be_bytes(array(&record[17..25]));
            let target = match record[16] {
                LINK_STORED => Some(at),
                _ => sequences.of(at),
            };
            let (Some(sequence), Some(target)) = (
                sequences.of(u64::from_be_bytes(array(&record[8..16]))),
                target,
            ) else {
                return Err(corrupt_spool("a link to an event that did not enter"));
            };
            let nanos = i128::from_be_bytes(array(&record[25..]));
            let entry = Entry {
                sequence,
                occurred_at: OffsetDateTime::from_unix_timestamp_nanos(nanos)
                    .map_err(|error| corrupt_spool(&error.to_string()))?,
                fact: Fact::Withdrawal { target },
                withdrawn_by: None,
            };
            entries.push(u64::from_be_bytes(array(&record[..8])), &entry)?;
        }
        let entries = entries.0.finish()?;
        // The spool is as large as the input: give the disk back before the next steps.
        drop(input);
        std::fs::remove_file(self.work.join("events.spool"))?;
        Ok((ssts.finish()?, entries))
    }

    /// Step 5: the accepted ids, in id order, with the sequences step 4 gives them.
    fn write_reports(
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

    /// Step 5, continued: withdrawals whose target has not arrived, keyed as the writer keys them.
    fn write_waiting(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut input = open_spool(&self.work.join("waiting.spool"))?;
        let mut keys = Sorter::new(&self.work, "waiting", self.memory_bytes / 8);
        let (mut target, mut ordinal) = (Vec::new(), Vec::new());
        while read_more(read_framed(&mut input, &mut target, &mut ordinal))? {
            let sequence = sequences
                .of(u64::from_be_bytes(array(&ordinal)))
                .ok_or_else(|| corrupt_spool("a waiting withdrawal that did not enter"))?;
            keys.push(&codec::withdrawal_key(&target, sequence), &[])?;
        }
        // The import is the operator's: its withdrawals may undo anything.
        let grant = codec::encode_grant(&Grant::everything());
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_WITHDRAWALS);
        keys.finish()?
            .merge(|key, _| -> Result<(), StoreError> { ssts.put(key, &grant) })?;
        ssts.finish()
    }

    /// Step 6: each number's new entries folded into its stored state; every number with a
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
            // The import is the operator's: it counts against no division's daily allowance.
            let (mut state, tally) = stored.through(number)?.unwrap_or_default();
            // A withdrawal marks a target already recorded, as the writer records them.
            let (withdrawals, facts): (Vec<Entry>, Vec<Entry>) = new
                .into_iter()
                .partition(|entry| matches!(entry.fact, Fact::Withdrawal { .. }));
            facts
                .into_iter()
                .chain(withdrawals)
                .for_each(|entry| state.record(entry));
            ssts.put(
                &number.to_be_bytes(),
                &codec::encode_citizen(&state, &tally),
            )
        };
        // The merge runs on the other core, handing over whole numbers' entries.
        let (groups_out, groups_in) = sync_channel::<Vec<(u64, Vec<Entry>)>>(GROUP_CHUNKS_QUEUED);
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let merging = scope.spawn(move || group_entries(entries, &groups_out));
            let mut folded = 0u64;
            for chunk in groups_in {
                for (number, new) in chunk {
                    folded += new.len() as u64;
                    fold(number, new)?;
                }
                progress.done(folded);
            }
            merging
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        Ok((ssts.finish()?, stored.rest()?))
    }
}

/// Numbers' entries handed from the merge to the fold at once.
const GROUP_CHUNK: usize = 4096;
/// Chunks of numbers queued between the merge and the fold.
const GROUP_CHUNKS_QUEUED: usize = 8;

/// Merges the entry sort and sends each number's entries, in number order, in chunks; stops
/// early if the receiver has gone.
fn group_entries(
    entries: Runs,
    out: &SyncSender<Vec<(u64, Vec<Entry>)>>,
) -> Result<(), StoreError> {
    let receiver_gone = || StoreError::Interrupted("the fold stopped".into());
    let mut chunk: Vec<(u64, Vec<Entry>)> = Vec::with_capacity(GROUP_CHUNK);
    entries.merge(|key, _| -> Result<(), StoreError> {
        let number = u64::from_be_bytes(array(&key[..8]));
        let entry = decode_spooled_entry(&key[8..])?;
        match chunk.last_mut() {
            Some((current, new)) if *current == number => new.push(entry),
            _ => {
                // A number's entries are never split across chunks: the full chunk is sent
                // only when the next number starts.
                if chunk.len() == GROUP_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(GROUP_CHUNK));
                    out.send(full).map_err(|_| receiver_gone())?;
                }
                chunk.push((number, vec![entry]));
            }
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        out.send(chunk).map_err(|_| receiver_gone())?;
    }
    Ok(())
}

/// A link record: the number, the withdrawal's ordinal, the kind of target and its sequence
/// ([`LINK_STORED`]) or ordinal ([`LINK_IMPORTED`]), and the withdrawal's `occurred_at`.
const LINK_BYTES: usize = 8 + 8 + 1 + 8 + 16;
const LINK_STORED: u8 = 0;
const LINK_IMPORTED: u8 = 1;

fn corrupt_spool(why: &str) -> StoreError {
    Corrupt {
        what: "import spool",
        why: why.into(),
    }
    .into()
}

/// Entries sorted by number, then sequence (an entry's encoding starts with its sequence).
struct EntrySort(Sorter);

impl EntrySort {
    fn push(&mut self, number: u64, entry: &Entry) -> Result<(), StoreError> {
        let mut key = [0u8; 8 + ENTRY_BYTES];
        key[..8].copy_from_slice(&number.to_be_bytes());
        key[8..].copy_from_slice(&codec::encode_entry(entry));
        Ok(self.0.push(&key, &[])?)
    }
}

/// The accepted ids of step 2, read in id order.
struct AcceptedIds {
    input: BufReader<File>,
    report_id: Vec<u8>,
    ordinal: u64,
    /// The packed number, 0 for a withdrawal.
    number: u64,
    body: Vec<u8>,
    ended: bool,
}

impl AcceptedIds {
    fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            input: open_spool(path)?,
            report_id: Vec::new(),
            ordinal: 0,
            number: 0,
            body: Vec::new(),
            ended: false,
        })
    }

    /// Moves to the next id; `false` at the end.
    fn advance(&mut self) -> Result<bool, StoreError> {
        if !read_more(read_framed(
            &mut self.input,
            &mut self.report_id,
            &mut self.body,
        ))? {
            self.ended = true;
            return Ok(false);
        }
        self.ordinal = u64::from_be_bytes(array(&self.body[..8]));
        self.number = u64::from_be_bytes(array(&self.body[8..16]));
        Ok(true)
    }

    /// The ordinal and number of `report_id` if it was accepted; ids must be asked in order.
    fn find(&mut self, report_id: &[u8]) -> Result<Option<(u64, u64)>, StoreError> {
        while !self.ended && (self.report_id.is_empty() || self.report_id.as_slice() < report_id) {
            self.advance()?;
        }
        Ok((!self.ended && self.report_id == report_id).then_some((self.ordinal, self.number)))
    }
}

/// The stored slot of `report_id`, moving a `reports` iterator forward; ids must be asked in
/// order.
fn stored_slot(
    stored: &mut rocksdb::DBRawIterator<'_>,
    report_id: &[u8],
) -> Result<Option<ReportSlot>, StoreError> {
    while stored.key().is_some_and(|key| key < report_id) {
        stored.next();
    }
    stored.status()?;
    match (stored.key(), stored.value()) {
        (Some(key), Some(slot)) if key == report_id => Ok(Some(ReportSlot::decode(slot)?)),
        _ => Ok(None),
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
    /// history, if any.
    fn through(&mut self, number: u64) -> Result<Option<(CitizenState, DailyTally)>, StoreError> {
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

/// Turns ordinals into sequences: accepted events follow the log's last sequence in file order.
struct Sequences {
    last: u64,
    dropped: Ordinals,
}

impl Sequences {
    /// The sequence of the event with this ordinal; `None` if it did not enter.
    fn of(&self, ordinal: u64) -> Option<u64> {
        (!self.dropped.contains(ordinal))
            .then(|| self.last + 1 + ordinal - self.dropped.rank(ordinal))
    }
}

/// A set of ordinals (events that did not enter), with ranks: how many are below a given
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
    let kept = data_dir.join(KEPT_DIR);
    if db.get(INGESTING_KEY)?.is_none() {
        // An import killed before its marker was written ingested nothing: drop what it kept.
        if kept.exists() {
            std::fs::remove_dir_all(&kept).map_err(|error| io_error("removing", &kept, error))?;
        }
        return Ok(());
    }
    tracing::warn!(dir = %kept.display(), "completing an import that was interrupted");
    let refuse = |why: String| StoreError::data_dir(data_dir, why);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kept)
        .map_err(|error| refuse(format!("an interrupted import left no {KEPT_DIR}: {error}")))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .map_err(|error| refuse(error.to_string()))?;
    files.sort();
    for family in INGESTED {
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

/// The stored withdrawals still waiting for their target, by target.
fn waiting_withdrawals(db: &DB) -> Result<HashMap<Vec<u8>, Vec<ParkedWithdrawal>>, StoreError> {
    let mut waiting: HashMap<Vec<u8>, Vec<ParkedWithdrawal>> = HashMap::new();
    let mut keys = db.raw_iterator_cf(column_family(db, CF_WITHDRAWALS));
    keys.seek_to_first();
    while let (Some(key), Some(value)) = (keys.key(), keys.value()) {
        let (target, sequence) = codec::decode_withdrawal_key(key)?;
        let grant = codec::decode_grant(value)?;
        waiting
            .entry(target.to_vec())
            .or_default()
            .push(ParkedWithdrawal { sequence, grant });
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

fn decode_spooled_entry(bytes: &[u8]) -> Result<Entry, Corrupt> {
    codec::decode_entry(bytes).map_err(|why| Corrupt {
        what: "import spool entry",
        why,
    })
}

/// The `recorded_by` of imported events: they were loaded by an operator, not sent by a principal.
pub const IMPORT_PRINCIPAL: &str = "import";

/// The `RegistryChange` bytes prost would write, built around already-encoded event bytes.
fn encode_change(
    sequence: u64,
    canonical: &[u8],
    recorded_at: &prost_types::Timestamp,
    withdrawal: bool,
    out: &mut Vec<u8>,
) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    out.clear();
    prost::encoding::uint64::encode(1, &sequence, out);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(canonical.len() as u64, out);
    out.extend_from_slice(canonical);
    prost::encoding::message::encode(3, recorded_at, out);
    encode_key(4, WireType::LengthDelimited, out);
    encode_varint(IMPORT_PRINCIPAL.len() as u64, out);
    out.extend_from_slice(IMPORT_PRINCIPAL.as_bytes());
    if withdrawal {
        // As the writer records a withdrawal: with its sender's grant, here the operator's.
        prost::encoding::message::encode(5, &Grant::everything().to_wire(), out);
    }
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
    use crate::proto::v1 as pb;

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
        for withdrawal in [false, true] {
            let mut ours = Vec::new();
            encode_change(
                300,
                &event.encode_to_vec(),
                &recorded_at,
                withdrawal,
                &mut ours,
            );
            let theirs = pb::RegistryChange {
                sequence: 300,
                event: Some(event.clone()),
                recorded_at: Some(recorded_at),
                recorded_by: IMPORT_PRINCIPAL.into(),
                grant: withdrawal.then(|| Grant::everything().to_wire()),
            }
            .encode_to_vec();
            assert_eq!(ours, theirs);
        }
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
