//! The fan-out point: one broadcast ring the flusher publishes durable
//! revisions on, in order, and every watcher subscribes to.

use super::{Published, SharedRevision, WatchConfig, WatchStats};
use crate::domain::Revision;
use crate::registry::Registry;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

/// The fan-out point: the flusher publishes here, watchers subscribe here.
pub struct Hub {
    pub(super) sender: broadcast::Sender<Published>,
    /// The newest revision published (durable, and sent to the ring).
    published: AtomicU64,
    pub(super) stopping: AtomicBool,
    /// The same stop, for those that wait for it without a watch (an empty
    /// `WatchMany` stream).
    stopped: tokio::sync::watch::Sender<bool>,
    /// Snapshots being built: bounded so a reconnect storm cannot starve
    /// writers of CPU and store bandwidth.
    pub(super) snapshots: tokio::sync::Semaphore,
    pub stats: WatchStats,
    pub(super) config: WatchConfig,
    /// Trims the heap after a burst of watches (see `heap`).
    pub(super) heap: super::heap::HeapTrim,
}

impl Hub {
    pub fn new(config: WatchConfig, head: u64) -> Hub {
        let (sender, _) = broadcast::channel(config.hub_capacity.max(16));
        let ticks = sender.downgrade();
        let interval = config.progress_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                // The hub was dropped: nobody to tick for.
                let Some(sender) = ticks.upgrade() else {
                    return;
                };
                let _ = sender.send(Published::ProgressTick);
            }
        });
        let (heap, trimmer) = super::heap::HeapTrim::new();
        tokio::spawn(trimmer);
        Hub {
            sender,
            published: AtomicU64::new(head),
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::watch::Sender::new(false),
            snapshots: tokio::sync::Semaphore::new(config.max_snapshots.max(1)),
            stats: WatchStats::default(),
            config,
            heap,
        }
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Moves the published head to `revision` (durable) before the
    /// revisions up to it are sent on the ring. A watcher that reads the
    /// head in between catches up from the log, and skips the ring's copies.
    pub fn advance(&self, revision: u64) {
        self.published.fetch_max(revision, Ordering::SeqCst);
    }

    /// Publishes durable revisions, in revision order. Called by the flusher
    /// only.
    pub fn publish(&self, revisions: impl IntoIterator<Item = Arc<Revision>>) {
        for revision in revisions {
            let number = revision.revision;
            // No receiver is not an error: nobody is watching.
            let _ = self
                .sender
                .send(Published::Revision(Arc::new(SharedRevision::new(revision))));
            self.published.fetch_max(number, Ordering::SeqCst);
        }
    }

    /// Ends every watch stream with UNAVAILABLE.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.send_replace(true);
        let _ = self.sender.send(Published::ShuttingDown);
    }
}

impl Registry {
    /// Counters of the watch machinery.
    pub fn watch_stats(&self) -> &WatchStats {
        &self.inner.hub.stats
    }

    /// Revisions held in the shared ring now (at most its capacity).
    pub fn watch_ring_len(&self) -> usize {
        self.inner.hub.sender.len()
    }

    /// Completes when the server starts stopping (at once if it has).
    pub fn watches_stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.inner.hub.stopped.subscribe();
        async move {
            // An error means the hub is gone: stopped too.
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    }

    /// Ends every open watch stream with UNAVAILABLE and the revision to
    /// resume from. Used on shutdown.
    pub fn shut_down_watches(&self) {
        self.inner.hub.shut_down();
    }
}
