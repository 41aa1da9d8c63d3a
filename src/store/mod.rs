//! The durable registry: RocksDB is the source of truth, and this module the only code that
//! touches it.
//!
//! Column families:
//! - `events`: the append-only event log, sequence → `RegistryChange` (protobuf);
//! - `reports`: `report_id` → its sequence and number, for idempotent retries and withdrawals;
//! - `withdrawals`: withdrawals whose target has not arrived yet, keyed by target then sequence;
//! - `citizens`: packed number → the number's [`Summary`] (all a check decodes), then its
//!   [`CitizenState`] and the day's [`DailyTally`](crate::registry::DailyTally), rewritten by
//!   every event that touches the number;
//! - `hits`: the hit log, hit sequence → `Hit` (protobuf), written by its own thread ([`hits`]).
//!
//! Every accepted event is written with everything it changes in one atomic, WAL-synced
//! `WriteBatch` by a single writer thread that commits concurrent submissions together
//! ([`writer`]). Reads run on the caller's thread and block, so async callers go through
//! `spawn_blocking` (see [`crate::app::check`]).

mod backup;
mod bulk;
mod citizens;
mod codec;
mod event_log;
mod hits;
pub mod index;
mod snapshot;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::card::FieldError;
use crate::event::ValidEvent;
use crate::proto::v1 as pb;
use crate::registry::{Denial, Recorder};
use crate::store::index::RecordIndex;

pub use backup::{registry_sequence, restore};
pub use bulk::{BulkLoad, BulkSummary, Progress, Refusal};
pub use citizens::Citizens;
pub use codec::Corrupt;
pub use event_log::{Change, EventLog};
pub use hits::{Hit, HitLog};
pub use writer::Applied;
use writer::Placement;

const CF_EVENTS: &str = "events";
const CF_REPORTS: &str = "reports";
const CF_WITHDRAWALS: &str = "withdrawals";
const CF_CITIZENS: &str = "citizens";
/// Added after the first release: created in a registry that lacks it.
const CF_HITS: &str = "hits";
/// Families a registry of an earlier release may lack.
const ADDED_FAMILIES: [&str; 1] = [CF_HITS];
const COLUMN_FAMILIES: [&str; 5] = [CF_EVENTS, CF_REPORTS, CF_WITHDRAWALS, CF_CITIZENS, CF_HITS];

/// How many submissions may wait for the writer before submitters are slowed down.
const WRITER_QUEUE: usize = 4096;
/// Live changes kept for watchers; one that falls further behind goes back to the log.
const LIVE_CHANGES: usize = 8192;
/// Tuning an operator sizes a node with.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// RocksDB's block cache, shared by every column family: how much of the registry's recent
    /// reads stays in memory (the index, which answers most checks, is outside it).
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 256 << 20,
        }
    }
}

/// A failure of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("data dir {path}: {why}")]
    DataDir { path: PathBuf, why: String },
    #[error("a storage read was interrupted: {0}")]
    Interrupted(String),
    #[error("I/O: {0}")]
    Io(String),
}

impl StoreError {
    /// A refusal or failure about the data dir (or another registry directory) at `path`.
    fn data_dir(path: &Path, why: impl Into<String>) -> Self {
        Self::DataDir {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error.to_string())
    }
}

/// Why an event was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The event breaks a rule that depends on what is already registered.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The `report_id` is taken in its province; the sequence of the event holding it only when
    /// that event is inside the sender's scopes.
    #[error(
        "report_id {report_id:?} was already accepted with different content{}",
        sequence.map(|sequence| format!(" (sequence {sequence})")).unwrap_or_default()
    )]
    Conflict {
        report_id: String,
        sequence: Option<u64>,
    },
    /// The sender's grant does not cover the event.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The sender has used up what it may record on one awaited report.
    #[error("{0}")]
    Quota(String),
    #[error("the registry is shutting down")]
    Closed,
    /// A stream message arrived out of turn: applying it would skip one, lost for good.
    #[error("stream message {arrived} arrived while this registry expects {expected}")]
    OutOfTurn { arrived: u64, expected: u64 },
    /// The registry follows a stream: its events come from there, not from this node.
    #[error("this registry follows the cluster stream {0:?}: events are applied from it")]
    FollowsStream(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the reader side and the writer thread share.
struct Shared {
    db: DB,
    /// The options the database was opened with: they hold its statistics.
    options: Options,
    index: RecordIndex,
    /// The highest sequence whose event is durable and visible to checks: read by every check,
    /// so it is a plain atomic.
    sequence: AtomicU64,
    /// The same sequence for those who wait for it to move (`min_sequence`).
    published: watch::Sender<u64>,
    /// Every newly accepted event, in sequence order, sent once it is durable and visible.
    changes: broadcast::Sender<Arc<Change>>,
    /// The last durable hit's sequence.
    hit_sequence: AtomicU64,
    /// Every new hit, in order, once durable.
    hits: broadcast::Sender<Arc<Hit>>,
    /// The cluster stream this registry follows, once bound to one: its sequences are the
    /// stream's, so a duplicate or refused stream message leaves a gap.
    stream: OnceLock<String>,
    /// False from a failed write (an event group or the hit log) until a probe write succeeds:
    /// health reports NOT_SERVING meanwhile, so that checkers go to a node that can record hits.
    writable: std::sync::atomic::AtomicBool,
}

fn column_family<'db>(db: &'db DB, name: &'static str) -> &'db rocksdb::ColumnFamily {
    // Every family is created at open, so a missing one is a bug, not an input error.
    db.cf_handle(name)
        .unwrap_or_else(|| unreachable!("column family {name} is created at open"))
}

impl Shared {
    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        column_family(&self.db, name)
    }
}

/// The recorded event with this sequence; one that is not there means a damaged log.
fn stored_event(db: &DB, sequence: u64) -> Result<pb::RegistryChange, StoreError> {
    let stored = db
        .get_pinned_cf(column_family(db, CF_EVENTS), codec::sequence_key(sequence))?
        .ok_or_else(|| Corrupt::missing_event(sequence))?;
    Ok(codec::decode_change(&stored)?)
}

/// Where the index came from at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Loaded from the copy saved at the last clean stop, and brought up to date from the log.
    Loaded,
    /// Rebuilt from every citizen key: there was no saved copy, or it was not used (why).
    Rebuilt(Option<String>),
}

/// An event on its way into the registry; its outcome arrives once it is durable and applied (or
/// refused). Generic over the error, so that the ledger hands on the store's with its own.
pub struct PendingApply<E = ApplyError>(Pin<Box<dyn Future<Output = Result<Applied, E>> + Send>>);

impl<E> PendingApply<E> {
    /// The outcome `outcome` will give.
    pub fn new(outcome: impl Future<Output = Result<Applied, E>> + Send + 'static) -> Self {
        Self(Box::pin(outcome))
    }

    pub async fn outcome(self) -> Result<Applied, E> {
        self.0.await
    }
}

/// Figures about the store for operators' metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreStatistics {
    /// Live subscribers of the change feed (`Watch` streams following live).
    pub watchers: usize,
    /// Block-cache hits over lookups since start; 0 before any.
    pub block_cache_hit_ratio: f64,
    pub pending_compaction_bytes: u64,
    /// WAL syncs since start.
    pub wal_syncs: u64,
}

/// The registry's durable state and the index that caches it.
pub struct Store {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    index_origin: IndexOrigin,
    writer: Option<mpsc::Sender<writer::Submission>>,
    writer_thread: Option<JoinHandle<()>>,
    hit_writer: Option<mpsc::Sender<hits::HitSubmission>>,
    hit_thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (creating if needed) the registry in `data_dir`, rebuilds the index from it and
    /// starts the writer. Blocking: call it before serving, or from `spawn_blocking`.
    ///
    /// A data dir that is damaged, is not an idguard registry, or holds another schema version is
    /// refused with a message saying so: it is never silently replaced by an empty registry.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit tuning.
    pub fn open_with(data_dir: &Path, tuning: &StoreOptions) -> Result<Self, StoreError> {
        let (db, options) = open_db(data_dir, tuning)?;
        let stream = OnceLock::new();
        if let Some(name) = db.get(STREAM_KEY)? {
            let _ = stream.set(String::from_utf8_lossy(&name).into_owned());
        }
        let last = applied_sequence(&db)?;
        let last_hit = last_sequence(&db, CF_HITS)?;
        let (index, index_origin) = match snapshot::load(data_dir, &db, last) {
            Ok(Some(index)) => (index, IndexOrigin::Loaded),
            Ok(None) => (rebuild_index(&db)?, IndexOrigin::Rebuilt(None)),
            Err(why) => {
                tracing::warn!(%why, "not using the saved index; rebuilding it from the registry");
                (rebuild_index(&db)?, IndexOrigin::Rebuilt(Some(why)))
            }
        };
        let shared = Arc::new(Shared {
            db,
            options,
            index,
            sequence: AtomicU64::new(last),
            published: watch::Sender::new(last),
            changes: broadcast::Sender::new(LIVE_CHANGES),
            hit_sequence: AtomicU64::new(last_hit),
            hits: broadcast::Sender::new(LIVE_CHANGES),
            stream,
            writable: std::sync::atomic::AtomicBool::new(true),
        });
        let (writer, writer_thread) =
            start_thread(data_dir, "idguard-writer", &shared, writer::run)?;
        let (hit_writer, hit_thread) = start_thread(data_dir, "idguard-hits", &shared, hits::run)?;
        Ok(Self {
            shared,
            data_dir: data_dir.to_owned(),
            index_origin,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            hit_writer: Some(hit_writer),
            hit_thread: Some(hit_thread),
        })
    }

    /// Whether the last write succeeded (see [`Store::probe_write`]).
    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::Acquire)
    }

    /// Tries a small synced write, as the writers would, and records whether the store can write
    /// again: how a node that failed a write finds out that it has recovered (space freed, say).
    /// Blocking.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        let written = self
            .shared
            .db
            .put_opt(PROBE_KEY, self.log().sequence().to_be_bytes(), &sync);
        self.shared
            .writable
            .store(written.is_ok(), Ordering::Release);
        Ok(written?)
    }

    /// Figures for operators' metrics.
    pub fn statistics(&self) -> StoreStatistics {
        let ticker = |ticker| self.shared.options.get_ticker_count(ticker);
        let (hits, misses) = (
            ticker(rocksdb::statistics::Ticker::BlockCacheHit),
            ticker(rocksdb::statistics::Ticker::BlockCacheMiss),
        );
        let pending_compaction_bytes = COLUMN_FAMILIES
            .iter()
            .filter_map(|name| {
                self.shared
                    .db
                    .property_int_value_cf(
                        self.shared.cf(name),
                        "rocksdb.estimate-pending-compaction-bytes",
                    )
                    .ok()
                    .flatten()
            })
            .sum();
        StoreStatistics {
            watchers: self.shared.changes.receiver_count(),
            block_cache_hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            pending_compaction_bytes,
            wal_syncs: ticker(rocksdb::statistics::Ticker::WalFileSynced),
        }
    }

    /// Queues one validated event for the writer, waiting for room in the queue (this is what
    /// slows down a reporter that sends faster than events become durable). Events queued one
    /// after the other are applied in that order. A registry that follows a cluster stream
    /// refuses: its events come from the stream.
    pub async fn enqueue(
        &self,
        event: ValidEvent,
        recorder: &Recorder,
    ) -> Result<PendingApply, ApplyError> {
        if let Some(stream) = self.log().stream() {
            return Err(ApplyError::FollowsStream(stream.to_owned()));
        }
        self.submit(Some(event), recorder, Placement::Next).await
    }

    /// Queues the event that the cluster stream holds at `sequence`, published at `recorded_at`
    /// by `recorder`, for the writer (see [`Store::enqueue`]); or, for a message that is no valid
    /// event (`None`), only the registry's position in the stream: it registers nothing, but the
    /// node has passed it. The outcome is the same on every node.
    pub async fn enqueue_from_stream(
        &self,
        event: Option<ValidEvent>,
        recorder: &Recorder,
        sequence: u64,
        recorded_at: OffsetDateTime,
    ) -> Result<PendingApply, ApplyError> {
        let placement = Placement::Stream {
            sequence,
            recorded_at,
        };
        self.submit(event, recorder, placement).await
    }

    async fn submit(
        &self,
        event: Option<ValidEvent>,
        recorder: &Recorder,
        placement: Placement,
    ) -> Result<PendingApply, ApplyError> {
        let writer = self.writer.as_ref().ok_or(ApplyError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        writer
            .send(writer::Submission {
                event,
                recorder: recorder.clone(),
                placement,
                reply,
            })
            .await
            .map_err(|_| ApplyError::Closed)?;
        Ok(PendingApply::new(async move {
            outcome.await.map_err(|_| ApplyError::Closed)?
        }))
    }

    /// Binds this registry to the cluster stream `name`, for good: from now on its events come
    /// only from that stream, whose sequences become its own. Refused for a registry that holds
    /// events of its own (their sequences would clash with the stream's) or follows another
    /// stream. Blocking.
    pub fn bind_stream(&self, name: &str) -> Result<(), StoreError> {
        let refuse = |why: String| StoreError::data_dir(&self.data_dir, why);
        match self.log().stream() {
            Some(bound) if bound == name => return Ok(()),
            Some(bound) => {
                return Err(refuse(format!(
                    "it follows the cluster stream {bound:?}, not {name:?}"
                )));
            }
            None if self.log().sequence() > 0 => {
                return Err(refuse(format!(
                    "it holds {} events recorded by a single node; a cluster node starts from an \
                     empty data dir or a backup of another node of the same stream",
                    self.log().sequence()
                )));
            }
            None => {}
        }
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        self.shared.db.put_opt(STREAM_KEY, name, &sync)?;
        let _ = self.shared.stream.set(name.to_owned());
        Ok(())
    }

    /// The event log, as checks, feeds and retries read it.
    pub fn log(&self) -> EventLog<'_> {
        EventLog(&self.shared)
    }

    /// The hit log.
    pub fn hits(&self) -> HitLog<'_> {
        HitLog {
            shared: &self.shared,
            writer: self.hit_writer.as_ref(),
        }
    }

    /// The numbers with a record: the index that answers most checks, and their states.
    pub fn citizens(&self) -> Citizens<'_> {
        Citizens {
            shared: &self.shared,
            index_origin: &self.index_origin,
        }
    }

    /// Runs blocking reads on the blocking pool, off the async reactor threads.
    pub async fn read<T, F>(self: &Arc<Self>, reads: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || reads(&store))
            .await
            .map_err(|error| StoreError::Interrupted(error.to_string()))?
    }
}

impl Drop for Store {
    /// Lets the writer finish what it was given and waits for it, so that the database is closed
    /// cleanly when the last reference goes.
    fn drop(&mut self) {
        self.writer.take();
        self.hit_writer.take();
        for thread in [self.writer_thread.take(), self.hit_thread.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!("a writer thread panicked");
            }
        }
        // Everything is in the synced WAL already; flushing memtables only spares the next start
        // a WAL replay.
        for name in COLUMN_FAMILIES {
            if let Err(error) = self.shared.db.flush_cf(self.shared.cf(name)) {
                tracing::warn!(%error, family = name, "flushing memtables at close");
            }
        }
        // Spares the next start a scan of every citizen key.
        let sequence = self.log().sequence();
        if let Err(why) = snapshot::save(
            &self.data_dir,
            &self.shared.db,
            &self.shared.index,
            sequence,
        ) {
            tracing::warn!(%why, "the next start will rebuild the index");
        }
    }
}

/// The default column family's key for the schema version of the data dir.
const SCHEMA_KEY: &[u8] = b"idguard.schema";
/// The layout of keys and values this code reads and writes (`codec`).
const SCHEMA_VERSION: &[u8] = b"3";
/// The default column family's key [`Store::probe_write`] writes.
const PROBE_KEY: &[u8] = b"idguard.probe";
/// The default column family's key for the name of the cluster stream the registry follows.
const STREAM_KEY: &[u8] = b"idguard.stream";
/// The default column family's key for the last stream sequence applied, written in the same
/// batch as what applying it changed.
const STREAM_POSITION_KEY: &[u8] = b"idguard.stream_position";

/// Options every column family is created, opened and bulk-written with.
fn family_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    // Partitioned index and filters: a whole-file filter of a large SST is megabytes, too big
    // for a cache shard, and was re-read and checksummed on every lookup (writes fell to a few
    // thousand per second at 5M events). Partitions are small and cache well; the top level
    // stays pinned.
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut family = Options::default();
    family.set_block_based_table_factory(&table);
    family.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // zstd where nearly all the data lies and is rarely rewritten: the bottommost level, and the
    // import's SSTs (ingested there). At 5M citizens it stores 74 bytes per citizen against LZ4's
    // 109, for about a quarter more import time; upper levels, rewritten soon, keep LZ4's speed.
    family.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    family
}

/// Opens (creating if it is new) the RocksDB registry in `data_dir`, refusing one that is
/// damaged, foreign or of another schema, and completing a bulk import that a crash interrupted.
fn open_db(data_dir: &Path, tuning: &StoreOptions) -> Result<(DB, Options), StoreError> {
    let refuse = |why: String| StoreError::data_dir(data_dir, why);
    let is_new = is_new_data_dir(data_dir).map_err(|error| refuse(error.to_string()))?;
    if !is_new && !data_dir.join("CURRENT").exists() {
        return Err(refuse(
            "it holds files but no RocksDB CURRENT file: it is not an idguard registry, or it \
             is damaged; refusing to create a registry over it"
                .into(),
        ));
    }
    std::fs::create_dir_all(data_dir).map_err(|error| refuse(error.to_string()))?;
    let family = family_options(&Cache::new_lru_cache(tuning.block_cache_bytes));
    let mut options = family.clone();
    options.create_if_missing(is_new);
    options.create_missing_column_families(is_new);
    options.increase_parallelism(2);
    // Tickers only (cache hits, WAL syncs): cheap counters, no timing histograms.
    options.enable_statistics();
    options.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
    // A family added by a later release is created once the schema mark is checked.
    let existing = if is_new {
        COLUMN_FAMILIES
            .iter()
            .map(|name| name.to_string())
            .collect()
    } else {
        DB::list_cf(&options, data_dir).unwrap_or_default()
    };
    let (present, missing): (Vec<&str>, Vec<&str>) = COLUMN_FAMILIES.iter().partition(|name| {
        !ADDED_FAMILIES.contains(name) || existing.iter().any(|family| family == *name)
    });
    let families = present
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, family.clone()));
    let mut db = DB::open_cf_descriptors(&options, data_dir, families).map_err(|error| {
        refuse(format!(
            "cannot open the registry (is another idguard using it?): {error}"
        ))
    })?;
    check_schema(&db, is_new).map_err(refuse)?;
    for name in missing {
        db.create_cf(name, &family)?;
    }
    bulk::finish_interrupted_ingestion(data_dir, &db)?;
    Ok((db, options))
}

/// Whether `data_dir` is missing or empty, so that a registry may be created in it.
fn is_new_data_dir(data_dir: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error),
    }
}

/// Marks a new registry with the schema version, or checks an existing one's mark.
fn check_schema(db: &DB, is_new: bool) -> Result<(), String> {
    if is_new {
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        return db
            .put_opt(SCHEMA_KEY, SCHEMA_VERSION, &sync)
            .map_err(|error| format!("writing the schema version: {error}"));
    }
    match db.get(SCHEMA_KEY) {
        Ok(Some(version)) if version == SCHEMA_VERSION => Ok(()),
        Ok(Some(version)) => Err(format!(
            "it holds registry schema version {:?}, and this idguard reads version {:?} only",
            String::from_utf8_lossy(&version),
            String::from_utf8_lossy(SCHEMA_VERSION)
        )),
        Ok(None) => Err("it is a RocksDB database without an idguard schema mark".into()),
        Err(error) => Err(format!("reading the schema version: {error}")),
    }
}

/// Starts a writer thread running `run` over a new queue.
fn start_thread<T: Send + 'static>(
    data_dir: &Path,
    name: &str,
    shared: &Arc<Shared>,
    run: fn(&Shared, mpsc::Receiver<T>),
) -> Result<(mpsc::Sender<T>, JoinHandle<()>), StoreError> {
    let (sender, receiver) = mpsc::channel(WRITER_QUEUE);
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&shared, receiver))
        .map_err(|error| {
            StoreError::data_dir(data_dir, format!("starting the {name} thread: {error}"))
        })?;
    Ok((sender, thread))
}

/// The last sequence of a sequence-keyed log, 0 for an empty one.
fn last_sequence(db: &DB, family: &'static str) -> Result<u64, StoreError> {
    let last = db
        .iterator_cf(column_family(db, family), IteratorMode::End)
        .next()
        .transpose()?;
    match last {
        Some((key, _)) => Ok(codec::decode_sequence(&key)?),
        None => Ok(0),
    }
}

/// The registry's sequence: its last event's, or for a cluster node the last stream sequence it
/// applied, which may have registered nothing (a duplicate or refused message).
fn applied_sequence(db: &DB) -> Result<u64, StoreError> {
    let last = last_sequence(db, CF_EVENTS)?;
    match db.get(STREAM_POSITION_KEY)? {
        Some(position) => Ok(last.max(codec::decode_sequence(&position)?)),
        None => Ok(last),
    }
}

/// The index of every number with a state, with its memo, read from the `citizens` family.
fn rebuild_index(db: &DB) -> Result<RecordIndex, StoreError> {
    let cf = column_family(db, CF_CITIZENS);
    let estimate = db
        .property_int_value_cf(cf, "rocksdb.estimate-num-keys")?
        .unwrap_or(0);
    let index = RecordIndex::with_capacity(usize::try_from(estimate).unwrap_or(0));
    let mut citizens = db.raw_iterator_cf(cf);
    citizens.seek_to_first();
    let mut batch = Vec::with_capacity(4096);
    while let (Some(key), Some(value)) = (citizens.key(), citizens.value()) {
        batch.push(codec::decode_citizen_memo(key, value)?);
        if batch.len() == batch.capacity() {
            index.insert(batch.drain(..));
        }
        citizens.next();
    }
    citizens.status()?;
    index.insert(batch);
    Ok(index)
}
