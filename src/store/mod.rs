//! The store: sled behind a narrow API.
//!
//! Everything lives in one sled tree under key prefixes, so that every
//! revision is written with one atomic `sled::Batch`:
//!
//! | key | value |
//! | --- | --- |
//! | `meta/schema` | on-disk schema version, u32 big-endian |
//! | `meta/rev` | head revision, u64 big-endian |
//! | `meta/compact` | compact revision: log records at or below it are gone |
//! | `r/{rev}` | the change-log record of one revision |
//! | `p/{name}` | prompt summary (newest version) |
//! | `v/{name}\0{version}` | one version with its content |
//! | `d/{name}\0{digest}` | digest → version number |
//! | `x/{digest}{name}\0{version}` | one version with that digest, across prompts (FindByDigest) |
//! | `l/{name}\0{label}` | a label's current target |
//! | `h/{name}\0{label}\0{rev}` | one move in a label's history |
//! | `a/{seq}` | one audit ledger entry, hash-chained to the one before |
//! | `meta/ledger` | the ledger head: sequence and hash |
//! | `k/{key_id}` | a public signing key |
//! | `meta/signing_key` | the active signing key's id |
//! | `meta/encryption` | the data key id, when version content is encrypted |
//!
//! Numbers in keys are big-endian so that byte order is numeric order. The
//! change log (`r/`) is the source of truth for what happened; `p/`, `l/`,
//! `h/`, `d/` are derived from it in the same batch by [`Store::commit`].
//! The label history is a full copy, not a pointer into the log, so that
//! the log can later be compacted without losing history.

pub mod backup;
pub mod durable_head;
pub(crate) mod engine_panics;
pub(crate) mod records;
mod sealing;
mod torn_tail;

use crate::domain::{
    Change, ContentDigest, LabelMove, LabelName, LabelTarget, PromptName, PromptSummary, Revision,
    Version,
};
use crate::domain::{KeyRotation, Micros};
use crate::provenance::{AuditEntry, LedgerHead};
use durable_head::{DurableHead, DurableHeadFile};
use records::{
    decode, encode, AuditRec, KeyRec, LabelRec, MoveRec, PromptRec, RevisionRec, VersionRec,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub use records::CorruptRecord;
pub use sealing::{DataKey, DataKeyError};

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// sled's page cache unless `serve --store-cache-mb` says otherwise: 32 MiB.
/// sled's own default is 1 GiB, and sled fills its cache as data is
/// written, so the process's memory would follow the data up to it. Reads
/// that miss it are served from the OS page cache, which the kernel can
/// reclaim; prompts are small, so 32 MiB holds the hot part of a large
/// registry.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

const KEY_SCHEMA: &[u8] = b"meta/schema";
const KEY_HEAD: &[u8] = b"meta/rev";
const KEY_COMPACT: &[u8] = b"meta/compact";
const KEY_LEDGER: &[u8] = b"meta/ledger";
const KEY_SIGNING: &[u8] = b"meta/signing_key";
const KEY_ENCRYPTION: &[u8] = b"meta/encryption";
/// The file beside the store that names the data key id of an encrypted store.
pub(crate) const ENCRYPTION_MARKER: &str = "ENCRYPTION";

/// Compares the data key id a store was encrypted with to the key given.
fn check_data_key(stored: Option<String>, key: Option<&DataKey>) -> Result<()> {
    match (stored, key) {
        (Some(id), None) => Err(StoreError::Encryption(format!(
            "this store is encrypted with data key {id}; start with --encryption-key-file FILE holding that key"
        ))),
        (Some(id), Some(key)) if id != key.key_id => Err(StoreError::Encryption(format!(
            "wrong data key: this store is encrypted with data key {id}, the key file holds {}",
            key.key_id
        ))),
        _ => Ok(()),
    }
}

/// A public signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub created_at: Micros,
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error("the data directory holds schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { found: u32 },
    #[error("{0}")]
    Encryption(String),
    #[error("the storage engine could not open the store: it failed with \"{0}\"")]
    Engine(String),
    #[error("cannot use {}: {source}", durable_head::FILE_NAME)]
    DurableHead { source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The embedded store. Cheap to clone (sled handles are reference counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Seals version content when the store is encrypted.
    data_key: Option<std::sync::Arc<DataKey>>,
    /// Flushes still to fail (fault injection; 0 in production).
    failing_flushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Advanced by every flush, so that a store that sled's recovery rolled
    /// back is noticed (see `durable_head.rs`).
    durable_head: Arc<DurableHeadFile>,
    /// What the durable-head file said when the store was opened.
    recorded_head: Option<DurableHead>,
    /// The data directory, for the free-space check.
    dir: Arc<std::path::PathBuf>,
}

/// The bytes an unprivileged process may still write on the filesystem
/// holding `dir` (`statvfs`'s `f_bavail` blocks).
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the data directory's path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` points to
    // writable memory of the right size; statvfs fills it or fails.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ by platform
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

impl Store {
    /// Opens (or creates) the store in `dir`. A new store is stamped with
    /// [`SCHEMA_VERSION`]; an existing one must carry it.
    ///
    /// With a `data_key`, version content is encrypted at rest. An existing
    /// unencrypted store is migrated: every version is sealed in one atomic
    /// batch, recorded in the audit ledger. A store encrypted with another
    /// key, or opened without its key, is refused before anything is read or
    /// written.
    pub fn open(dir: &Path, data_key: Option<DataKey>) -> Result<Store> {
        Store::open_with_cache(dir, data_key, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache bounded to `cache_bytes`
    /// (sled's own accounting; the OS page cache holds the rest of the
    /// files).
    pub fn open_with_cache(
        dir: &Path,
        data_key: Option<DataKey>,
        cache_bytes: u64,
    ) -> Result<Store> {
        // The data key id is also kept in a plain file beside the store, so
        // that a start with a wrong or missing key is refused before sled
        // opens (sled writes to its files when it opens).
        let marker = dir.join(ENCRYPTION_MARKER);
        if let Ok(id) = std::fs::read_to_string(&marker) {
            check_data_key(Some(id.trim().to_string()), data_key.as_ref())?;
        }
        let (durable_head, recorded_head) =
            DurableHeadFile::open(dir).map_err(|source| StoreError::DurableHead { source })?;
        let db = open_sled(&dir.join("sled"), cache_bytes)?;
        match db.get(KEY_SCHEMA)? {
            None => {
                db.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(KEY_SCHEMA, "schema version is not 4 bytes"))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
        }
        let store = Store {
            db,
            data_key: data_key.map(std::sync::Arc::new),
            failing_flushes: Default::default(),
            durable_head: Arc::new(durable_head),
            recorded_head,
            dir: Arc::new(dir.to_path_buf()),
        };
        store.check_encryption()?;
        if let Some(key) = &store.data_key {
            if !marker.exists() {
                std::fs::write(&marker, format!("{}\n", key.key_id)).map_err(|e| {
                    StoreError::Encryption(format!("cannot write {}: {e}", marker.display()))
                })?;
            }
        }
        Ok(store)
    }

    fn check_encryption(&self) -> Result<()> {
        let stored = self
            .db
            .get(KEY_ENCRYPTION)?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned());
        match (stored, self.data_key.as_deref()) {
            (None, Some(key)) => self.encrypt_existing(key),
            (stored, key) => check_data_key(stored, key),
        }
    }

    /// Seals every stored version with `key` and marks the store encrypted,
    /// in one batch with a ledger entry.
    fn encrypt_existing(&self, key: &DataKey) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut sealed = 0;
        for item in self.db.scan_prefix(b"v/") {
            let (record_key, raw) = item?;
            let mut rec: VersionRec = decode(&record_key, &raw)?;
            if rec.sealed.is_none() {
                rec.seal(key, &record_key);
                batch.insert(record_key, encode(&rec));
                sealed += 1;
            }
        }
        let head = self.ledger_head()?;
        let revision = self.head_revision()?;
        let entry = AuditEntry::after(
            &head,
            revision,
            crate::time::now_micros(),
            "promptreg",
            "enable_encryption",
            "store".to_string(),
            "started with --encryption-key-file",
            format!("data key {}; {sealed} versions sealed", key.key_id),
        );
        batch.insert(audit_key(entry.sequence), encode(&AuditRec::from(&entry)));
        batch.insert(KEY_LEDGER, encode(&LedgerHeadRec::from(entry.head())));
        batch.insert(KEY_ENCRYPTION, key.key_id.as_bytes());
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The stored form of a version: sealed when the store is encrypted.
    fn encode_version(&self, record_key: &[u8], version: &Version) -> Vec<u8> {
        let mut rec = VersionRec::from(version);
        if let Some(key) = &self.data_key {
            rec.seal(key, record_key);
        }
        encode(&rec)
    }

    fn decode_version(&self, record_key: &[u8], raw: &[u8]) -> Result<Version> {
        let mut rec: VersionRec = decode(record_key, raw)?;
        rec.unseal(self.data_key.as_deref(), record_key)
            .map_err(|e| corrupt(record_key, e))?;
        rec.into_domain().map_err(|e| corrupt(record_key, e))
    }

    /// The newest committed revision (0 for an empty store).
    pub fn head_revision(&self) -> Result<u64> {
        match self.db.get(KEY_HEAD)? {
            None => Ok(0),
            Some(raw) => read_u64(KEY_HEAD, &raw),
        }
    }

    /// Applies one revision atomically: its change-log record, and every
    /// index derived from its changes. `published` carries the full version
    /// for a `VersionPublished` change.
    ///
    /// After this returns the revision is visible to readers but not yet
    /// durable: call [`Store::flush`] before acknowledging it.
    ///
    /// Every change also appends one audit ledger entry, chained to the
    /// previous head, in the same batch.
    pub fn commit(&self, revision: &Revision, published: Option<&Version>) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut head = self.ledger_head()?;
        for change in &revision.changes {
            let entry = ledger_entry(&head, revision, change, published);
            batch.insert(audit_key(entry.sequence), encode(&AuditRec::from(&entry)));
            head = entry.head();
            match change {
                Change::VersionPublished {
                    name,
                    version,
                    digest,
                    ..
                } => {
                    let full = published
                        .filter(|v| &v.name == name && v.number == *version)
                        .expect("commit: a published change comes with its version");
                    let key = version_key(name, *version);
                    let value = self.encode_version(&key, full);
                    batch.insert(key, value);
                    batch.insert(digest_key(name, digest), &version.to_be_bytes());
                    batch.insert(
                        digest_index_key(digest, name, *version),
                        &version.to_be_bytes(),
                    );
                    let prompt = PromptRec {
                        latest_version: *version,
                        latest_digest: digest.to_string(),
                        updated_at: revision.time,
                    };
                    batch.insert(prompt_key(name), encode(&prompt));
                }
                Change::LabelMoved(mv) => {
                    batch.insert(
                        history_key(&mv.name, &mv.label, mv.revision),
                        encode(&MoveRec::from(mv)),
                    );
                    let key = label_key(&mv.name, &mv.label);
                    match (mv.to_version, mv.digest) {
                        (Some(version), Some(digest)) => {
                            let label = LabelRec {
                                version,
                                digest: digest.to_string(),
                                revision: mv.revision,
                                updated_at: mv.time,
                            };
                            batch.insert(key, encode(&label));
                        }
                        _ => batch.remove(key),
                    }
                }
            }
        }
        batch.insert(KEY_LEDGER, encode(&LedgerHeadRec::from(head)));
        batch.insert(
            revision_key(revision.revision),
            encode(&RevisionRec::from(revision)),
        );
        batch.insert(KEY_HEAD, &revision.revision.to_be_bytes());
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every committed revision durable. After this returns, the
    /// revisions committed before the call survive a crash (`kill -9`, power
    /// loss on a disk that honours fsync), and the durable-head file says
    /// they are there, so that a store that later comes back without them
    /// is refused.
    ///
    /// The flush runs on a blocking thread: sled's flush can wait forever
    /// when the disk is full, and must not hold up an async worker.
    pub async fn flush(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|e| StoreError::Io(sled::Error::Io(std::io::Error::other(e.to_string()))))?
    }

    fn current_head(&self) -> Result<DurableHead> {
        Ok(DurableHead {
            revision: self.head_revision()?,
            ledger: self.ledger_head()?,
        })
    }

    /// Makes the next `count` flushes fail, as a full or failing disk
    /// would. For fault-injection tests.
    #[doc(hidden)]
    pub fn inject_flush_failures(&self, count: u64) {
        self.failing_flushes
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// The same as [`Store::flush`], blocking (call it off the async
    /// workers).
    pub fn flush_blocking(&self) -> Result<()> {
        // Read before the flush: everything committed by now is covered by it.
        let head = self.current_head()?;
        let injected = self
            .failing_flushes
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if injected {
            return Err(StoreError::Io(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            ))));
        }
        self.db.flush()?;
        self.durable_head
            .advance(&head)
            .map_err(|source| StoreError::DurableHead { source })
    }

    /// The bytes free for this process on the filesystem holding the store.
    pub fn free_space(&self) -> std::io::Result<u64> {
        free_space(&self.dir)
    }

    pub fn version(&self, name: &PromptName, number: u64) -> Result<Option<Version>> {
        let key = version_key(name, number);
        self.db
            .get(&key)?
            .map(|raw| self.decode_version(&key, &raw))
            .transpose()
    }

    pub fn version_by_digest(
        &self,
        name: &PromptName,
        digest: &ContentDigest,
    ) -> Result<Option<u64>> {
        let key = digest_key(name, digest);
        self.db
            .get(&key)?
            .map(|raw| read_u64(&key, &raw))
            .transpose()
    }

    pub fn prompt(&self, name: &PromptName) -> Result<Option<PromptSummary>> {
        let key = prompt_key(name);
        self.db
            .get(&key)?
            .map(|raw| {
                decode::<PromptRec>(&key, &raw)?
                    .into_domain(name.as_str())
                    .map_err(|e| corrupt(&key, e))
            })
            .transpose()
    }

    pub fn label(&self, name: &PromptName, label: &LabelName) -> Result<Option<LabelTarget>> {
        let key = label_key(name, label);
        self.db
            .get(&key)?
            .map(|raw| {
                decode::<LabelRec>(&key, &raw)?
                    .into_domain(label.as_str())
                    .map_err(|e| corrupt(&key, e))
            })
            .transpose()
    }

    /// Every label of a prompt, in name order.
    pub fn labels(&self, name: &PromptName) -> Result<Vec<LabelTarget>> {
        let prefix = label_key_prefix(name);
        self.db
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, raw) = item?;
                let label = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                decode::<LabelRec>(&key, &raw)?
                    .into_domain(&label)
                    .map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Prompts whose name starts with `prefix`, in byte order, strictly after
    /// `after` when given; at most `limit`.
    pub fn list_prompts(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PromptSummary>> {
        let scan_prefix = [b"p/".as_slice(), prefix.as_bytes()].concat();
        let start = match after {
            Some(after) => [b"p/".as_slice(), after.as_bytes(), b"\0"].concat(),
            None => scan_prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.db.range(start..) {
            let (key, raw) = item?;
            if !key.starts_with(&scan_prefix) || out.len() == limit {
                break;
            }
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            out.push(
                decode::<PromptRec>(&key, &raw)?
                    .into_domain(&name)
                    .map_err(|e| corrupt(&key, e))?,
            );
        }
        Ok(out)
    }

    /// Versions of a prompt, newest first, strictly below `below` when given;
    /// at most `limit`.
    pub fn list_versions(
        &self,
        name: &PromptName,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let low = version_key(name, 0);
        let high = version_key(name, below.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for item in self.db.range(low..high).rev().take(limit) {
            let (key, raw) = item?;
            out.push(self.decode_version(&key, &raw)?);
        }
        Ok(out)
    }

    /// Moves of one label, newest first, with revision strictly below `below`
    /// when given; at most `limit`.
    pub fn history(
        &self,
        name: &PromptName,
        label: &LabelName,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LabelMove>> {
        self.history_range(name, label, below.unwrap_or(u64::MAX), limit)
    }

    /// The newest move of a label with revision at most `revision`.
    pub fn move_at_revision(
        &self,
        name: &PromptName,
        label: &LabelName,
        revision: u64,
    ) -> Result<Option<LabelMove>> {
        Ok(self
            .history_range(name, label, revision.saturating_add(1), 1)?
            .pop())
    }

    fn history_range(
        &self,
        name: &PromptName,
        label: &LabelName,
        below: u64,
        limit: usize,
    ) -> Result<Vec<LabelMove>> {
        let low = history_key(name, label, 0);
        let high = history_key(name, label, below);
        let mut out = Vec::new();
        for item in self.db.range(low..high).rev().take(limit) {
            let (key, raw) = item?;
            out.push(
                decode::<MoveRec>(&key, &raw)?
                    .into_domain()
                    .map_err(|e| corrupt(&key, e))?,
            );
        }
        Ok(out)
    }

    /// Change-log records with revision >= `from`, in order; at most `limit`.
    pub fn revisions(&self, from: u64, limit: usize) -> Result<Vec<Revision>> {
        let mut out = Vec::new();
        for item in self
            .db
            .range(revision_key(from)..revision_key(u64::MAX))
            .take(limit)
        {
            let (key, raw) = item?;
            out.push(
                decode::<RevisionRec>(&key, &raw)?
                    .into_domain()
                    .map_err(|e| corrupt(&key, e))?,
            );
        }
        Ok(out)
    }

    /// One change-log record.
    pub fn revision(&self, revision: u64) -> Result<Option<Revision>> {
        let key = revision_key(revision);
        self.db
            .get(&key)?
            .map(|raw| {
                decode::<RevisionRec>(&key, &raw)?
                    .into_domain()
                    .map_err(|e| corrupt(&key, e))
            })
            .transpose()
    }

    /// Every label of every prompt whose name starts with `prefix`, in
    /// (name, label) order.
    pub fn labels_under(&self, prefix: &str) -> Result<Vec<(PromptName, LabelTarget)>> {
        let scan = key(&[b"l/", prefix.as_bytes()]);
        self.db
            .scan_prefix(&scan)
            .map(|item| {
                let (key, raw) = item?;
                let rest = &key[2..];
                let split = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| corrupt(&key, "label key without a separator"))?;
                let name = String::from_utf8_lossy(&rest[..split]).into_owned();
                let label = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
                let name = PromptName::parse("name", &name, 4096)
                    .map_err(|e| corrupt(&key, e.to_string()))?;
                let target = decode::<LabelRec>(&key, &raw)?
                    .into_domain(&label)
                    .map_err(|e| corrupt(&key, e))?;
                Ok((name, target))
            })
            .collect()
    }

    /// Revisions at or below the compact revision have been removed from the
    /// change log (0: nothing has been compacted).
    pub fn compact_revision(&self) -> Result<u64> {
        match self.db.get(KEY_COMPACT)? {
            None => Ok(0),
            Some(raw) => read_u64(KEY_COMPACT, &raw),
        }
    }

    /// The oldest change-log record still present.
    pub fn oldest_revision(&self) -> Result<Option<Revision>> {
        Ok(self.revisions(0, 1)?.pop())
    }

    /// Removes change-log records up to and including `upto`, in batches,
    /// and records `upto` as the compact revision. Only the log shrinks:
    /// versions, labels and label history are untouched.
    pub fn compact(&self, upto: u64) -> Result<usize> {
        let mut removed = 0;
        loop {
            let keys: Vec<sled::IVec> = self
                .db
                .range(revision_key(0)..=revision_key(upto))
                .keys()
                .take(1024)
                .collect::<std::result::Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key.clone());
            }
            // Written with the first batch so that a reader never sees a gap
            // that the compact revision does not explain.
            batch.insert(KEY_COMPACT, &upto.to_be_bytes());
            self.db.apply_batch(batch)?;
            removed += keys.len();
        }
        if removed == 0 && self.compact_revision()? < upto {
            self.db.insert(KEY_COMPACT, &upto.to_be_bytes())?;
        }
        Ok(removed)
    }

    /// Records a new active signing key: its public half and a ledger entry,
    /// in one atomic batch. Durable after [`Store::flush`].
    pub fn commit_key_rotation(&self, rotation: &KeyRotation) -> Result<()> {
        let head = self.ledger_head()?;
        let entry = AuditEntry::after(
            &head,
            rotation.revision,
            rotation.time,
            &rotation.actor,
            "rotate_key",
            format!("key:{}", rotation.key_id),
            &rotation.reason,
            hex::encode(&rotation.public_key),
        );
        let key = KeyRec {
            public_key: hex::encode(&rotation.public_key),
            created_at: rotation.time,
            revision: rotation.revision,
        };
        let mut batch = sled::Batch::default();
        batch.insert(audit_key(entry.sequence), encode(&AuditRec::from(&entry)));
        batch.insert(KEY_LEDGER, encode(&LedgerHeadRec::from(entry.head())));
        batch.insert(key_key(&rotation.key_id), encode(&key));
        batch.insert(KEY_SIGNING, rotation.key_id.as_bytes());
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Every (prompt, version) whose content has `digest`, pruned or not,
    /// in (name, number) order.
    ///
    /// Stores written before the index kept one key per version hold
    /// `x/{digest}{name}` → the newest version published with the digest,
    /// which forgot an older (pruned) version once the same content was
    /// published again. For a prompt found under such a key, its versions
    /// are scanned for the digest, so that those are found too.
    pub fn versions_with_digest(&self, digest: &ContentDigest) -> Result<Vec<(PromptName, u64)>> {
        let prefix = key(&[b"x/", &digest.0]);
        let parse_name = |key: &[u8], raw: &[u8]| {
            PromptName::parse("name", &String::from_utf8_lossy(raw), 4096)
                .map_err(|e| corrupt(key, e.to_string()))
        };
        let mut found = std::collections::BTreeSet::new();
        let mut legacy = std::collections::BTreeSet::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, raw) = item?;
            let rest = &key[prefix.len()..];
            match rest.iter().position(|b| *b == 0) {
                Some(split) => {
                    let name = parse_name(&key, &rest[..split])?;
                    found.insert((name, read_u64(&key, &rest[split + 1..])?));
                }
                None => {
                    let name = parse_name(&key, rest)?;
                    found.insert((name.clone(), read_u64(&key, &raw)?));
                    legacy.insert(name);
                }
            }
        }
        for name in legacy {
            for version in self.list_versions(&name, None, usize::MAX)? {
                if version.digest == *digest {
                    found.insert((name.clone(), version.number));
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Every move of every label of a prompt, ordered by label then revision.
    pub fn prompt_history(&self, name: &PromptName) -> Result<Vec<LabelMove>> {
        let prefix = key(&[b"h/", name.as_str().as_bytes(), b"\0"]);
        self.db
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, raw) = item?;
                decode::<MoveRec>(&key, &raw)?
                    .into_domain()
                    .map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Version numbers that any label other than `latest` ever pointed to.
    pub fn labelled_versions(&self, name: &PromptName) -> Result<std::collections::BTreeSet<u64>> {
        let prefix = key(&[b"h/", name.as_str().as_bytes(), b"\0"]);
        let mut out = std::collections::BTreeSet::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, raw) = item?;
            let mv = decode::<MoveRec>(&key, &raw)?;
            if mv.label != crate::domain::LATEST_LABEL {
                out.extend(mv.to_version);
            }
        }
        Ok(out)
    }

    /// Removes the content of `versions`, keeping each as a tombstone, and
    /// appends one `prune` ledger entry, in one atomic batch. Durable after
    /// [`Store::flush`].
    pub fn prune(
        &self,
        name: &PromptName,
        versions: &[u64],
        revision: u64,
        time: Micros,
        actor: &str,
        reason: &str,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for number in versions {
            let record_key = version_key(name, *number);
            let raw = self
                .db
                .get(&record_key)?
                .ok_or_else(|| corrupt(&record_key, "vanished while pruning"))?;
            let mut rec: VersionRec = decode(&record_key, &raw)?;
            rec.prune();
            batch.insert(record_key, encode(&rec));
        }
        let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
        let entry = AuditEntry::after(
            &self.ledger_head()?,
            revision,
            time,
            actor,
            "prune",
            name.to_string(),
            reason,
            list.join(", "),
        );
        batch.insert(audit_key(entry.sequence), encode(&AuditRec::from(&entry)));
        batch.insert(KEY_LEDGER, encode(&LedgerHeadRec::from(entry.head())));
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// The audit ledger's newest entry (sequence 0 when empty).
    pub fn ledger_head(&self) -> Result<LedgerHead> {
        match self.db.get(KEY_LEDGER)? {
            None => Ok(LedgerHead::default()),
            Some(raw) => {
                let rec: LedgerHeadRec = decode(KEY_LEDGER, &raw)?;
                Ok(LedgerHead {
                    sequence: rec.sequence,
                    hash: rec.hash,
                })
            }
        }
    }

    /// Ledger entries with sequence >= `from`, oldest first; at most `limit`.
    pub fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for item in self
            .db
            .range(audit_key(from)..audit_key(u64::MAX))
            .take(limit)
        {
            let (key, raw) = item?;
            out.push(decode::<AuditRec>(&key, &raw)?.into());
        }
        Ok(out)
    }

    /// Every public signing key, oldest first.
    pub fn signing_keys(&self) -> Result<Vec<PublicKey>> {
        let mut keys = self
            .db
            .scan_prefix(b"k/")
            .map(|item| {
                let (key, raw) = item?;
                let rec: KeyRec = decode(&key, &raw)?;
                Ok(PublicKey {
                    key_id: String::from_utf8_lossy(&key[2..]).into_owned(),
                    public_key: hex::decode(&rec.public_key)
                        .map_err(|e| corrupt(&key, e.to_string()))?,
                    created_at: rec.created_at,
                    revision: rec.revision,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        keys.sort_by_key(|k| k.revision);
        Ok(keys)
    }

    /// The id of the key that signs new versions.
    pub fn active_key_id(&self) -> Result<Option<String>> {
        Ok(self
            .db
            .get(KEY_SIGNING)?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Calls `visit` with every stored version (or the error decoding it),
    /// in (name, number) order.
    pub fn scan_versions(&self, mut visit: impl FnMut(Result<Version>)) -> Result<()> {
        for item in self.db.scan_prefix(b"v/") {
            let (key, raw) = item?;
            visit(self.decode_version(&key, &raw));
        }
        Ok(())
    }

    /// The check at start-up: [`Store::check_heads`], then every record a
    /// read relies on ([`Store::check_consistency`]): a flipped byte can
    /// make the engine drop one record in the middle of the store, which
    /// the heads alone do not show. A store that fails it is refused
    /// before anything is served; the first problem is named.
    pub fn check_startup(&self) -> std::result::Result<(), String> {
        self.check_heads()?;
        let problems = self.check_consistency().map_err(|e| e.to_string())?;
        match problems.as_slice() {
            [] => Ok(()),
            [only] => Err(only.clone()),
            [first, rest @ ..] => Err(format!("{first} (and {} more problems)", rest.len())),
        }
    }

    /// The quick part of the start-up check: the store is not behind its
    /// durable head, and the head revision's record and the ledger head's
    /// entry exist and agree with the metadata.
    pub fn check_heads(&self) -> std::result::Result<(), String> {
        self.check_durable_head()?;
        let head = self.head_revision().map_err(|e| e.to_string())?;
        if head > 0 {
            match self.revision(head) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(format!("the head revision {head} has no change-log record"))
                }
                Err(e) => return Err(format!("the head revision {head} is unreadable: {e}")),
            }
            if self
                .revision(head + 1)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err(format!(
                    "a change-log record exists beyond the head revision {head}"
                ));
            }
        }
        let ledger = self.ledger_head().map_err(|e| e.to_string())?;
        if ledger.sequence > 0 {
            let entry = self
                .audit_entries(ledger.sequence, 1)
                .map_err(|e| e.to_string())?;
            match entry.first() {
                Some(e) if e.sequence == ledger.sequence && e.hash == ledger.hash => {}
                _ => {
                    return Err(format!(
                        "the audit ledger head (entry {}) is missing or differs",
                        ledger.sequence
                    ))
                }
            }
        }
        Ok(())
    }

    /// The store must hold everything the durable-head file says was made
    /// durable: a store behind it lost acknowledged writes (sled's recovery
    /// drops a damaged tail without a word).
    fn check_durable_head(&self) -> std::result::Result<(), String> {
        let Some(recorded) = &self.recorded_head else {
            return Ok(());
        };
        let file = durable_head::FILE_NAME;
        let head = self.head_revision().map_err(|e| e.to_string())?;
        if head < recorded.revision {
            let missing = if head + 1 == recorded.revision {
                format!("revision {}", recorded.revision)
            } else {
                format!("revisions {} to {}", head + 1, recorded.revision)
            };
            return Err(format!(
                "acknowledged writes are missing: {file} records revision {} as durable but the store's head is {head} ({missing} lost)",
                recorded.revision
            ));
        }
        let ledger = self.ledger_head().map_err(|e| e.to_string())?;
        let wanted = &recorded.ledger;
        if ledger.sequence < wanted.sequence {
            return Err(format!(
                "acknowledged audit entries are missing: {file} records ledger entry {} as durable but the ledger ends at entry {}",
                wanted.sequence, ledger.sequence
            ));
        }
        if wanted.sequence > 0 {
            let entry = self
                .audit_entries(wanted.sequence, 1)
                .map_err(|e| e.to_string())?;
            if !entry
                .first()
                .is_some_and(|e| e.sequence == wanted.sequence && e.hash == wanted.hash)
            {
                return Err(format!(
                    "ledger entry {} is not the one {file} records as durable (hash {})",
                    wanted.sequence, wanted.hash
                ));
            }
        }
        Ok(())
    }

    /// Every structural inconsistency in the store: labels pointing at
    /// missing versions, history that disagrees with labels, a change log
    /// that disagrees with the head, indexes that disagree with versions.
    /// (Digests, signatures and the ledger chain are checked by
    /// `Registry::verify_audit`.)
    pub fn check_consistency(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let head = self.head_revision()?;
        let compact = self.compact_revision()?;
        // The change log: contiguous from compact + 1 to head.
        let mut expected = compact + 1;
        for item in self.db.scan_prefix(b"r/") {
            let (key, raw) = item?;
            match decode::<RevisionRec>(&key, &raw) {
                Ok(rec) if rec.revision == expected => expected += 1,
                Ok(rec) if rec.revision <= compact => problems.push(format!(
                    "change-log record {} is below the compact revision {compact}",
                    rec.revision
                )),
                Ok(rec) => {
                    problems.push(format!(
                        "the change log jumps from revision {} to {}",
                        expected - 1,
                        rec.revision
                    ));
                    expected = rec.revision + 1;
                }
                Err(e) => problems.push(format!("unreadable change-log record: {e}")),
            }
        }
        if head > compact && expected != head + 1 {
            problems.push(format!(
                "the change log ends at revision {} but the head revision is {head}",
                expected - 1
            ));
        }
        // Prompts and their versions.
        for item in self.db.scan_prefix(b"p/") {
            let (key, raw) = item?;
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            let Ok(name) = PromptName::parse("name", &name, 4096) else {
                problems.push(format!("prompt key {name:?} is not a valid name"));
                continue;
            };
            let summary = match decode::<PromptRec>(&key, &raw) {
                Ok(rec) => rec,
                Err(e) => {
                    problems.push(format!("unreadable prompt record: {e}"));
                    continue;
                }
            };
            for number in 1..=summary.latest_version {
                match self.version(&name, number) {
                    Ok(Some(v)) if v.revision > head => problems.push(format!(
                        "{name} v{number} claims revision {} beyond the head {head}",
                        v.revision
                    )),
                    Ok(Some(v)) => {
                        if self.version_by_digest(&name, &v.digest)? != Some(number) && !v.pruned {
                            problems.push(format!(
                                "{name} v{number}: the digest index does not point back to it"
                            ));
                        }
                    }
                    Ok(None) => problems.push(format!(
                        "{name} v{number} is missing (the prompt's newest is v{})",
                        summary.latest_version
                    )),
                    Err(e) => problems.push(format!("{name} v{number} is unreadable: {e}")),
                }
            }
            // Labels: each target exists and matches the label's last move.
            for label in self.labels(&name)? {
                if self.version(&name, label.version)?.is_none() {
                    problems.push(format!(
                        "label {} of {name} points to missing version {}",
                        label.label, label.version
                    ));
                }
                match self.history(&name, &label.label, None, 1)?.first() {
                    Some(last)
                        if last.to_version == Some(label.version)
                            && last.revision == label.revision => {}
                    _ => problems.push(format!(
                        "label {} of {name} disagrees with its history",
                        label.label
                    )),
                }
            }
        }
        Ok(problems)
    }

    /// Every key and value of the store, for a backup. The caller makes it
    /// consistent by holding the writer lock.
    pub fn export_entries(&self) -> Result<Vec<(sled::IVec, sled::IVec)>> {
        Ok(self.db.iter().collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// The data key id of an encrypted store.
    pub fn encryption_key_id(&self) -> Option<String> {
        self.data_key.as_ref().map(|k| k.key_id.clone())
    }

    /// The store's size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Opens sled, waiting briefly for a lock left by this same process.
///
/// sled frees a closed database through epoch-based reclamation, so its file
/// lock can outlive the last handle by a moment. Another *process* cannot be
/// the holder here: the registry's own `LOCK` file was taken first. So a
/// lock conflict is retried for a few seconds before it is reported.
fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // A damaged file can make sled panic while it recovers.
        let opened = engine_panics::quietly(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .open()
        })
        .map_err(StoreError::Engine)?;
        match opened {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                if std::time::Instant::now() > deadline {
                    return Err(sled::Error::Io(e).into());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt(CorruptRecord {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: reason.into(),
    })
}

fn read_u64(key: &[u8], raw: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "expected 8 bytes"))
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn prompt_key(name: &PromptName) -> Vec<u8> {
    key(&[b"p/", name.as_str().as_bytes()])
}

fn version_key(name: &PromptName, version: u64) -> Vec<u8> {
    key(&[
        b"v/",
        name.as_str().as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ])
}

fn digest_key(name: &PromptName, digest: &ContentDigest) -> Vec<u8> {
    key(&[b"d/", name.as_str().as_bytes(), b"\0", &digest.0])
}

/// One version in the digest index: the digest first, so that a prefix
/// scan finds every version with it across prompts. Names never hold a
/// 0 byte, which separates the name from the number.
fn digest_index_key(digest: &ContentDigest, name: &PromptName, version: u64) -> Vec<u8> {
    key(&[
        b"x/",
        &digest.0,
        name.as_str().as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ])
}

fn label_key_prefix(name: &PromptName) -> Vec<u8> {
    key(&[b"l/", name.as_str().as_bytes(), b"\0"])
}

fn label_key(name: &PromptName, label: &LabelName) -> Vec<u8> {
    key(&[&label_key_prefix(name), label.as_str().as_bytes()])
}

fn history_key(name: &PromptName, label: &LabelName, revision: u64) -> Vec<u8> {
    key(&[
        b"h/",
        name.as_str().as_bytes(),
        b"\0",
        label.as_str().as_bytes(),
        b"\0",
        &revision.to_be_bytes(),
    ])
}

#[derive(Serialize, Deserialize)]
struct LedgerHeadRec {
    sequence: u64,
    hash: String,
}

impl From<LedgerHead> for LedgerHeadRec {
    fn from(head: LedgerHead) -> Self {
        LedgerHeadRec {
            sequence: head.sequence,
            hash: head.hash,
        }
    }
}

/// The ledger entry recording one change.
fn ledger_entry(
    head: &LedgerHead,
    revision: &Revision,
    change: &Change,
    published: Option<&Version>,
) -> AuditEntry {
    let side = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("v{v}"));
    let (actor, action, target, reason, detail) = match change {
        Change::VersionPublished {
            name,
            version,
            digest,
            author,
        } => (
            author.as_str(),
            "publish",
            format!("{name}@v{version}"),
            published.map_or("", |v| v.description.as_str()),
            digest.to_string(),
        ),
        Change::LabelMoved(mv) => (
            mv.actor.as_str(),
            mv.kind.as_str(),
            format!("{}:{}", mv.name, mv.label),
            mv.reason.as_str(),
            format!("{} -> {}", side(mv.from_version), side(mv.to_version)),
        ),
    };
    let mut entry = AuditEntry::after(
        head,
        revision.revision,
        revision.time,
        actor,
        action,
        target,
        reason,
        detail,
    );
    if let Some(trace_id) = &revision.trace_id {
        entry.trace_id = trace_id.clone();
        entry.hash = entry.compute_hash();
    }
    entry
}

fn audit_key(sequence: u64) -> Vec<u8> {
    key(&[b"a/", &sequence.to_be_bytes()])
}

fn key_key(key_id: &str) -> Vec<u8> {
    key(&[b"k/", key_id.as_bytes()])
}

fn revision_key(revision: u64) -> Vec<u8> {
    key(&[b"r/", &revision.to_be_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), None).unwrap();
            store.db.insert(KEY_SCHEMA, &99u32.to_be_bytes()).unwrap();
            store.flush_blocking().unwrap();
        }
        let error = Store::open(dir.path(), None).err().expect("refused");
        assert!(matches!(error, StoreError::Schema { found: 99 }), "{error}");
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Arbitrary bytes in any record slot decode to an error or a
        /// value, never a panic; so does a corrupted valid record.
        #[test]
        fn the_record_decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), flip in 0usize..512) {
            let key = b"v/p\0\0\0\0\0\0\0\0\x01";
            let _ = decode::<VersionRec>(key, &bytes).map(|r| r.into_domain());
            let _ = decode::<RevisionRec>(key, &bytes).map(|r| r.into_domain());
            let _ = decode::<MoveRec>(key, &bytes).map(|r| r.into_domain());
            let _ = decode::<LabelRec>(key, &bytes).map(|r| r.into_domain("production"));
            let _ = decode::<AuditRec>(key, &bytes);
            let mut valid = encode(&LabelRec { version: 1, digest: format!("sha256:{}", "a".repeat(64)), revision: 2, updated_at: 3 });
            if !valid.is_empty() {
                let i = flip % valid.len();
                valid[i] ^= 0x5a;
            }
            let _ = decode::<LabelRec>(key, &valid).map(|r| r.into_domain("production"));
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        store
            .db
            .insert(revision_key(1), b"\x01{not json".to_vec())
            .unwrap();
        store
            .db
            .insert(revision_key(2), b"\x07whatever".to_vec())
            .unwrap();
        assert!(matches!(store.revision(1), Err(StoreError::Corrupt(_))));
        let error = store.revision(2).unwrap_err();
        assert!(
            error.to_string().contains("unknown record format 7"),
            "{error}"
        );
    }
}
