//! Start-up: the data-directory lock, opening the store, the torn tail,
//! and the background tasks.

use super::disk::{self, SpaceRule, WriteGate};
use super::durability::run_flusher;
use super::fleet::Fleet;
use super::group_commit::GroupCommit;
use super::tasks::{run_gauges, run_housekeeping};
use super::version_cache::VersionCache;
use super::watch::Hub;
use super::{provenance, Inner, OpenError, Registry, RegistryConfig, WriterState};
use crate::store::{Store, StoreError};
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

impl Registry {
    /// Opens the registry in `config.data_dir`, creating it if needed, and
    /// starts its flusher task. Must be called inside a tokio runtime.
    pub fn open(config: RegistryConfig) -> Result<Registry, OpenError> {
        let dir = config.data_dir.clone();
        let io_err = |source| OpenError::DataDir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        keep_private(&dir);
        let lock = lock_data_dir(&dir)?;
        let data_key = match &config.encryption_key_file {
            Some(path) => Some(crate::store::DataKey::load(path)?),
            None => None,
        };
        let store = match &config.store {
            super::StoreBackend::Sled => {
                Store::open_with_cache(&dir, data_key, config.caches.store_bytes)
            }
            super::StoreBackend::Etcd(etcd) => Store::open_etcd(etcd, data_key),
        }
        .map_err(|e| damaged_if_corrupt(&dir, e))?;
        discard_torn_tail(&store).map_err(|e| damaged_if_corrupt(&dir, e))?;
        seal_if_asked(&store).map_err(|e| damaged_if_corrupt(&dir, e))?;
        store
            .check_startup()
            .map_err(|e| damaged_if_corrupt(&dir, e))?;
        let head = store.head_revision()?;
        let last_time = match store.revision(head)? {
            Some(rev) => rev.time,
            None => 0,
        };
        let signer =
            provenance::open_signing_key(&store, &dir, &config.signing_key, head, last_time)?;
        let access = super::access::Access::load(&store, config.auth)
            .map_err(|e| damaged_if_corrupt(&dir, e))?;
        // The log's newest records, for watchers resuming after this start.
        let compacted = store.compact_revision()?;
        let keep = config.watch.hub_capacity.max(16) as u64;
        let tail_from = (compacted + 1).max(head.saturating_sub(keep - 1)).max(1);
        let tail = store.revisions(tail_from, keep as usize)?;
        let group_commit = Arc::new(GroupCommit::new(head));
        let compaction_interval = config.watch.compaction_interval;
        let inner = Arc::new(Inner {
            store,
            limits: config.limits,
            writer: Mutex::new(WriterState {
                head,
                last_time,
                signer,
                behind: false,
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
            access,
            request_ttl_secs: config.request_ttl.as_secs().max(1),
            rollouts: Default::default(),
            rollout_eval_interval: config.rollout_eval_interval,
            _lock: lock,
        });
        inner.hub.prime(compacted, tail);
        inner.rollouts.prime(inner.store.rollouts()?);
        tokio::spawn(super::rollout::run_controller(Arc::downgrade(&inner)));
        if let Some(changes) = inner.store.follow() {
            tokio::spawn(super::follow::run_follower(Arc::downgrade(&inner), changes));
        }
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
}

/// Removes what a failed flush left of unacknowledged revisions (see
/// `store/torn_tail.rs`), saying so in the log.
pub(super) fn discard_torn_tail(store: &Store) -> std::result::Result<(), StoreError> {
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

/// Started with a data key on a store that is not encrypted yet: every
/// version is sealed now, in one batch with its ledger entry.
fn seal_if_asked(store: &Store) -> std::result::Result<(), StoreError> {
    let Some(key_id) = store.encryption_key_id() else {
        return Ok(());
    };
    if !store.needs_sealing()? {
        return Ok(());
    }
    let sealing = store.unsealed_versions()?;
    let entry = super::audit::enable_encryption(
        &store.ledger_head()?,
        store.head_revision()?,
        &key_id,
        sealing,
    );
    let sealed = store.seal_versions(&entry)?;
    tracing::info!(data_key = %key_id, sealed, "the store is encrypted from now on");
    Ok(())
}

/// A store error that means the files are damaged becomes `OpenError::Damaged`, with
/// the way out in its message.
fn damaged_if_corrupt(dir: &Path, error: StoreError) -> OpenError {
    match error {
        StoreError::Corrupt(_)
        | StoreError::Engine(_)
        | StoreError::Damaged(_)
        | StoreError::Inconsistent(_) => OpenError::Damaged {
            dir: dir.to_path_buf(),
            reason: error.to_string(),
        },
        other => other.into(),
    }
}

/// The data directory holds content, keys and the admin token: readable by
/// its owner only (0700). A directory someone else owns (a mounted volume)
/// may refuse the change; that is said in the log, not fatal.
fn keep_private(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let private = std::fs::Permissions::from_mode(0o700);
        if let Err(e) = std::fs::set_permissions(dir, private) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the data directory private (mode 0700)");
        }
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join("LOCK");
    let io_err = |source| OpenError::DataDir {
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
            return Err(OpenError::DataDirLocked {
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
