//! Sorted string tables written directly, for RocksDB to ingest whole.

use std::path::{Path, PathBuf};

use rocksdb::{Options, SstFileWriter};

use crate::store::StoreError;

/// SST files are cut at about this size: RocksDB's target file size (`target_file_size_base`,
/// 64 MiB), the size its own compactions write. Numbers and ids are spread evenly over the key
/// space, so a compaction of live writes into the imported level rewrites every imported file a
/// file above overlaps; at this size that is a few hundred megabytes at a time, where files of
/// 512 MiB each would rewrite one or two of them, up to a gigabyte at a time.
const SST_FILE_BYTES: u64 = 64 << 20;

/// SST files of one column family, cut at [`SST_FILE_BYTES`]; keys must come in order.
pub(super) struct SstFiles<'a> {
    options: &'a Options,
    dir: PathBuf,
    family: &'static str,
    writer: Option<SstFileWriter<'a>>,
    puts: u64,
    files: Vec<PathBuf>,
}

impl<'a> SstFiles<'a> {
    pub(super) fn new(options: &'a Options, dir: &Path, family: &'static str) -> Self {
        Self {
            options,
            dir: dir.to_owned(),
            family,
            writer: None,
            puts: 0,
            files: Vec::new(),
        }
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
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

    pub(super) fn finish(mut self) -> Result<Vec<PathBuf>, StoreError> {
        self.cut()?;
        Ok(self.files)
    }
}
