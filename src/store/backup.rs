//! Online backups and restores. A backup is a RocksDB checkpoint of every column family at one
//! instant, taken while the server goes on serving and writing (files are hard-linked when the
//! backup is on the data dir's file system, copied otherwise). A restore copies one into a new
//! data dir, which then opens as the registry stood at the backup's sequence.

use std::path::Path;

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{DB, Options};

use super::{Store, StoreError, applied_sequence, check_schema, is_new_data_dir};

impl Store {
    /// Writes a consistent backup of the registry into `to`, which must not exist yet, and
    /// returns the sequence it holds (every event up to it, none after). Blocking.
    pub fn backup(&self, to: &Path) -> Result<u64, StoreError> {
        if to.exists() {
            return Err(StoreError::data_dir(
                to,
                "already exists: a backup goes into a new directory",
            ));
        }
        Checkpoint::new(&self.shared.db)?.create_checkpoint(to)?;
        registry_sequence(to)
    }
}

/// The last sequence of the registry in `dir`, read without changing anything there; refuses a
/// directory that is not an idguard registry.
pub fn registry_sequence(dir: &Path) -> Result<u64, StoreError> {
    let options = Options::default();
    let families = DB::list_cf(&options, dir)
        .map_err(|error| StoreError::data_dir(dir, format!("not a registry: {error}")))?;
    let db = DB::open_cf_for_read_only(&options, dir, families, false)?;
    check_schema(&db, false).map_err(|why| StoreError::data_dir(dir, why))?;
    applied_sequence(&db)
}

/// Copies the backup in `from` into `data_dir`, which must be missing or empty, and returns the
/// sequence it holds. The copy shares no file with the backup, so the backup stays as it was.
pub fn restore(from: &Path, data_dir: &Path) -> Result<u64, StoreError> {
    let sequence = registry_sequence(from)?;
    if !is_new_data_dir(data_dir)? {
        return Err(StoreError::data_dir(
            data_dir,
            "is not empty: a backup is restored into a new data dir only",
        ));
    }
    std::fs::create_dir_all(data_dir)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), data_dir.join(entry.file_name()))?;
        }
    }
    // Durable before anyone is told it is restored.
    for entry in std::fs::read_dir(data_dir)? {
        std::fs::File::open(entry?.path())?.sync_all()?;
    }
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(sequence)
}
