//! Group commit: many writers, one flush.
//!
//! A writer commits its revision to sled (in memory), records it here and
//! waits. One flusher task takes the highest committed revision, flushes
//! once, and releases every writer at or below it. Writers that arrive while
//! a flush runs are covered by the next one, so N concurrent writers cost
//! about two flushes, not N.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{watch, Notify};

/// The outcome of the flushes so far.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every revision at or below this is on disk.
    pub revision: u64,
    /// The last flush failed: revisions up to `.0` could not be made durable.
    pub failed: Option<(u64, String)>,
}

pub struct GroupCommit {
    committed: AtomicU64,
    /// Successful flushes so far (for tests and metrics).
    flushes: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
    durable: watch::Sender<Durable>,
}

impl GroupCommit {
    pub fn new(head: u64) -> GroupCommit {
        GroupCommit {
            committed: AtomicU64::new(head),
            flushes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            durable: watch::Sender::new(Durable {
                revision: head,
                failed: None,
            }),
        }
    }

    /// Records that `revision` is committed and asks the flusher to run.
    pub fn committed(&self, revision: u64) {
        self.committed.fetch_max(revision, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Waits until `revision` is durable. `Err` carries the flush error when
    /// the flush that covered it failed.
    pub async fn wait_durable(&self, revision: u64) -> Result<(), String> {
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| {
                d.revision >= revision
                    || d.failed.as_ref().is_some_and(|(upto, _)| *upto >= revision)
            })
            .await
            .map_err(|_| "the registry is shutting down".to_string())?;
        if state.revision >= revision {
            Ok(())
        } else {
            Err(state
                .failed
                .as_ref()
                .map(|(_, e)| e.clone())
                .unwrap_or_default())
        }
    }

    pub fn durable_revision(&self) -> u64 {
        self.durable.borrow().revision
    }

    /// The highest committed revision the flusher should make durable next,
    /// waiting for one; `None` once closed.
    pub async fn next_target(&self) -> Option<u64> {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            let target = self.committed.load(Ordering::SeqCst);
            if target > self.durable.borrow().revision {
                return Some(target);
            }
            // `notify_one` stores a permit when nobody waits, so a commit that
            // lands between the check above and this await is not missed.
            self.wake.notified().await;
        }
    }

    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    pub fn flushed(&self, target: u64) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.durable.send_modify(|d| {
            d.revision = d.revision.max(target);
            d.failed = None;
        });
    }

    pub fn flush_failed(&self, target: u64, error: String) {
        self.durable
            .send_modify(|d| d.failed = Some((target, error)));
    }

    /// Stops the flusher after its current flush.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}
