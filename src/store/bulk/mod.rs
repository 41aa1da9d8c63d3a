//! Bulk import: loads an export of hundreds of millions of events by writing sorted SST files and
//! ingesting them, instead of committing them one group at a time through the writer.
//!
//! The outcome is the one the writer reaches when given the same events in file order (`DOMAIN.md`
//! §3: the state is a fold of the events), in memory bounded by a budget, with every sort done
//! externally ([`extsort`]). Each event gets an ordinal, its position in the input:
//!
//! 1. [`BulkLoad::add`] spools the validated events in file order, sorts them by `report_id`,
//!    sorts withdrawals by the `report_id` they withdraw, and sorts card events' entries by number,
//!    with provisional sequences ([`ordinals`]), so that the fold of step 6 need not wait for
//!    step 4.
//! 2. The `report_id` sort is merged with the stored `reports` family: the first use of an id wins,
//!    the same content again is a duplicate, other content is refused.
//! 3. The withdrawal sort is merged with the accepted ids and the stored reports, which finds each
//!    withdrawal's target: a card event (the withdrawal's entry joins the sort by number), a
//!    withdrawal (refused when it came first, as the writer refuses it), or nothing yet (kept
//!    waiting for it).
//! 4. The spool is read back in file order; each accepted event gets the next sequence and goes to
//!    the `events` SSTs.
//! 5. The accepted ids, still in id order, become the `reports` SSTs, and the waiting withdrawals
//!    the `withdrawals` SSTs.
//! 6. The entries, merged by number with any stored state, are folded into the `citizens` SSTs
//!    (each number's summary, then its state), and the index of every number with a record is
//!    built on the way. Steps 4, 5 and 6 run side by side: each needs only the set of events that
//!    did not enter.
//! 7. The SSTs are ingested, crash-safely, and the index saved for the next start.
//!
//! Each step has its file, and so have the parts they share: the temporary files' layouts
//! ([`spool`]), the set of events that did not enter ([`ordinals`]), SST writing ([`sst`]).

mod citizens;
mod deduplicate;
mod events;
mod extsort;
mod ingest;
mod ordinals;
mod reports;
mod spool;
mod sst;
mod withdrawals;

pub(super) use ingest::finish_interrupted_ingestion;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prost::Message;
use rocksdb::{Cache, DB};
use time::OffsetDateTime;

use self::extsort::{Runs, Sorter};
use self::ordinals::{Sequences, provisional};
use self::spool::{EntrySort, WITHDRAWAL_HEAD, create_spool, io_error, write_framed};
use self::withdrawals::waiting_withdrawals;
use super::codec;
use super::writer::ParkedWithdrawal;
use super::{
    CF_CITIZENS, CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, STREAM_KEY, StoreError, StoreOptions,
    family_options, last_sequence, open_db, snapshot, stored_event,
};
use crate::card::{CitizenNumber, FieldError};
use crate::event::{ReportKey, ValidEvent};
use crate::event_file::Origin;
use crate::registry::{Content, Entry, Fact, Touches, awaited_withdrawal, what_it_touches};

/// Where the import finds an event that a later one names: in the log already (its sequence), or
/// earlier in the input (its ordinal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Stored(u64),
    Imported(u64),
}

/// How often (in records) a step reports progress.
const PROGRESS_EVERY: u64 = 1 << 16;
/// The column families an import writes, in the order they are ingested.
const INGESTED: [&str; 4] = [CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, CF_CITIZENS];

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
    /// The log's last sequence before the import.
    last: u64,
    /// Stored withdrawals whose target had not arrived, by the target's [`ReportKey`].
    waiting_withdrawals: HashMap<Vec<u8>, Vec<ParkedWithdrawal>>,
    by_report: Sorter,
    by_target: Sorter,
    by_number: EntrySort,
    log: BufWriter<File>,
    events: u64,
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
            by_number: EntrySort(Sorter::new(&work, "by-number", memory_bytes)),
            last: last_sequence(&db, CF_EVENTS)?,
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
        let ordinal = self.events;
        self.events += 1;
        let canonical = valid.canonical().encode_to_vec();
        let key = valid.report_key();
        let report_id = key.as_bytes();
        let (number, head) = match what_it_touches(&valid.event.kind) {
            Touches::Withdrawal(target) => {
                let target = ReportKey::new(&valid.event.authority, target);
                let mut value = [0u8; 16 + 12];
                value[..16]
                    .copy_from_slice(&valid.event.occurred_at.unix_timestamp_nanos().to_be_bytes());
                value[16..].copy_from_slice(&origin.encode());
                self.by_target
                    .push(&ordinal_key(target.as_bytes(), ordinal), &value)
                    .map_err(|error| io_error("sorting", &self.work, error))?;
                (0, WITHDRAWAL_HEAD)
            }
            Touches::Number(number, fact) => {
                self.sort_card_entries(report_id, number, valid, fact, ordinal)?;
                (number.packed(), &[][..])
            }
        };
        let mut value = [0u8; 16 + 12 + 8];
        value[..16].copy_from_slice(&Content::of_encoded(&canonical).to_bytes());
        value[16..28].copy_from_slice(&origin.encode());
        value[28..].copy_from_slice(&number.to_be_bytes());
        self.by_report
            .push(&ordinal_key(report_id, ordinal), &value)
            .map_err(|error| io_error("sorting", &self.work, error))?;
        write_framed(&mut self.log, head, &canonical)
            .map_err(|error| io_error("writing a spool", &self.work, error))
    }

    /// Sorts by number a card event's entry, and the entries of stored withdrawals that were
    /// waiting for it: each undoes it if its grant covers it, and is kept as refused otherwise, as
    /// the writer does.
    fn sort_card_entries(
        &mut self,
        report_id: &[u8],
        number: CitizenNumber,
        valid: &ValidEvent,
        fact: Fact,
        ordinal: u64,
    ) -> Result<(), StoreError> {
        let sequence = provisional(self.last, ordinal);
        self.by_number.push(
            number.packed(),
            &Entry {
                sequence,
                occurred_at: valid.event.occurred_at,
                fact,
                withdrawn_by: None,
            },
        )?;
        for withdrawal in self
            .waiting_withdrawals
            .get(report_id)
            .into_iter()
            .flatten()
        {
            let fact = awaited_withdrawal(&withdrawal.grant, &valid.event, sequence);
            self.by_number.push(
                number.packed(),
                &Entry {
                    sequence: withdrawal.sequence,
                    occurred_at: codec::occurred_at(&stored_event(&self.db, withdrawal.sequence)?)?,
                    fact,
                    withdrawn_by: None,
                },
            )?;
        }
        Ok(())
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
            last,
            by_report,
            by_target,
            by_number,
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
            last,
            events,
        };
        let summary = collected.ingest(by_report, by_target, by_number, refused, progress)?;
        std::fs::remove_dir_all(&collected.work)
            .map_err(|error| io_error("removing", &collected.work, error))?;
        Ok(summary)
    }
}

/// The zstd level of the import's SSTs, where RocksDB's default is zstd's own, 3. At 5M national
/// citizens, level 1 wrote the events in a fifth less time for 3% more bytes on disk; compactions
/// that later rewrite the data recompress it at the default level.
const IMPORT_ZSTD_LEVEL: i32 = 1;

/// Threads compressing each SST's blocks: one per core.
fn compression_threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |cores| i32::try_from(cores.get()).unwrap_or(1))
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
    last: u64,
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
        mut by_number: EntrySort,
        refused: &mut dyn FnMut(Origin, Refusal),
        progress: &mut dyn Progress,
    ) -> Result<BulkSummary, StoreError> {
        let mut summary = BulkSummary::default();
        let mut dropped = self.deduplicate(by_report, &mut summary, refused, progress)?;
        self.resolve_withdrawals(
            by_target,
            &mut by_number,
            &mut dropped,
            &mut summary,
            refused,
            progress,
        )?;
        let entries = by_number
            .0
            .finish()
            .map_err(|error| io_error("sorting", &self.work, error))?;
        dropped.count_ranks();
        let sequences = Sequences {
            last: self.last,
            dropped,
        };
        let sst_cache = Cache::new_lru_cache(8 << 20);
        let mut sst_options = family_options(&sst_cache);
        // zstd's compression of each block is a fifth of an import's CPU time (`perf`, 5M
        // citizens); RocksDB hands blocks to worker threads while the writer goes on, so it uses a
        // core the step would otherwise leave idle.
        sst_options.set_compression_options_parallel_threads(compression_threads());
        sst_options.set_compression_options(-14, IMPORT_ZSTD_LEVEL, 0, 0);
        progress.step(
            "writing events and folding citizens",
            self.events + entries.len(),
        );
        let done = AtomicU64::new(0);
        // Independent of each other once `sequences` is known, so they share the cores.
        let (events, reports, citizens) = std::thread::scope(|scope| {
            let reports = scope.spawn(|| self.write_reports(&sst_options, &sequences));
            let events = scope.spawn(|| self.write_events(&sst_options, &sequences, &done));
            let citizens = self.write_citizens(&sst_options, &sequences, entries, &done, progress);
            (joined(events), joined(reports), citizens)
        });
        let (events, reports, (citizens, index)) = (events?, reports?, citizens?);
        let withdrawals = self.write_waiting(&sst_options, &sequences)?;
        summary.accepted = self.events - sequences.dropped.count();
        summary.last_sequence = self.last + summary.accepted;
        summary.numbers = index.len() as u64;
        self.ingest_all(&[events, reports, withdrawals, citizens], progress)?;
        if let Err(why) = snapshot::save(&self.data_dir, &self.db, &index, summary.last_sequence) {
            tracing::warn!(%why, "the next start will rebuild the index");
        }
        Ok(summary)
    }
}

/// Logs the time of a step that ran beside others, as the caller's [`Progress`] logs the steps it
/// is shown one at a time.
fn step_done(step: &'static str, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(step, seconds, "import step done");
}

/// A scoped thread's result, its panic passed on.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
