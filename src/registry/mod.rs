//! The registry core: the use cases (publish, resolve, promote, rollback,
//! history, resolve-at, diff) over the store, with one writer lock that
//! assigns revisions and group commit that makes them durable.
//!
//! Nothing here knows about gRPC; the handlers in `grpc` are thin
//! translations onto these methods.

mod check;
pub mod disk;
pub mod fleet;
mod group_commit;
pub mod provenance;
mod version_cache;
pub mod watch;
pub mod watch_set;

use crate::domain::validate;
use crate::domain::{
    rollback_target, Change, ContentDigest, LabelMove, LabelName, LabelTarget, Limits, Micros,
    MoveKind, NewVersion, NoRollbackTarget, PromptName, PromptSummary, Revision, ValidationError,
    Version, VersionDiff,
};
use crate::store::{Store, StoreError};
pub use check::check_offline;
use disk::{SpaceRule, WriteGate, WriteHealth};
use fleet::{Ack, AgentLabelStatus, Fleet};
use group_commit::GroupCommit;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
pub use version_cache::CacheUsage;
use version_cache::VersionCache;
use watch::{Hub, WatchConfig};

/// Page sizes: the default when a request says 0, and the most one page holds.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Label targets kept in memory; the cache starts over when full. An entry
/// is a label name (at most 63 bytes), a digest and three numbers, about
/// 200 bytes with its map slot, so the cache stays under ~20 MB even with
/// the longest names (a few MB for typical ones). Not a flag: it is a
/// small, fixed cost, unlike the version cache.
const LABEL_CACHE_ENTRIES: usize = 100_000;

/// Where labels point, as last read from the store: a resolve then costs
/// no store read and no record decoding. Every commit that moves a label
/// drops that label's entry and bumps `generation` (after applying the
/// revision), and a read caches what it read only if the generation did not
/// change meanwhile, so an entry is never older than the store.
#[derive(Debug, Default)]
struct LabelCache {
    generation: u64,
    targets:
        std::collections::HashMap<PromptName, std::collections::HashMap<LabelName, LabelTarget>>,
    entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the data directory {dir} is in use by another promptreg process ({holder}); stop it or choose another --data-dir")]
    DataDirLocked { dir: PathBuf, holder: String },
    #[error("cannot use the data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::provenance::KeyError),
    #[error(transparent)]
    DataKey(#[from] crate::store::DataKeyError),
    #[error("{0}")]
    Exhausted(String),
    #[error("the change could not be made durable and was not acknowledged: {0}")]
    NotDurable(String),
    /// The store refuses writes now (full disk, failing flushes, stuck
    /// storage); see [`disk::WriteHealth`].
    #[error("{0}")]
    Unwritable(String),
    #[error("the store in {dir} is damaged: {reason}. Run `promptreg check --data-dir {dir}` for a full report, and restore from a backup with `promptreg restore`")]
    Damaged { dir: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// How the registry is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub watch: WatchConfig,
    pub signing_key: provenance::KeySource,
    /// Encrypt version content at rest with the 32-byte key in this file.
    pub encryption_key_file: Option<PathBuf>,
    /// How much memory the caches may hold.
    pub caches: CacheConfig,
    /// Writes are refused while the data directory's filesystem has fewer
    /// bytes free (`--min-free-space`).
    pub min_free_space: u64,
}

/// The memory bounds of the two caches that grow with the data. Everything
/// else in memory is bounded by the load (streams, agents), not the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// sled's page cache, in bytes (default 32 MiB; `--store-cache-mb`).
    pub store_bytes: u64,
    /// Decoded versions for resolves, in estimated bytes (default 16 MiB;
    /// `--version-cache-mb`).
    pub version_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            store_bytes: crate::store::DEFAULT_CACHE_BYTES,
            version_bytes: 16 * 1024 * 1024,
        }
    }
}

impl RegistryConfig {
    /// The defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            watch: WatchConfig::default(),
            signing_key: provenance::KeySource::DataDir,
            encryption_key_file: None,
            caches: CacheConfig::default(),
            min_free_space: disk::DEFAULT_MIN_FREE_SPACE,
        }
    }
}

/// Something the registry hands out many times, with a slot for its
/// encoding on the wire: the first answer that sends it fills the slot, and
/// every later one sends the same bytes. (The registry does not know the
/// encoding; the transport does.) A revision fanned out to every watcher
/// and a version resolved by every agent are encoded once each.
#[derive(Debug)]
pub struct Encodable<T> {
    value: T,
    encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl<T> Encodable<T> {
    pub fn new(value: T) -> Encodable<T> {
        Encodable {
            value,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The encoding, made by `encode` if nobody made it yet.
    pub fn encoded_with(&self, encode: impl FnOnce(&T) -> bytes::Bytes) -> bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.value)).clone()
    }
}

impl<T> std::ops::Deref for Encodable<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq for Encodable<T> {
    fn eq(&self, other: &Encodable<T>) -> bool {
        self.value == other.value
    }
}

/// A version as the resolve path hands it out: immutable, so one encoding
/// serves every resolve of it.
pub type SharedVersion = Encodable<Version>;

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub version: u64,
    pub digest: ContentDigest,
    pub revision: u64,
    /// False when identical content already existed.
    pub created: bool,
}

/// The outcome of a label move.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// False when the label already pointed there: nothing was written.
    pub changed: bool,
    pub revision: u64,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    pub digest: Option<ContentDigest>,
}

/// Which version to read.
#[derive(Debug, Clone)]
pub enum VersionSelector {
    Number(u64),
    Digest(ContentDigest),
    Label(LabelName),
}

/// A point in the past for [`Registry::resolve_at`].
#[derive(Debug, Clone, Copy)]
pub enum PointInTime {
    Revision(u64),
    Time(Micros),
}

/// A requested label move, before the registry checks it.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub name: PromptName,
    pub label: LabelName,
    pub actor: String,
    pub reason: String,
    /// The request's W3C trace id, when it carried one.
    pub trace_id: Option<String>,
}

/// A page of results and the token for the next one (empty on the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    limits: Limits,
    /// Serialises writers: revision numbers are assigned, and preconditions
    /// checked, under this lock. A std mutex because it is never held across
    /// an await: the section only reads sled and applies one in-memory batch.
    writer: Mutex<WriterState>,
    /// The turn at the writer lock, taken asynchronously before a write
    /// goes to a blocking thread: a write stuck in storage (a full disk)
    /// then holds one blocking thread, and the writes behind it wait here,
    /// with a timeout, instead of each taking a thread.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    /// The newest committed revision, for readers: they never take the
    /// writer lock (a writer may be stuck inside the store holding it).
    committed_head: AtomicU64,
    /// Committed revisions waiting for their flush, in revision order; the
    /// flusher publishes them to watchers once durable. Its own lock, so
    /// that the flusher never waits for a writer.
    pending: Mutex<VecDeque<Arc<Revision>>>,
    /// Whether writes are taken; see `disk.rs`.
    gate: WriteGate,
    space: SpaceRule,
    group_commit: Arc<GroupCommit>,
    hub: Hub,
    fleet: Arc<Fleet>,
    /// Decoded versions by (name, number), bounded in bytes; see
    /// [`VersionCache`]. Pruning removes the ones it empties. Saves the
    /// record decoding (and decryption) on every resolve.
    versions: Mutex<VersionCache>,
    /// Label targets, for the resolve hot path; see [`LabelCache`].
    labels: std::sync::RwLock<LabelCache>,
    data_dir: PathBuf,
    key_source: provenance::KeySource,
    /// Held for the registry's lifetime: the OS lock that keeps a second
    /// process off the data directory.
    _lock: File,
}

struct WriterState {
    head: u64,
    /// The time of the head revision. Revision times never go backwards, so
    /// "as of time T" and "as of revision R" agree.
    last_time: Micros,
    /// The key that signs new versions; replaced by rotation under this lock.
    signer: crate::provenance::SigningKey,
}

/// How long the final flush may take when the registry closes.
const FINAL_FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for Inner {
    fn drop(&mut self) {
        self.group_commit.close();
        // On its own thread, waited for a bounded time: on a full disk
        // sled's flush may never return, and a stop must not hang on it.
        // Everything acknowledged is durable already.
        let store = self.store.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("final-flush".into())
            .spawn(move || {
                let _ = done.send(store.flush_blocking());
            });
        if spawned.is_err() {
            tracing::error!("final flush skipped: no thread for it");
            return;
        }
        match finished.recv_timeout(FINAL_FLUSH_PATIENCE) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "final flush failed"),
            Err(_) => tracing::error!(
                patience = ?FINAL_FLUSH_PATIENCE,
                "final flush did not finish; stopping without it (acknowledged writes are durable)"
            ),
        }
    }
}

impl Registry {
    /// Opens the registry in `config.data_dir`, creating it if needed, and
    /// starts its flusher task. Must be called inside a tokio runtime.
    pub fn open(config: RegistryConfig) -> Result<Registry> {
        let dir = config.data_dir.clone();
        let io_err = |source| RegistryError::DataDir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let lock = lock_data_dir(&dir)?;
        let data_key = match &config.encryption_key_file {
            Some(path) => Some(crate::store::DataKey::load(path)?),
            None => None,
        };
        let store = Store::open_with_cache(&dir, data_key, config.caches.store_bytes)
            .map_err(|e| damaged_if_corrupt(&dir, e))?;
        discard_torn_tail(&store).map_err(|e| damaged_if_corrupt(&dir, e))?;
        store
            .check_startup()
            .map_err(|reason| RegistryError::Damaged {
                dir: dir.clone(),
                reason,
            })?;
        let head = store.head_revision()?;
        let last_time = match store.revision(head)? {
            Some(rev) => rev.time,
            None => 0,
        };
        let signer =
            provenance::open_signing_key(&store, &dir, &config.signing_key, head, last_time)?;
        let group_commit = Arc::new(GroupCommit::new(head));
        let compaction_interval = config.watch.compaction_interval;
        let inner = Arc::new(Inner {
            store,
            limits: config.limits,
            writer: Mutex::new(WriterState {
                head,
                last_time,
                signer,
            }),
            write_turn: Default::default(),
            committed_head: AtomicU64::new(head),
            pending: Default::default(),
            gate: WriteGate::new(),
            space: SpaceRule {
                min_free: config.min_free_space,
            },
            group_commit: group_commit.clone(),
            hub: Hub::new(config.watch, head),
            fleet: Arc::new(Fleet::default()),
            versions: Mutex::new(VersionCache::new(config.caches.version_bytes)),
            labels: Default::default(),
            data_dir: dir.clone(),
            key_source: config.signing_key.clone(),
            _lock: lock,
        });
        tokio::spawn(run_flusher(Arc::downgrade(&inner), group_commit));
        tokio::spawn(disk::run_space_monitor(Arc::downgrade(&inner)));
        tokio::spawn(run_housekeeping(
            Arc::downgrade(&inner),
            compaction_interval,
        ));
        tokio::spawn(run_gauges(
            Arc::downgrade(&inner),
            std::time::Duration::from_secs(5),
        ));
        Ok(Registry { inner })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// What the decoded-version cache holds now (bytes are its estimate).
    pub fn version_cache_usage(&self) -> CacheUsage {
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .usage()
    }

    /// What the label-target cache holds now (entries; it has no byte count).
    pub fn label_cache_usage(&self) -> CacheUsage {
        let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
        CacheUsage {
            entries: cache.entries,
            bytes: 0,
            capacity: LABEL_CACHE_ENTRIES,
        }
    }

    /// The newest durable revision.
    pub fn revision(&self) -> u64 {
        self.inner.group_commit.durable_revision()
    }

    /// Whether writes are taken now, and every change of it.
    pub fn write_health(&self) -> tokio::sync::watch::Receiver<WriteHealth> {
        self.inner.gate.subscribe()
    }

    /// The newest committed revision (durable or about to be), read without
    /// the writer lock.
    pub(crate) fn committed_head(&self) -> u64 {
        self.inner.committed_head.load(Ordering::SeqCst)
    }

    /// Runs a write's section under the writer lock on a blocking thread,
    /// so that a store call stuck on a full disk never holds an async
    /// worker. Refused at once while writes are refused, or when the turn
    /// does not come within [`disk::WRITE_PATIENCE`].
    async fn write<T: Send + 'static>(
        &self,
        section: impl FnOnce(&Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.refuse_if_unwritable()?;
        let patience = disk::WRITE_PATIENCE;
        let stuck = || {
            RegistryError::Unwritable(format!(
                "the store did not take the write within {} s (storage is not answering); it was not acknowledged",
                patience.as_secs()
            ))
        };
        let turn = tokio::time::timeout(patience, self.inner.write_turn.clone().lock_owned())
            .await
            .map_err(|_| stuck())?;
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the section ends, also when the caller gave up.
            let _turn = turn;
            this.check_free_space();
            this.refuse_if_unwritable()?;
            section(&this)
        });
        match tokio::time::timeout(patience, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RegistryError::Unwritable(format!(
                "the write failed and was not acknowledged: {join}"
            ))),
            Err(_) => Err(stuck()),
        }
    }

    /// Looks at the free space now (one `statvfs`), so that the write that
    /// would fill the disk is the one refused.
    fn check_free_space(&self) {
        if let Ok(free) = self.store().free_space() {
            self.inner.gate.saw_free_space(self.inner.space, free);
        }
    }

    fn refuse_if_unwritable(&self) -> Result<()> {
        match self.inner.gate.get().refusal() {
            None => Ok(()),
            Some(why) => Err(RegistryError::Unwritable(why.to_string())),
        }
    }

    /// Runs a read on a blocking thread, so that a store call that hangs
    /// (sled on a full disk) never holds an async worker; UNAVAILABLE when
    /// it does not answer within [`disk::WRITE_PATIENCE`].
    pub async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || read(&this));
        match tokio::time::timeout(disk::WRITE_PATIENCE, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RegistryError::Unwritable(format!(
                "the read failed: {join}"
            ))),
            Err(_) => Err(RegistryError::Unwritable(format!(
                "the store did not answer within {} s (storage is not answering)",
                disk::WRITE_PATIENCE.as_secs()
            ))),
        }
    }

    /// Makes the next `count` flushes fail (fault-injection tests).
    #[doc(hidden)]
    pub fn inject_flush_failures(&self, count: u64) {
        self.inner.store.inject_flush_failures(count);
    }

    /// How many flushes group commit has made; fewer than the writes when
    /// writers were concurrent.
    pub fn flush_count(&self) -> u64 {
        self.inner.group_commit.flush_count()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    // --- writes ---------------------------------------------------------------

    /// Publishes a version; identical content returns the existing version.
    /// Answers once the revision is durable.
    pub async fn publish(&self, new: NewVersion) -> Result<Published> {
        let digest = new.content.digest();
        let published = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let store = this.store();
                let existing = match store.version_by_digest(&new.name, &digest)? {
                    Some(number) => store.version(&new.name, number)?.filter(|v| !v.pruned),
                    None => None,
                };
                if let Some(existing) = existing {
                    return Ok(Published {
                        version: existing.number,
                        digest,
                        revision: existing.revision,
                        created: false,
                    });
                }
                {
                    let number = store.prompt(&new.name)?.map_or(1, |p| p.latest_version + 1);
                    let (revision, time) = writer.next();
                    let latest = LabelName::latest();
                    let previous = store.label(&new.name, &latest)?;
                    let version = Version {
                        name: new.name.clone(),
                        number,
                        digest,
                        content: new.content,
                        author: new.author.clone(),
                        description: new.description,
                        tags: new.tags,
                        created_at: time,
                        revision,
                        signature: Some(writer.sign_version(&new.name, number, &digest, time)),
                        pruned: false,
                    };
                    let latest_move = LabelMove {
                        name: new.name.clone(),
                        label: latest,
                        revision,
                        time,
                        kind: MoveKind::Promote,
                        from_version: previous.map(|p| p.version),
                        to_version: Some(number),
                        digest: Some(digest),
                        trace_id: new.trace_id.clone(),
                        actor: new.author.clone(),
                        reason: format!("version {number} published"),
                    };
                    let change = Revision {
                        revision,
                        time,
                        trace_id: new.trace_id,
                        changes: vec![
                            Change::VersionPublished {
                                name: new.name,
                                version: number,
                                digest,
                                author: new.author,
                            },
                            Change::LabelMoved(latest_move),
                        ],
                    };
                    this.commit(&mut writer, change, Some(&version))?;
                    Ok(Published {
                        version: number,
                        digest,
                        revision,
                        created: true,
                    })
                }
            })
            .await?;
        // Also for an existing version: it may have been committed by a
        // writer whose flush is still running.
        self.wait_durable(published.revision).await?;
        Ok(published)
    }

    /// Moves a label to `version` (promote). With `expected_version`, only if
    /// the label points there now (`Some(0)`: only if it does not exist).
    pub async fn set_label(
        &self,
        request: MoveRequest,
        version: u64,
        expected_version: Option<u64>,
    ) -> Result<Moved> {
        self.check_actor_reason(&request)?;
        let moved = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let current = this.existing_label_target(&request.name, &request.label)?;
                check_expected(&request, current.as_ref(), expected_version)?;
                this.move_label(
                    &mut writer,
                    request,
                    MoveKind::Promote,
                    current,
                    Some(version),
                )
            })
            .await?;
        self.wait_durable(moved.revision).await?;
        Ok(moved)
    }

    /// Moves a label back: to `to_version`, or by default one step back in
    /// its history (see [`rollback_target`]). With `expected_version`, only
    /// if the label points there now, as [`Registry::set_label`].
    pub async fn rollback(
        &self,
        request: MoveRequest,
        to_version: Option<u64>,
        expected_version: Option<u64>,
    ) -> Result<Moved> {
        self.check_actor_reason(&request)?;
        let moved = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let current = this.existing_label_target(&request.name, &request.label)?;
                check_expected(&request, current.as_ref(), expected_version)?;
                // A label that was never set is an unknown label (NOT_FOUND, as
                // everywhere), with or without an explicit target: there is no
                // "back" to move it to.
                let never_set = || {
                    RegistryError::NotFound(format!(
                    "label {} of {} has never been set: nothing to roll back (promote a version)",
                    request.label, request.name
                ))
                };
                let target = match to_version {
                    Some(version) => {
                        if current.is_none()
                            && this
                                .store()
                                .history(&request.name, &request.label, None, 1)?
                                .is_empty()
                        {
                            return Err(never_set());
                        }
                        version
                    }
                    None => {
                        let mut history = this.store().history(
                            &request.name,
                            &request.label,
                            None,
                            usize::MAX,
                        )?;
                        history.reverse();
                        rollback_target(&history).map_err(|why| match why {
                            NoRollbackTarget::NoHistory => never_set(),
                            NoRollbackTarget::LabelDidNotExist => {
                                RegistryError::FailedPrecondition(format!(
                                "nothing to roll back to: before its latest move, label {} of {} \
                                 was not set (use unlabel to remove it, or promote a version)",
                                request.label, request.name
                            ))
                            }
                        })?
                    }
                };
                this.move_label(
                    &mut writer,
                    request,
                    MoveKind::Rollback,
                    current,
                    Some(target),
                )
            })
            .await?;
        self.wait_durable(moved.revision).await?;
        Ok(moved)
    }

    /// Removes a label; a recorded move like any other.
    pub async fn remove_label(&self, request: MoveRequest) -> Result<Moved> {
        self.check_actor_reason(&request)?;
        let moved = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let current = this.existing_label_target(&request.name, &request.label)?;
                if current.is_none() {
                    return Err(RegistryError::NotFound(format!(
                        "label {} is not set on {}",
                        request.label, request.name
                    )));
                }
                this.move_label(&mut writer, request, MoveKind::Remove, current, None)
            })
            .await?;
        self.wait_durable(moved.revision).await?;
        Ok(moved)
    }

    /// The shared tail of every label move, under the writer lock: checks the
    /// target exists, reports a no-op, or commits the move as one revision.
    fn move_label(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        kind: MoveKind,
        current: Option<LabelTarget>,
        to_version: Option<u64>,
    ) -> Result<Moved> {
        let digest = match to_version {
            Some(number) => {
                let version = self.existing_version(&request.name, number)?;
                // Agents could neither fetch nor verify what the label would
                // point to.
                if version.pruned {
                    let what = match kind {
                        MoveKind::Rollback => "roll back",
                        MoveKind::Promote | MoveKind::Remove => "move",
                    };
                    return Err(RegistryError::FailedPrecondition(format!(
                        "cannot {what} label {} of {} to version {number}: {} v{number} was pruned \
                         (its content is gone); choose a version that is not pruned",
                        request.label, request.name, request.name
                    )));
                }
                Some(version.digest)
            }
            None => None,
        };
        let from_version = current.as_ref().map(|c| c.version);
        if let (Some(current), Some(_)) = (&current, to_version) {
            if Some(current.version) == to_version {
                return Ok(Moved {
                    changed: false,
                    revision: current.revision,
                    from_version,
                    to_version,
                    digest,
                });
            }
        }
        let (revision, time) = writer.next();
        let mv = LabelMove {
            name: request.name,
            label: request.label,
            revision,
            time,
            kind,
            from_version,
            to_version,
            digest,
            actor: request.actor,
            reason: request.reason,
            trace_id: request.trace_id.clone(),
        };
        metrics::counter!(
            crate::telemetry::metrics::LABEL_MOVES,
            "label" => mv.label.to_string(),
            "kind" => mv.kind.as_str()
        )
        .increment(1);
        let change = Revision {
            revision,
            time,
            changes: vec![Change::LabelMoved(mv)],
            trace_id: request.trace_id,
        };
        self.commit(writer, change, None)?;
        Ok(Moved {
            changed: true,
            revision,
            from_version,
            to_version,
            digest,
        })
    }

    /// Writes one revision and hands it to group commit. On error nothing was
    /// written and the head does not move.
    fn commit(
        &self,
        writer: &mut WriterState,
        revision: Revision,
        published: Option<&Version>,
    ) -> Result<()> {
        if let Err(error) = self.store().commit(&revision, published) {
            if matches!(error, StoreError::Io(_)) {
                // sled fails every later write after an I/O error.
                self.inner.gate.set(WriteHealth::FlushFailing(format!(
                    "a write failed in storage ({error}); writes are refused (nothing unflushed was acknowledged)"
                )));
            }
            return Err(error.into());
        }
        self.forget_moved_labels(&revision);
        writer.head = revision.revision;
        writer.last_time = revision.time;
        let number = revision.revision;
        self.inner.committed_head.store(number, Ordering::SeqCst);
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Arc::new(revision));
        self.inner.group_commit.committed(number);
        Ok(())
    }

    async fn wait_durable(&self, revision: u64) -> Result<()> {
        self.inner
            .group_commit
            .wait_durable(revision)
            .await
            .map_err(RegistryError::NotDurable)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A panic while holding the lock cannot leave the state half-updated:
        // `commit` updates it only after the batch is applied.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_actor_reason(&self, request: &MoveRequest) -> Result<()> {
        validate::actor_and_reason(&request.actor, &request.reason, &self.inner.limits)?;
        Ok(())
    }

    // --- reads ----------------------------------------------------------------

    /// A version by number, digest or label. The answer is shared (see
    /// [`Encodable`]); it dereferences to the [`Version`].
    pub fn get_version(
        &self,
        name: &PromptName,
        selector: &VersionSelector,
    ) -> Result<Arc<SharedVersion>> {
        match selector {
            VersionSelector::Number(number) => self.shared_version(name, *number),
            VersionSelector::Digest(digest) => {
                self.existing_prompt(name)?;
                let number = self
                    .store()
                    .version_by_digest(name, digest)?
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!(
                            "{name} has no version with digest {digest}"
                        ))
                    })?;
                self.shared_version(name, number)
            }
            // The resolve hot path: one label read, then the version from
            // the cache. The prompt is looked up only to explain a miss.
            VersionSelector::Label(label) => match self.label_target(name, label)? {
                Some(target) => self.shared_version(name, target.version),
                None => {
                    self.existing_prompt(name)?;
                    Err(RegistryError::NotFound(format!(
                        "label {label} is not set on {name}"
                    )))
                }
            },
        }
    }

    /// What [`Registry::get_version`] answers when memory alone has it:
    /// the label target and the decoded version both cached. The resolve
    /// hot path answers from here on the async worker; `None` means the
    /// store is needed (run `get_version` off the runtime).
    pub fn cached_version(
        &self,
        name: &PromptName,
        selector: &VersionSelector,
    ) -> Option<Arc<SharedVersion>> {
        let number = match selector {
            VersionSelector::Number(number) => *number,
            VersionSelector::Label(label) => {
                let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
                cache.targets.get(name)?.get(label)?.version
            }
            VersionSelector::Digest(_) => return None,
        };
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.clone(), number))
    }

    pub fn list_prompts(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<PromptSummary>> {
        let after = match page_token {
            "" => None,
            token => Some(decode_token(token)?),
        };
        let size = page_size_of(page_size);
        let mut items = self
            .store()
            .list_prompts(prefix, after.as_deref(), size + 1)?;
        let next_page_token = next_token(&mut items, size, |p| hex::encode(p.name.as_str()));
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Versions newest first, without needing their content.
    pub fn list_versions(
        &self,
        name: &PromptName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Version>> {
        self.existing_prompt(name)?;
        let below = parse_number_token(page_token)?;
        let size = page_size_of(page_size);
        let mut items = self.store().list_versions(name, below, size + 1)?;
        let next_page_token = next_token(&mut items, size, |v| v.number.to_string());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    pub fn list_labels(&self, name: &PromptName) -> Result<Vec<LabelTarget>> {
        self.existing_prompt(name)?;
        Ok(self.store().labels(name)?)
    }

    /// Every move of a label, newest first.
    pub fn label_history(
        &self,
        name: &PromptName,
        label: &LabelName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<LabelMove>> {
        self.existing_prompt(name)?;
        let below = parse_number_token(page_token)?;
        let size = page_size_of(page_size);
        let mut items = self.store().history(name, label, below, size + 1)?;
        if items.is_empty() && below.is_none() {
            return Err(RegistryError::NotFound(format!(
                "label {label} of {name} has never been set"
            )));
        }
        let next_page_token = next_token(&mut items, size, |m| m.revision.to_string());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// What `label` pointed to at a revision or time, and the move that put
    /// it there.
    pub fn resolve_at(
        &self,
        name: &PromptName,
        label: &LabelName,
        at: PointInTime,
    ) -> Result<(Version, LabelMove)> {
        self.existing_prompt(name)?;
        let found = match at {
            PointInTime::Revision(revision) => {
                validate::revision_in_past("revision", revision, self.committed_head())?;
                self.store().move_at_revision(name, label, revision)?
            }
            // Revision times never decrease, so the newest move at or before
            // `time` is the first one found walking back.
            PointInTime::Time(time) => self.find_move_at_time(name, label, time)?,
        };
        let at_text = match at {
            PointInTime::Revision(r) => format!("revision {r}"),
            PointInTime::Time(t) => format!("time {}", crate::time::format_micros(t)),
        };
        let mv = found.ok_or_else(|| {
            RegistryError::NotFound(format!("label {label} of {name} was not set at {at_text}"))
        })?;
        let Some(version) = mv.to_version else {
            return Err(RegistryError::NotFound(format!(
                "label {label} of {name} was not set at {at_text}: removed at revision {} by {} ({})",
                mv.revision, mv.actor, mv.reason
            )));
        };
        Ok((self.existing_version(name, version)?, mv))
    }

    fn find_move_at_time(
        &self,
        name: &PromptName,
        label: &LabelName,
        time: Micros,
    ) -> Result<Option<LabelMove>> {
        let mut below = None;
        loop {
            let page = self.store().history(name, label, below, 256)?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            below = Some(last.revision);
            if let Some(found) = page.into_iter().find(|m| m.time <= time) {
                return Ok(Some(found));
            }
        }
    }

    pub fn diff(
        &self,
        name: &PromptName,
        from: u64,
        to: u64,
    ) -> Result<(Version, Version, VersionDiff)> {
        let old = self.existing_version(name, from)?;
        let new = self.existing_version(name, to)?;
        // A pruned version has no content left: a diff against it would be
        // invented. Its digest is kept, so say so instead.
        if let Some(pruned) = [&old, &new].into_iter().find(|v| v.pruned) {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name} v{} was pruned: its content is gone, so there is nothing to diff \
                 (its digest {} is kept: compare digests with GetVersion)",
                pruned.number, pruned.digest
            )));
        }
        let diff = VersionDiff::between(&old, &new);
        Ok((old, new, diff))
    }

    // --- change-log retention ------------------------------------------------

    /// Compacts the change log: removes the records that are both older than
    /// the newest `retention_revisions` and older than `retention`. Returns
    /// the compact revision afterwards. Label history and versions are never
    /// touched.
    pub fn compact_log(&self) -> Result<u64> {
        let config = self.inner.hub.config();
        let store = self.store();
        let head = self.inner.hub.published();
        // The head record always stays: start-up checks it.
        let keep_from_revision = head.saturating_sub(config.retention_revisions.max(1));
        let retention = i64::try_from(config.retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff_time = crate::time::now_micros().saturating_sub(retention);
        let mut upto = store.compact_revision()?;
        loop {
            let page = store.revisions(upto + 1, 1024)?;
            let mut advanced = false;
            for revision in &page {
                if revision.revision > keep_from_revision || revision.time >= cutoff_time {
                    break;
                }
                upto = revision.revision;
                advanced = true;
            }
            if !advanced || page.len() < 1024 {
                break;
            }
        }
        if upto > store.compact_revision()? {
            let removed = store.compact(upto)?;
            tracing::info!(compact_revision = upto, removed, "change log compacted");
        }
        Ok(upto)
    }

    // --- fleet ------------------------------------------------------------------

    /// Records an agent's acknowledgement; answers the label's current target.
    pub fn ack(&self, ack: Ack) -> Result<Option<u64>> {
        let target = self
            .existing_label_target(&ack.name, &ack.label)?
            .map(|t| t.version);
        self.inner.fleet.ack(ack);
        Ok(target)
    }

    /// Each known agent's state for the selected labels, with the labels'
    /// current targets.
    pub fn fleet_status(
        &self,
        name: Option<&PromptName>,
        label: Option<&LabelName>,
    ) -> Result<Vec<AgentLabelStatus>> {
        self.expire_agents();
        let store = self.store();
        let known: Vec<(PromptName, LabelName)> = match name {
            Some(name) => store
                .labels(name)?
                .into_iter()
                .map(|t| (name.clone(), t.label))
                .collect(),
            None => store
                .labels_under("")?
                .into_iter()
                .map(|(n, t)| (n, t.label))
                .collect(),
        };
        let mut known = known;
        // A label that is not set (yet) can still be watched.
        if let (Some(name), Some(label)) = (name, label) {
            if !known.iter().any(|(n, l)| n == name && l == label) {
                known.push((name.clone(), label.clone()));
            }
        }
        let mut rows = self.inner.fleet.status(name, label, &known);
        let mut targets = std::collections::HashMap::new();
        for row in &mut rows {
            let key = (row.name.clone(), row.label.clone());
            if !targets.contains_key(&key) {
                targets.insert(
                    key.clone(),
                    store.label(&row.name, &row.label)?.map(|t| t.version),
                );
            }
            row.target_version = targets[&key];
        }
        Ok(rows)
    }

    /// Counts for one label, without per-agent rows.
    pub fn fleet_summary(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<fleet::FleetCounts> {
        self.expire_agents();
        let target = self.existing_label_target(name, label)?.map(|t| t.version);
        Ok(self.inner.fleet.count(name, label, target))
    }

    fn expire_agents(&self) {
        let ttl = i64::try_from(self.inner.hub.config().agent_ttl.as_micros()).unwrap_or(i64::MAX);
        self.inner.fleet.expire(crate::time::now_micros(), ttl);
    }

    // --- lookups that answer NOT_FOUND ---------------------------------------

    fn existing_version_count(&self, name: &PromptName) -> Result<u64> {
        Ok(self.existing_prompt(name)?.latest_version)
    }

    fn existing_prompt(&self, name: &PromptName) -> Result<PromptSummary> {
        self.store()
            .prompt(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("prompt {name} does not exist")))
    }

    /// Where a label points now: from the cache, or read from the store and
    /// cached.
    fn label_target(&self, name: &PromptName, label: &LabelName) -> Result<Option<LabelTarget>> {
        let generation = {
            let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(target) = cache.targets.get(name).and_then(|labels| labels.get(label)) {
                return Ok(Some(target.clone()));
            }
            cache.generation
        };
        let target = self.store().label(name, label)?;
        if let Some(target) = &target {
            let mut cache = self.inner.labels.write().unwrap_or_else(|p| p.into_inner());
            // A label moved since the read began: what was read may be old.
            if cache.generation == generation {
                if cache.entries >= LABEL_CACHE_ENTRIES {
                    cache.targets.clear();
                    cache.entries = 0;
                }
                let labels = cache.targets.entry(name.clone()).or_default();
                if labels.insert(label.clone(), target.clone()).is_none() {
                    cache.entries += 1;
                }
            }
        }
        Ok(target)
    }

    /// Drops the cached targets of the labels a revision moved. Called
    /// after the revision is applied to the store, so a read that began
    /// before it either sees the new generation (and does not cache) or
    /// cached before this, and its entry is dropped here.
    fn forget_moved_labels(&self, revision: &Revision) {
        let moved = revision.changes.iter().filter_map(|change| match change {
            Change::LabelMoved(mv) => Some(mv),
            Change::VersionPublished { .. } => None,
        });
        let mut cache = None;
        for mv in moved {
            let cache = cache.get_or_insert_with(|| {
                let mut cache = self.inner.labels.write().unwrap_or_else(|p| p.into_inner());
                cache.generation += 1;
                cache
            });
            let removed = cache
                .targets
                .get_mut(&mv.name)
                .and_then(|labels| labels.remove(&mv.label));
            if removed.is_some() {
                cache.entries -= 1;
            }
        }
    }

    fn existing_version(&self, name: &PromptName, number: u64) -> Result<Version> {
        let shared = self.shared_version(name, number)?;
        Ok(Version::clone(&shared))
    }

    /// A version from the cache, or read from the store and cached.
    fn shared_version(&self, name: &PromptName, number: u64) -> Result<Arc<SharedVersion>> {
        let key = (name.clone(), number);
        if let Some(cached) = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(cached);
        }
        match self.store().version(name, number)? {
            Some(version) => {
                let mut cache = self
                    .inner
                    .versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let shared = Arc::new(SharedVersion::new(version));
                cache.insert(key, shared.clone());
                Ok(shared)
            }
            None => {
                let latest = self.existing_prompt(name)?.latest_version;
                Err(RegistryError::NotFound(format!(
                    "{name} has no version {number} (its newest is {latest})"
                )))
            }
        }
    }

    /// The label's target, after checking the prompt exists.
    fn existing_label_target(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<Option<LabelTarget>> {
        self.existing_prompt(name)?;
        Ok(self.store().label(name, label)?)
    }
}

impl WriterState {
    /// The next revision and its time (never earlier than the head's).
    fn next(&self) -> (u64, Micros) {
        (self.head + 1, crate::time::now_micros().max(self.last_time))
    }
}

/// The flusher: one task per registry, making committed revisions durable in
/// groups. Holds the registry weakly so that dropping the last handle closes
/// the store.
///
/// Each flush runs on a blocking thread and is waited for at most
/// [`disk::FLUSH_PATIENCE`]: sled's flush can wait forever on a full disk.
/// A flush that outlives it counts as failed (its writers are answered
/// UNAVAILABLE) and is waited for again before any other starts, so at most
/// one flush thread is ever stuck.
async fn run_flusher(registry: Weak<Inner>, group_commit: Arc<GroupCommit>) {
    type FlushTask = tokio::task::JoinHandle<crate::store::Result<()>>;
    let mut stuck: Option<(FlushTask, u64)> = None;
    loop {
        let (mut task, target) = match stuck.take() {
            Some(stuck) => stuck,
            None => {
                let Some(target) = group_commit.next_target().await else {
                    return;
                };
                let Some(inner) = registry.upgrade() else {
                    return;
                };
                let store = inner.store.clone();
                drop(inner);
                (
                    tokio::task::spawn_blocking(move || store.flush_blocking()),
                    target,
                )
            }
        };
        let started = std::time::Instant::now();
        let flushed = match tokio::time::timeout(disk::FLUSH_PATIENCE, &mut task).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(join)) => Err(format!("the flush thread failed: {join}")),
            Err(_) => {
                stuck = Some((task, target));
                Err(format!(
                    "the flush has not finished after {} s",
                    disk::FLUSH_PATIENCE.as_secs()
                ))
            }
        };
        metrics::histogram!(crate::telemetry::metrics::FLUSH_DURATION)
            .record(started.elapsed().as_secs_f64());
        match flushed {
            Ok(()) => {
                let Some(inner) = registry.upgrade() else {
                    group_commit.flushed(target);
                    return;
                };
                if matches!(inner.gate.get(), WriteHealth::FlushFailing(_)) {
                    inner.gate.set(WriteHealth::Serving);
                }
                let durable: Vec<Arc<Revision>> = {
                    let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                    let count = pending.iter().take_while(|r| r.revision <= target).count();
                    pending.drain(..count).collect()
                };
                // The hub's head moves before the writers are released, so
                // a client that opens a watch after its write was
                // acknowledged finds the hub at least at that revision. The
                // writers are answered before the revisions go out on the
                // ring: waking ten thousand watchers first would put the
                // answer to a rollback behind all of them.
                if let Some(last) = durable.last() {
                    inner.hub.advance(last.revision);
                }
                group_commit.flushed(target);
                inner.hub.publish(durable);
            }
            Err(error) => {
                tracing::error!(%error, target, "flush failed; writes are not acknowledged until a flush succeeds");
                if let Some(inner) = registry.upgrade() {
                    inner.gate.set(WriteHealth::FlushFailing(format!(
                        "a flush failed ({error}); writes are refused until one succeeds (nothing unflushed was acknowledged)"
                    )));
                }
                group_commit.flush_failed(target, error);
                if stuck.is_none() {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Periodic upkeep: change-log compaction and forgetting departed agents.
async fn run_housekeeping(registry: Weak<Inner>, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let registry = Registry { inner };
        if let Err(error) = registry.compact_log() {
            tracing::error!(%error, "change-log compaction failed");
        }
        registry.expire_agents();
    }
}

/// Refreshes the gauges that are states rather than events: fleet counts
/// per label and the store's size.
async fn run_gauges(registry: Weak<Inner>, interval: std::time::Duration) {
    use crate::telemetry::metrics::{
        CACHE_BYTES, CACHE_CAPACITY, CACHE_ENTRIES, FLEET_AGENTS, STORE_SIZE,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let registry = Registry { inner };
        if let Ok(size) = registry.store().size_on_disk() {
            metrics::gauge!(STORE_SIZE).set(size as f64);
        }
        for (cache, usage) in [
            ("version", registry.version_cache_usage()),
            ("label", registry.label_cache_usage()),
        ] {
            metrics::gauge!(CACHE_ENTRIES, "cache" => cache).set(usage.entries as f64);
            metrics::gauge!(CACHE_CAPACITY, "cache" => cache).set(usage.capacity as f64);
            if cache == "version" {
                metrics::gauge!(CACHE_BYTES, "cache" => cache).set(usage.bytes as f64);
            }
        }
        let Ok(rows) = registry.fleet_status(None, None) else {
            continue;
        };
        let mut counts: std::collections::BTreeMap<(String, String), fleet::FleetCounts> =
            Default::default();
        for row in rows {
            counts
                .entry((row.name.to_string(), row.label.to_string()))
                .or_default()
                .add(row.state());
        }
        for ((prompt, label), by_state) in counts {
            for state in crate::domain::AgentState::ALL {
                let (state, count) = (state.as_str(), by_state.count(state));
                metrics::gauge!(FLEET_AGENTS, "prompt" => prompt.clone(), "label" => label.clone(), "state" => state)
                    .set(f64::from(count));
            }
        }
    }
}

impl Registry {
    /// A consistent copy of the whole store as a backup file, and the
    /// revision it is consistent at. Writers wait while the entries are
    /// copied (in memory: prompt stores are small), then the copy is
    /// encoded without any lock.
    pub async fn backup(&self) -> Result<(u64, Vec<u8>)> {
        let (revision, entries) = self
            .off_runtime(|this| {
                let writer = this.lock_writer();
                Ok((writer.head, this.store().export_entries()?))
            })
            .await?;
        self.wait_durable(revision).await?;
        let header = crate::store::backup::BackupHeader {
            format: crate::store::backup::FORMAT.to_string(),
            version: crate::store::backup::VERSION,
            schema: crate::store::SCHEMA_VERSION,
            revision,
            entries: entries.len() as u64,
            encryption_key_id: self.store().encryption_key_id(),
            created_at: crate::time::format_micros(crate::time::now_micros()),
        };
        Ok((revision, crate::store::backup::encode(&header, &entries)))
    }
}

/// Removes what a failed flush left of unacknowledged revisions (see
/// `store/torn_tail.rs`), saying so in the log.
fn discard_torn_tail(store: &Store) -> std::result::Result<(), StoreError> {
    if let Some(was) = store.discard_torn_tail()? {
        let kept = store.head_revision()?;
        tracing::warn!(
            discarded_from = kept + 1,
            discarded_to = was,
            "a failed flush left unacknowledged revisions half-written; they were discarded (the store is back at its durable head)"
        );
    }
    Ok(())
}

/// A store error that means the files are damaged becomes `Damaged`, with
/// the way out in its message.
fn damaged_if_corrupt(dir: &Path, error: StoreError) -> RegistryError {
    match error {
        // sled says Unsupported when its damaged config file no longer
        // parses; this build has only ever written sled 0.34 stores.
        StoreError::Corrupt(_)
        | StoreError::Engine(_)
        | StoreError::Io(sled::Error::Corruption { .. })
        | StoreError::Io(sled::Error::Unsupported(_)) => RegistryError::Damaged {
            dir: dir.to_path_buf(),
            reason: error.to_string(),
        },
        other => other.into(),
    }
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let io_err = |source| RegistryError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(RegistryError::DataDirLocked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    write!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(file)
}

/// The compare-and-set of promote and rollback: with `expected`, the label
/// must point to that version now (0: it must not be set); a lost race is
/// FAILED_PRECONDITION naming what it points to.
fn check_expected(
    request: &MoveRequest,
    current: Option<&LabelTarget>,
    expected: Option<u64>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = current.map(|c| c.version);
    if actual.unwrap_or(0) == expected {
        return Ok(());
    }
    Err(RegistryError::FailedPrecondition(format!(
        "label {} of {} points to {}, not the expected version {expected}",
        request.label,
        request.name,
        describe_target(actual),
    )))
}

fn describe_target(version: Option<u64>) -> String {
    match version {
        Some(v) => format!("version {v}"),
        None => "nothing (it is not set)".to_string(),
    }
}

fn page_size_of(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Trims a page fetched with one extra item and returns the token for the
/// next page (empty when there is none).
fn next_token<T>(items: &mut Vec<T>, size: usize, token_of: impl Fn(&T) -> String) -> String {
    if items.len() > size {
        items.truncate(size);
        items.last().map(token_of).unwrap_or_default()
    } else {
        String::new()
    }
}

fn decode_token(token: &str) -> std::result::Result<String, ValidationError> {
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ValidationError::new("page_token", "is not a token this server issued"))
}

fn parse_number_token(token: &str) -> std::result::Result<Option<u64>, ValidationError> {
    match token {
        "" => Ok(None),
        token => token
            .parse()
            .map(Some)
            .map_err(|_| ValidationError::new("page_token", "is not a token this server issued")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, TemplateBody};

    fn new_version(name: &PromptName, text: &str) -> NewVersion {
        NewVersion {
            name: name.clone(),
            content: Content::validate(
                TemplateBody::Text(text.into()),
                &[],
                "",
                &Limits::default(),
            )
            .unwrap(),
            author: "a".into(),
            description: String::new(),
            tags: Default::default(),
            trace_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::new(dir.path())).unwrap();
        let name = PromptName::parse("name", "p", 128).unwrap();
        registry.publish(new_version(&name, "x")).await.unwrap();
        let before = registry.flush_count();
        const WRITERS: u64 = 64;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let registry = registry.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let request = MoveRequest {
                        name,
                        label: LabelName::parse("label", &format!("l{i}")).unwrap(),
                        actor: "a".into(),
                        reason: "r".into(),
                        trace_id: None,
                    };
                    registry.set_label(request, 1, None).await.unwrap()
                })
            })
            .collect();
        let mut revisions = Vec::new();
        for task in tasks {
            revisions.push(task.await.unwrap().revision);
        }
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len() as u64, WRITERS);
        let flushes = registry.flush_count() - before;
        assert!(
            flushes < WRITERS,
            "{WRITERS} writers took {flushes} flushes: no group commit"
        );
        assert_eq!(
            registry.revision(),
            WRITERS + 1,
            "every write is durable when answered"
        );
    }

    /// The label cache never answers with a target older than a move that
    /// was acknowledged before the resolve began.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolves_follow_every_move_while_readers_fill_the_cache() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(RegistryConfig::new(dir.path())).unwrap();
        let name = PromptName::parse("name", "p", 128).unwrap();
        let label = LabelName::parse("label", "production").unwrap();
        const VERSIONS: u64 = 30;
        for i in 0..VERSIONS {
            registry
                .publish(new_version(&name, &format!("v{i}")))
                .await
                .unwrap();
        }
        let request = || MoveRequest {
            name: name.clone(),
            label: label.clone(),
            actor: "a".into(),
            reason: "r".into(),
            trace_id: None,
        };
        registry.set_label(request(), 1, None).await.unwrap();
        let acked = Arc::new(AtomicU64::new(1));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (registry, name, label) = (registry.clone(), name.clone(), label.clone());
                let (acked, done) = (acked.clone(), done.clone());
                tokio::task::spawn_blocking(move || {
                    let mut reads = 0u64;
                    while !done.load(Ordering::SeqCst) {
                        let before = acked.load(Ordering::SeqCst);
                        let selector = VersionSelector::Label(label.clone());
                        let version = registry.get_version(&name, &selector).unwrap();
                        assert!(
                            version.number >= before,
                            "resolved version {} after version {before} was acknowledged",
                            version.number
                        );
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for version in 2..=VERSIONS {
            registry.set_label(request(), version, None).await.unwrap();
            acked.store(version, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
        done.store(true, Ordering::SeqCst);
        for reader in readers {
            assert!(reader.await.unwrap() > 0);
        }
        let selector = VersionSelector::Label(label.clone());
        assert_eq!(
            registry.get_version(&name, &selector).unwrap().number,
            VERSIONS
        );
        registry.rollback(request(), None, None).await.unwrap();
        assert_eq!(
            registry.get_version(&name, &selector).unwrap().number,
            VERSIONS - 1,
            "a rollback is seen at once"
        );
    }
}
