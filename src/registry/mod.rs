//! The registry core: the use cases (publish, resolve, promote, rollback,
//! history, resolve-at, diff) over the store, with one writer lock that
//! assigns revisions and group commit that makes them durable.
//!
//! Nothing here knows about gRPC; the handlers in `grpc` are thin
//! translations onto these methods.
//!
//! One file per concern: `open.rs` (start-up), `write.rs` (the writer lock
//! and every write), `read.rs` (every read), `cache.rs` (the label-target
//! cache and the resolve path), `durability.rs` (group commit and the
//! flusher), `tasks.rs` (compaction and the periodic tasks), `fleet_ops.rs`,
//! `page.rs`, `error.rs`, `config.rs`, `encodable.rs`. This file keeps the
//! [`Registry`] handle and the state its parts share.

mod access;
mod audit;
mod cache;
mod check;
mod config;
pub mod disk;
mod durability;
mod encodable;
mod error;
pub mod fleet;
mod fleet_ops;
mod follow;
mod group_commit;
mod open;
mod page;
pub mod provenance;
mod read;
pub mod release;
pub mod rollout;
mod tasks;
mod version_cache;
pub mod watch;

mod write;

use crate::domain::{Limits, Micros, Revision};
use crate::store::Store;
use cache::LabelCache;
use disk::{SpaceRule, WriteGate, WriteHealth};
use fleet::Fleet;
use group_commit::GroupCommit;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use version_cache::VersionCache;
use watch::Hub;

pub use access::{AuthError, NewToken, TokenListing, ADMIN_TOKEN_FILE, BOOTSTRAP_TOKEN};
pub use check::check_offline;
pub use config::{CacheConfig, RegistryConfig, StoreBackend};
pub use encodable::{Encodable, SharedVersion};
pub use error::{OpenError, RegistryError, Result};
pub use page::{Page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use read::{PointInTime, VersionSelector};
pub use version_cache::CacheUsage;
pub use write::{MoveRequest, Moved, Published};

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
    /// Tokens by hash, for authenticating requests; see `access.rs`.
    access: access::Access,
    /// How long a promotion request waits by default (`--request-ttl`).
    request_ttl_secs: u64,
    /// The running and paused rollouts and their evidence.
    rollouts: rollout::Rollouts,
    /// How often the rollout controller decides (`--rollout-eval-interval`).
    rollout_eval_interval: std::time::Duration,
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
    /// A write failed in a way that may have committed it after all: the
    /// store's head is read before the next one (see `write.rs`).
    behind: bool,
}

impl Registry {
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
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

    fn store(&self) -> &Store {
        &self.inner.store
    }
}

#[cfg(test)]
mod tests;
