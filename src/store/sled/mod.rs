//! The embedded engine: [`Engine`] on sled 0.34, in `DATA_DIR/sled/`.
//!
//! Every record lives in sled's default tree. A batch is one
//! `sled::Batch`, which sled applies atomically and keeps atomic across a
//! crash; its guards are checked under a mutex that every `apply` takes, so
//! no other batch lands between the check and the write (only this process
//! writes: the data directory's `LOCK` file says so). sled's background
//! flush runs every 500 ms; [`Engine::flush`] makes everything applied
//! durable at once.
//!
//! This is the only module that names sled's types.

use super::engine::{Batch, Engine, Entry, Op};
use super::{engine_panics, Result, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The engine's directory inside a data directory.
fn engine_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sled")
}

/// Whether `data_dir` holds this engine's files.
pub fn exists_in(data_dir: &Path) -> bool {
    engine_dir(data_dir).exists()
}

pub struct SledEngine {
    db: ::sled::Db,
    /// Taken by every `apply`, so that its guards still hold when it writes.
    writing: Mutex<()>,
}

impl SledEngine {
    /// Opens (or creates) the engine in `data_dir`, with sled's page cache
    /// bounded to `cache_bytes` (sled's own accounting; the OS page cache
    /// holds the rest of the files).
    ///
    /// sled frees a closed database through epoch-based reclamation, so its
    /// file lock can outlive the last handle by a moment. Another *process*
    /// cannot be the holder here: the registry's own `LOCK` file was taken
    /// first. So a lock conflict is retried for a few seconds before it is
    /// reported. A damaged file can make sled panic while it recovers: that
    /// panic becomes [`StoreError::Engine`].
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<SledEngine> {
        let path = engine_dir(data_dir);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let opened = engine_panics::quietly(|| {
                ::sled::Config::new()
                    .path(&path)
                    .cache_capacity(cache_bytes)
                    .open()
            })
            .map_err(StoreError::Engine)?;
            match opened {
                Err(::sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() > deadline {
                        return Err(StoreError::Io(e));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(other) => return Err(from_sled(other)),
                Ok(db) => {
                    return Ok(SledEngine {
                        db,
                        writing: Mutex::new(()),
                    })
                }
            }
        }
    }
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key).map_err(from_sled)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        use std::ops::Bound;
        if end.is_some_and(|end| start >= end) || limit == 0 {
            return Ok(Vec::new());
        }
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let range = self.db.range::<&[u8], _>((Bound::Included(start), upper));
        let collect =
            |items: &mut dyn Iterator<Item = ::sled::Result<(::sled::IVec, ::sled::IVec)>>| {
                items
                    .take(limit)
                    .map(|item| {
                        let (key, value) = item.map_err(from_sled)?;
                        Ok((key.to_vec(), value.to_vec()))
                    })
                    .collect::<Result<Vec<Entry>>>()
            };
        if reverse {
            collect(&mut range.rev())
        } else {
            collect(&mut range.into_iter())
        }
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        for guard in &batch.guards {
            let now = self.db.get(&guard.key).map_err(from_sled)?;
            if now.as_deref() != guard.value.as_deref() {
                return Err(StoreError::Conflict(
                    String::from_utf8_lossy(&guard.key).replace('\0', "/"),
                ));
            }
        }
        let mut write = ::sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put { key, value } => write.insert(key, value),
                Op::Delete { key } => write.remove(key),
            }
        }
        self.db.apply_batch(write).map_err(from_sled)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(from_sled)
    }

    fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(from_sled)
    }
}

/// sled's error as the contract's: I/O stays I/O; whatever says the files
/// are not what sled wrote is damage. sled says `Unsupported` when its
/// damaged config file no longer parses (this build has only ever written
/// sled 0.34 stores).
fn from_sled(error: ::sled::Error) -> StoreError {
    match error {
        ::sled::Error::Io(e) => StoreError::Io(e),
        ::sled::Error::Corruption { .. }
        | ::sled::Error::Unsupported(_)
        | ::sled::Error::CollectionNotFound(_) => StoreError::Damaged(error.to_string()),
        ::sled::Error::ReportableBug(message) => StoreError::Engine(message),
    }
}
