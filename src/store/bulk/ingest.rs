//! Step 7: the SSTs ingested, crash-safely. RocksDB ingests one column family at a time, so the
//! SSTs are hard-linked aside and a marker is written before ingestion starts; if a crash
//! interrupts it, the next open ingests them again (ingesting the same keys and values twice
//! changes nothing) and only then serves.

use std::fs::File;
use std::path::{Path, PathBuf};

use rocksdb::{DB, IngestExternalFileOptions, WriteOptions};

use super::spool::io_error;
use super::{Collected, INGESTED, Progress, SstSet};
use crate::store::{StoreError, column_family, snapshot};

/// The default column family's key marking an ingestion in progress.
const INGESTING_KEY: &[u8] = b"idguard.ingesting";
/// Where SSTs are kept while their ingestion may still have to be redone.
const KEPT_DIR: &str = "ingesting";

impl Collected {
    /// Ingests every family's SSTs, crash-safely (see the module documentation).
    pub(super) fn ingest_all(
        &self,
        ssts: &SstSet,
        progress: &mut dyn Progress,
    ) -> Result<(), StoreError> {
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
pub(in crate::store) fn finish_interrupted_ingestion(
    data_dir: &Path,
    db: &DB,
) -> Result<(), StoreError> {
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
