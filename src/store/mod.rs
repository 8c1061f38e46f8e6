//! The store: the registry's records in one ordered key space, on a storage
//! engine behind the [`Engine`] trait (`engine.rs` holds its contract;
//! `sled/` the embedded engine). The registry talks to storage only through
//! [`Store`]; it decides what is written (which audit entry, when to seal),
//! and the store decides how (keys, record formats, one atomic batch per
//! revision, guarded by compare-and-set on the heads it advances).
//!
//! Everything lives under key prefixes, so that every revision is written
//! with one atomic [`Batch`]:
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
//! | `t/{name}` | a bearer token: its SHA-256, bindings, expiry, revocation |
//! | `c/`, `e/`, `y/`, `z/`, `q/`, `meta/requests` | release policy: check results, attester keys, policies, freezes, promotion requests (see `release.rs`) |
//! | `o/`, `meta/rollouts` | each label's newest rollout, written by the revisions that change it (see `rollout.rs`) |
//!
//! Numbers in keys are big-endian so that byte order is numeric order. The
//! change log (`r/`) is the source of truth for what happened; `p/`, `l/`,
//! `h/`, `d/` are derived from it in the same batch by [`Store::commit`].
//! The label history is a full copy, not a pointer into the log, so that
//! the log can later be compacted without losing history.

pub mod backup;
mod check;
pub mod durable_head;
pub mod engine;
pub(crate) mod engine_panics;
mod keys;
mod reads;
pub(crate) mod records;
mod release;
mod rollout;
pub(crate) use rollout::{RolloutRec, SpecRec};
pub mod etcd;
mod sealing;
mod sled;
mod torn_tail;

use crate::domain::access::Token;
use crate::domain::{Change, KeyRotation, PromptName, Revision, Version};
use crate::provenance::AuditEntry;
use durable_head::{DurableHead, DurableHeadFile};
pub use engine::{Batch, Engine};
use keys::*;
use records::{
    decode, encode, AuditRec, KeyRec, LabelRec, MoveRec, PromptRec, RevisionRec, TokenRec,
    VersionRec,
};
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

/// The file beside the store that names the data key id of an encrypted store.
pub(crate) const ENCRYPTION_MARKER: &str = "ENCRYPTION";

/// Whether `dir` holds a store's files.
pub fn exists_in(dir: &Path) -> bool {
    self::sled::exists_in(dir)
}

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
    pub created_at: crate::domain::Micros,
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed (a full disk, a failing device); retrying
    /// later may succeed.
    #[error("storage I/O failed: {0}")]
    Io(#[source] std::io::Error),
    /// The engine found its files are not what it wrote.
    #[error("the storage engine found its files damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The store's records disagree with each other or with the
    /// durable-head file (lost or altered writes), found by its checks.
    #[error("{0}")]
    Inconsistent(String),
    #[error("the data directory holds schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Schema { found: u32 },
    #[error("{0}")]
    Encryption(String),
    #[error("the storage engine could not open the store: it failed with \"{0}\"")]
    Engine(String),
    #[error("cannot use {}: {source}", durable_head::FILE_NAME)]
    DurableHead { source: std::io::Error },
    /// A guard of a batch did not hold: something else advanced the key
    /// since it was read (another writer of the same store). Nothing was
    /// written.
    #[error("the store moved on while this write was prepared ({0} changed); nothing was written")]
    Conflict(String),
    /// The cluster store cannot serve the request now (no endpoint
    /// answers, no leader, no quorum, or the request ran out of time).
    /// Retrying later may succeed; a write that got this may still have
    /// been committed (the registry finds out when it next writes).
    #[error("{0}")]
    Unavailable(String),
    /// The caller broke a precondition of a write (a bug, not bad input).
    #[error("a write was refused by the store: {0}")]
    Precondition(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    /// Seals version content when the store is encrypted.
    data_key: Option<Arc<DataKey>>,
    /// Flushes still to fail (fault injection).
    #[cfg(feature = "testkit")]
    failing_flushes: Arc<std::sync::atomic::AtomicU64>,
    /// Advanced by every flush, so that a store that the engine's recovery
    /// rolled back is noticed (see `durable_head.rs`). None on a cluster
    /// engine, whose every applied batch is already durable.
    durable_head: Option<Arc<DurableHeadFile>>,
    /// What the durable-head file said when the store was opened.
    recorded_head: Option<DurableHead>,
    /// The data directory, for the free-space check and the encryption
    /// marker; None on a cluster engine (etcd keeps its own disk).
    dir: Option<Arc<std::path::PathBuf>>,
    /// The cluster engine again, for following its changes.
    cluster: Option<Arc<etcd::EtcdEngine>>,
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
    /// A store encrypted with another key than `data_key`, or opened without
    /// its key, is refused before anything is read or written. An
    /// unencrypted store opened with a key stays as it is until the caller
    /// seals it ([`Store::needs_sealing`], [`Store::seal_versions`]).
    pub fn open(dir: &Path, data_key: Option<DataKey>) -> Result<Store> {
        Store::open_with_cache(dir, data_key, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with the engine's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(
        dir: &Path,
        data_key: Option<DataKey>,
        cache_bytes: u64,
    ) -> Result<Store> {
        // The data key id is also kept in a plain file beside the store, so
        // that a start with a wrong or missing key is refused before the
        // engine opens (sled writes to its files when it opens).
        if let Ok(id) = std::fs::read_to_string(dir.join(ENCRYPTION_MARKER)) {
            check_data_key(Some(id.trim().to_string()), data_key.as_ref())?;
        }
        let (durable_head, recorded_head) =
            DurableHeadFile::open(dir).map_err(|source| StoreError::DurableHead { source })?;
        let engine = self::sled::SledEngine::open(dir, cache_bytes)?;
        let store = Store {
            engine: Arc::new(engine),
            data_key: data_key.map(Arc::new),
            #[cfg(feature = "testkit")]
            failing_flushes: Default::default(),
            durable_head: Some(Arc::new(durable_head)),
            recorded_head,
            dir: Some(Arc::new(dir.to_path_buf())),
            cluster: None,
        };
        store.check_opened()?;
        Ok(store)
    }

    /// The checks of every open: the schema and the data key.
    fn check_opened(&self) -> Result<()> {
        let store = self;
        store.check_schema()?;
        let stored = store.stored_encryption_key_id()?;
        if stored.is_some() {
            check_data_key(stored, store.data_key.as_deref())?;
            store.write_encryption_marker()?;
        }
        Ok(())
    }

    fn check_schema(&self) -> Result<()> {
        match self.engine.get(KEY_SCHEMA)? {
            None => {
                let mut batch = Batch::default();
                batch.guard(KEY_SCHEMA, None);
                batch.put(KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes());
                self.engine.apply(batch)?;
                self.engine.flush()
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(KEY_SCHEMA, "schema version is not 4 bytes"))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
                Ok(())
            }
        }
    }

    fn stored_encryption_key_id(&self) -> Result<Option<String>> {
        Ok(self
            .engine
            .get(KEY_ENCRYPTION)?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    fn write_encryption_marker(&self) -> Result<()> {
        let (Some(key), Some(dir)) = (&self.data_key, &self.dir) else {
            return Ok(());
        };
        let marker = dir.join(ENCRYPTION_MARKER);
        if marker.exists() {
            return Ok(());
        }
        std::fs::write(&marker, format!("{}\n", key.key_id))
            .map_err(|e| StoreError::Encryption(format!("cannot write {}: {e}", marker.display())))
    }

    /// Whether the store was opened with a data key but is not encrypted
    /// yet: its versions are still to be sealed.
    pub fn needs_sealing(&self) -> Result<bool> {
        Ok(self.data_key.is_some() && self.stored_encryption_key_id()?.is_none())
    }

    /// Versions whose content is not sealed yet.
    pub fn unsealed_versions(&self) -> Result<usize> {
        let mut count = 0;
        self.scan(b"v/", |key, raw| {
            count += usize::from(decode::<VersionRec>(key, raw)?.sealed.is_none());
            Ok(())
        })?;
        Ok(count)
    }

    /// Seals every stored version with the store's data key and marks the
    /// store encrypted, in one batch with `entry` appended to the ledger.
    /// Durable on return. Returns how many versions were sealed.
    pub fn seal_versions(&self, entry: &AuditEntry) -> Result<usize> {
        let Some(key) = self.data_key.as_deref() else {
            return Err(StoreError::Precondition(
                "sealing needs a data key: the store was opened without one".into(),
            ));
        };
        let mut batch = Batch::default();
        let mut sealed = 0;
        self.scan(b"v/", |record_key, raw| {
            let mut rec: VersionRec = decode(record_key, raw)?;
            if rec.sealed.is_none() {
                rec.seal(key, record_key);
                batch.put(record_key, encode(&rec));
                sealed += 1;
            }
            Ok(())
        })?;
        self.append_ledger(&mut batch, std::slice::from_ref(entry))?;
        batch.guard(KEY_ENCRYPTION, None);
        batch.put(KEY_ENCRYPTION, key.key_id.as_bytes());
        self.engine.apply(batch)?;
        self.engine.flush()?;
        self.write_encryption_marker()?;
        Ok(sealed)
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

    /// Adds `entries` to `batch` as the next entries of the audit ledger,
    /// with the new ledger head, guarded on the head they follow: the
    /// entries must continue the stored ledger and each other.
    fn append_ledger(&self, batch: &mut Batch, entries: &[AuditEntry]) -> Result<()> {
        let raw = self.engine.get(KEY_LEDGER)?;
        let mut head = match &raw {
            Some(raw) => decode::<LedgerHeadRec>(KEY_LEDGER, raw)?.into(),
            None => crate::provenance::LedgerHead::default(),
        };
        for entry in entries {
            if entry.sequence != head.sequence + 1 || entry.previous_hash != head.hash {
                return Err(StoreError::Conflict(format!(
                    "the audit ledger head: entry {} does not follow entry {}",
                    entry.sequence, head.sequence
                )));
            }
            batch.put(audit_key(entry.sequence), encode(&AuditRec::from(entry)));
            head = entry.head();
        }
        batch.guard(KEY_LEDGER, raw);
        batch.put(KEY_LEDGER, encode(&LedgerHeadRec::from(head)));
        Ok(())
    }

    /// Applies one revision atomically: its change-log record, every index
    /// derived from its changes, and `audit` (the ledger entries recording
    /// it, written by the caller) appended to the ledger. `published`
    /// carries the full version for a `VersionPublished` change.
    ///
    /// The batch is guarded on the head revision being `revision - 1` and on
    /// the ledger head the entries follow (compare-and-set), so a revision
    /// is never written twice or over another writer's.
    ///
    /// After this returns the revision is visible to readers but not yet
    /// durable: call [`Store::flush`] before acknowledging it.
    pub fn commit(
        &self,
        revision: &Revision,
        published: Option<&Version>,
        audit: &[AuditEntry],
    ) -> Result<()> {
        let batch = self.revision_batch(revision, published, audit)?;
        self.apply_revision(batch, revision)
    }

    /// The batch of [`Store::commit`], guarded on the heads it read.
    fn revision_batch(
        &self,
        revision: &Revision,
        published: Option<&Version>,
        audit: &[AuditEntry],
    ) -> Result<Batch> {
        let mut batch = Batch::default();
        let head_raw = self.engine.get(KEY_HEAD)?;
        let head = head_raw
            .as_deref()
            .map(|raw| read_u64(KEY_HEAD, raw))
            .transpose()?
            .unwrap_or(0);
        if revision.revision != head + 1 {
            return Err(StoreError::Conflict(format!(
                "the head revision: revision {} does not follow the head {head}",
                revision.revision
            )));
        }
        batch.guard(KEY_HEAD, head_raw);
        self.append_ledger(&mut batch, audit)?;
        for change in &revision.changes {
            match change {
                Change::VersionPublished {
                    name,
                    version,
                    digest,
                    ..
                } => {
                    let full = published
                        .filter(|v| &v.name == name && v.number == *version)
                        .ok_or_else(|| {
                            StoreError::Precondition(format!(
                                "revision {} publishes {name} v{version} but its content was not given",
                                revision.revision
                            ))
                        })?;
                    let key = version_key(name, *version);
                    let value = self.encode_version(&key, full);
                    batch.put(key, value);
                    batch.put(digest_key(name, digest), version.to_be_bytes());
                    batch.put(
                        digest_index_key(digest, name, *version),
                        version.to_be_bytes(),
                    );
                    let prompt = PromptRec {
                        latest_version: *version,
                        latest_digest: digest.to_string(),
                        updated_at: revision.time,
                    };
                    batch.put(prompt_key(name), encode(&prompt));
                }
                Change::LabelMoved(mv) => {
                    if let Some(rollout) = &mv.rollout {
                        self.put_rollout(&mut batch, rollout)?;
                    }
                    batch.put(
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
                            batch.put(key, encode(&label));
                        }
                        _ => batch.delete(key),
                    }
                }
            }
        }
        batch.put(
            revision_key(revision.revision),
            encode(&RevisionRec::from(revision)),
        );
        batch.put(KEY_HEAD, revision.revision.to_be_bytes());
        Ok(batch)
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
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    fn current_head(&self) -> Result<DurableHead> {
        Ok(DurableHead {
            revision: self.head_revision()?,
            ledger: self.ledger_head()?,
        })
    }

    /// Makes the next `count` flushes fail, as a full or failing disk
    /// would. For fault-injection tests (the `testkit` feature).
    #[cfg(feature = "testkit")]
    pub fn inject_flush_failures(&self, count: u64) {
        self.failing_flushes
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    #[cfg(feature = "testkit")]
    fn injected_failure(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        match self
            .failing_flushes
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(StoreError::Io(std::io::Error::other(
                "injected flush failure",
            ))),
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(feature = "testkit"))]
    fn injected_failure(&self) -> Result<()> {
        Ok(())
    }

    /// The same as [`Store::flush`], blocking (call it off the async
    /// workers).
    pub fn flush_blocking(&self) -> Result<()> {
        let Some(file) = &self.durable_head else {
            self.injected_failure()?;
            return self.engine.flush();
        };
        // Read before the flush: everything committed by now is covered by it.
        let head = self.current_head()?;
        self.injected_failure()?;
        self.engine.flush()?;
        file.advance(&head)
            .map_err(|source| StoreError::DurableHead { source })
    }

    /// The bytes free for this process on the filesystem holding the store.
    /// On a cluster engine there is no local store to fill: `u64::MAX`
    /// (etcd refuses writes past its own `--quota-backend-bytes`).
    pub fn free_space(&self) -> std::io::Result<u64> {
        match &self.dir {
            Some(dir) => free_space(dir),
            None => Ok(u64::MAX),
        }
    }

    /// Removes change-log records up to and including `upto`, in batches,
    /// and records `upto` as the compact revision. Only the log shrinks:
    /// versions, labels and label history are untouched.
    pub fn compact(&self, upto: u64) -> Result<usize> {
        let mut removed = 0;
        loop {
            let end = revision_key(upto.saturating_add(1));
            let keys = self
                .engine
                .range(&revision_key(0), Some(&end), false, 1024)?;
            if keys.is_empty() {
                break;
            }
            let mut batch = Batch::default();
            for (key, _) in &keys {
                batch.delete(key.clone());
            }
            // Written with the first batch so that a reader never sees a gap
            // that the compact revision does not explain.
            batch.put(KEY_COMPACT, upto.to_be_bytes());
            self.engine.apply(batch)?;
            removed += keys.len();
        }
        if removed == 0 && self.compact_revision()? < upto {
            let mut batch = Batch::default();
            batch.put(KEY_COMPACT, upto.to_be_bytes());
            self.engine.apply(batch)?;
        }
        Ok(removed)
    }

    /// Records a new active signing key: its public half and `entry` (the
    /// ledger entry recording the rotation), in one atomic batch. Durable
    /// after [`Store::flush`].
    pub fn commit_key_rotation(&self, rotation: &KeyRotation, entry: &AuditEntry) -> Result<()> {
        let key = KeyRec {
            public_key: hex::encode(&rotation.public_key),
            created_at: rotation.time,
            revision: rotation.revision,
        };
        let mut batch = Batch::default();
        self.append_ledger(&mut batch, std::slice::from_ref(entry))?;
        batch.put(key_key(&rotation.key_id), encode(&key));
        batch.put(KEY_SIGNING, rotation.key_id.as_bytes());
        self.engine.apply(batch)
    }

    /// Writes a token (created, or changed: revoked) and `entry`, the ledger
    /// entry recording it, in one atomic batch. Durable after
    /// [`Store::flush`].
    pub fn put_token(&self, token: &Token, entry: &AuditEntry) -> Result<()> {
        let mut batch = Batch::default();
        self.append_ledger(&mut batch, std::slice::from_ref(entry))?;
        batch.put(token_key(&token.name), encode(&TokenRec::from(token)));
        self.engine.apply(batch)
    }

    /// Removes the content of `versions`, keeping each as a tombstone, and
    /// appends `entry` (the ledger entry recording it), in one atomic batch.
    /// Durable after [`Store::flush`].
    pub fn prune(&self, name: &PromptName, versions: &[u64], entry: &AuditEntry) -> Result<()> {
        let mut batch = Batch::default();
        for number in versions {
            let record_key = version_key(name, *number);
            let raw = self
                .engine
                .get(&record_key)?
                .ok_or_else(|| corrupt(&record_key, "vanished while pruning"))?;
            let mut rec: VersionRec = decode(&record_key, &raw)?;
            rec.prune();
            batch.guard(record_key.clone(), Some(raw));
            batch.put(record_key, encode(&rec));
        }
        self.append_ledger(&mut batch, std::slice::from_ref(entry))?;
        self.engine.apply(batch)
    }

    /// The data key id of an encrypted store.
    pub fn encryption_key_id(&self) -> Option<String> {
        self.data_key.as_ref().map(|k| k.key_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::keys::*;
    use super::records::*;
    use super::*;

    #[test]
    fn a_store_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), None).unwrap();
            let mut batch = Batch::default();
            batch.put(KEY_SCHEMA, 99u32.to_be_bytes());
            store.engine.apply(batch).unwrap();
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
        let mut batch = Batch::default();
        batch.put(revision_key(1), b"\x01{not json".to_vec());
        batch.put(revision_key(2), b"\x07whatever".to_vec());
        store.engine.apply(batch).unwrap();
        assert!(matches!(store.revision(1), Err(StoreError::Corrupt(_))));
        let error = store.revision(2).unwrap_err();
        assert!(
            error.to_string().contains("unknown record format 7"),
            "{error}"
        );
    }
}
