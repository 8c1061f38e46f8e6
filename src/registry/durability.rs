//! Durability: the glue to group commit, the flusher task, and the final
//! flush when the registry closes.

use super::disk::{self, WriteHealth};
use super::group_commit::GroupCommit;
use super::{Inner, Registry, RegistryError, Result};
use crate::domain::Revision;
use std::sync::{Arc, Weak};

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
    /// The newest durable revision.
    pub fn revision(&self) -> u64 {
        self.inner.group_commit.durable_revision()
    }

    /// How many flushes group commit has made; fewer than the writes when
    /// writers were concurrent.
    pub fn flush_count(&self) -> u64 {
        self.inner.group_commit.flush_count()
    }

    /// Makes the next `count` flushes fail (fault-injection tests; the
    /// `testkit` feature).
    #[cfg(feature = "testkit")]
    pub fn inject_flush_failures(&self, count: u64) {
        self.inner.store.inject_flush_failures(count);
    }

    pub(super) async fn wait_durable(&self, revision: u64) -> Result<()> {
        self.inner
            .group_commit
            .wait_durable(revision)
            .await
            .map_err(RegistryError::NotDurable)
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
pub(super) async fn run_flusher(registry: Weak<Inner>, group_commit: Arc<GroupCommit>) {
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
