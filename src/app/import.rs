//! `idguard import`: bulk-loads export files into a data dir, offline, validating every record.
//!
//! Reading, validating and loading overlap on three threads: one parses the files, one checks
//! every record against the card and event rules (the same [`validate_event`] a server applies),
//! and the caller's thread hands the valid ones to the store's [`BulkLoad`], which sorts and
//! ingests them. A record that breaks a rule, or reuses a `report_id` for other content, is written
//! to the reject file as `FILE:LINE: reason` and changes nothing.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use crate::event::{ValidEvent, validate_event};
use crate::event_file::{Origin, read_events_from};
use crate::store::{BulkLoad, BulkSummary, Progress, Refusal, StoreError, StoreOptions};

/// Records handed between the import's threads at once.
const CHUNK: usize = 4096;
/// Chunks queued between two threads: enough to ride out a sort spill, little memory.
const CHUNKS_QUEUED: usize = 8;

/// What `idguard import` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub files: Vec<PathBuf>,
    pub data_dir: PathBuf,
    /// Where refused records are listed.
    pub rejects: PathBuf,
    /// Temporary files (sort runs, spools, SSTs); on the data dir's file system.
    pub work_dir: PathBuf,
    /// Memory for each external sort's buffer.
    pub memory_bytes: usize,
    pub store: StoreOptions,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    /// Records read from the files.
    pub records: u64,
    /// Records that broke a rule of their own.
    pub invalid: u64,
    pub bulk: BulkSummary,
    pub seconds: f64,
}

impl ImportReport {
    /// Records listed in the reject file.
    pub fn rejected(&self) -> u64 {
        self.invalid + self.bulk.refused
    }
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the reject file {}: {source}", path.display())]
    Rejects {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("more than {} input files", u32::MAX)]
    TooManyFiles,
}

/// One record, as far as the thread that read it got.
type Read1 = (Origin, Result<crate::proto::v1::RegistryEvent, String>);
/// One record, validated.
type Checked = (Origin, Result<ValidEvent, String>);

/// Runs an import. Blocking: it is meant for a command-line process, not an async task.
pub fn import(plan: &ImportPlan) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    u32::try_from(plan.files.len()).map_err(|_| ImportError::TooManyFiles)?;
    let total_bytes = plan
        .files
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .map(|meta| meta.len())
                .map_err(|source| ImportError::Read {
                    path: path.clone(),
                    source,
                })
        })
        .sum::<Result<u64, _>>()?;
    let now = OffsetDateTime::now_utc();
    let mut bulk = BulkLoad::open(
        &plan.data_dir,
        &plan.work_dir,
        plan.memory_bytes,
        &plan.store,
        now,
    )?;
    let mut rejects = Rejects::create(&plan.rejects, &plan.files)?;
    let bytes_read = Arc::new(AtomicU64::new(0));
    let bar = reading_bar(total_bytes);

    let (read_out, read_in) = sync_channel::<Vec<Read1>>(CHUNKS_QUEUED);
    let (checked_out, checked_in) = sync_channel::<Vec<Checked>>(CHUNKS_QUEUED);
    let (records, invalid) = std::thread::scope(|scope| -> Result<(u64, u64), ImportError> {
        let spawn_error = |source| ImportError::Read {
            path: plan.files[0].clone(),
            source,
        };
        let reader = {
            let bytes_read = Arc::clone(&bytes_read);
            std::thread::Builder::new()
                .name("import-read".into())
                .spawn_scoped(scope, move || {
                    read_files(&plan.files, &bytes_read, read_out)
                })
                .map_err(spawn_error)?
        };
        std::thread::Builder::new()
            .name("import-validate".into())
            .spawn_scoped(scope, move || validate(read_in, now, checked_out))
            .map_err(spawn_error)?;
        let mut counts = (0u64, 0u64);
        for chunk in checked_in {
            for (origin, checked) in chunk {
                counts.0 += 1;
                match checked {
                    Ok(valid) => bulk.add(origin, &valid)?,
                    Err(why) => {
                        counts.1 += 1;
                        rejects.write(origin, &why)?;
                    }
                }
            }
            bar.set_position(bytes_read.load(Ordering::Relaxed));
            bar.set_message(rate_message(counts.0, started));
        }
        reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok(counts)
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        step = "reading and validating",
        seconds,
        records,
        "import step done"
    );

    let mut progress = StepBar::default();
    let mut refusal_error = None;
    let bulk = bulk.finish(
        &mut |origin, refusal| {
            let why = rejects.describe(refusal);
            if let Err(error) = rejects.write(origin, &why) {
                refusal_error.get_or_insert(error);
            }
        },
        &mut progress,
    )?;
    progress.clear();
    if let Some(error) = refusal_error {
        return Err(error);
    }
    rejects.finish()?;
    Ok(ImportReport {
        records,
        invalid,
        bulk,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The reader thread: every record of every file, in order, in chunks.
fn read_files(
    files: &[PathBuf],
    bytes_read: &Arc<AtomicU64>,
    out: SyncSender<Vec<Read1>>,
) -> Result<(), ImportError> {
    for (file, path) in (0u32..).zip(files) {
        let input = File::open(path).map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?;
        let counted = CountingReader {
            input,
            count: Arc::clone(bytes_read),
        };
        let records = read_events_from(path, counted).map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?;
        let mut chunk = Vec::with_capacity(CHUNK);
        for (line, record) in records {
            chunk.push((Origin { file, line }, record));
            if chunk.len() == CHUNK
                && out
                    .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                    .is_err()
            {
                return Ok(());
            }
        }
        if !chunk.is_empty() && out.send(chunk).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The validating thread: the export record's own fields, then the event rules.
fn validate(input: Receiver<Vec<Read1>>, now: OffsetDateTime, out: SyncSender<Vec<Checked>>) {
    for chunk in input {
        let checked = chunk
            .into_iter()
            .map(|(origin, wire)| {
                let valid = wire
                    .and_then(|wire| validate_event(wire, now).map_err(|error| error.to_string()));
                (origin, valid)
            })
            .collect();
        if out.send(checked).is_err() {
            return;
        }
    }
}

/// Counts the bytes read through it, for the progress bar.
struct CountingReader {
    input: File,
    count: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The reject file: one `FILE:LINE: reason` line per refused record.
struct Rejects<'a> {
    path: PathBuf,
    files: &'a [PathBuf],
    out: BufWriter<File>,
}

impl<'a> Rejects<'a> {
    fn create(path: &Path, files: &'a [PathBuf]) -> Result<Self, ImportError> {
        let out = File::create(path).map_err(|source| ImportError::Rejects {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            files,
            out: BufWriter::new(out),
        })
    }

    fn at(&self, origin: Origin) -> String {
        let file = self.files.get(origin.file as usize);
        format!(
            "{}:{}",
            file.map_or_else(|| "?".into(), |path| path.display().to_string()),
            origin.line
        )
    }

    fn describe(&self, refusal: Refusal) -> String {
        match refusal {
            Refusal::ConflictsWithStored {
                report_id,
                sequence,
            } => format!(
                "report_id {report_id:?} was already accepted with different content (sequence \
                 {sequence})"
            ),
            Refusal::ConflictsWithEarlier { report_id, earlier } => format!(
                "report_id {report_id:?} is used with different content at {}",
                self.at(earlier)
            ),
            Refusal::Invalid(error) => error.to_string(),
        }
    }

    fn write(&mut self, origin: Origin, why: &str) -> Result<(), ImportError> {
        let line = format!("{}: {why}\n", self.at(origin));
        self.out
            .write_all(line.as_bytes())
            .map_err(|source| ImportError::Rejects {
                path: self.path.clone(),
                source,
            })
    }

    fn finish(mut self) -> Result<(), ImportError> {
        self.out.flush().map_err(|source| ImportError::Rejects {
            path: self.path.clone(),
            source,
        })
    }
}

fn rate_message(records: u64, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    format!("{records} records, {:.0}/s", records as f64 / seconds)
}

/// A progress bar of `total` items drawn with `template`, ticking on its own; drawn only on a
/// terminal.
fn progress_bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The bar of the reading step: bytes of input, with the record rate as its message.
fn reading_bar(total_bytes: u64) -> ProgressBar {
    progress_bar(
        total_bytes,
        "reading and validating [{bar:30}] {bytes}/{total_bytes} {msg}, ETA {eta}",
    )
}

/// One bar per step of [`BulkLoad::finish`]; each step's time goes to the log as it ends.
#[derive(Default)]
struct StepBar(Option<(ProgressBar, &'static str, Instant)>);

impl StepBar {
    fn clear(&mut self) {
        if let Some((bar, step, started)) = self.0.take() {
            bar.finish_and_clear();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(step, seconds, "import step done");
        }
    }
}

impl Progress for StepBar {
    fn step(&mut self, name: &'static str, total: u64) {
        self.clear();
        let bar = progress_bar(total, "{msg} [{bar:30}] {human_pos}/{human_len}, ETA {eta}");
        bar.set_message(name);
        self.0 = Some((bar, name, Instant::now()));
    }

    fn done(&mut self, done: u64) {
        if let Some((bar, ..)) = &self.0 {
            bar.set_position(done);
        }
    }
}
