//! The fan-out point: one broadcast ring the flusher publishes durable
//! revisions on, in order, and every watcher subscribes to; and the same
//! newest revisions kept for watchers that resume or lag (`recent`), so
//! that a reconnect storm after a restart reads them from memory instead
//! of each watcher reading and decoding the log on a blocking thread (as
//! kube-apiserver's watch cache serves resumes).

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
    /// The newest published revisions, at most the ring's capacity, in
    /// order and without a gap; none at or below `compacted`.
    recent: std::sync::RwLock<std::collections::VecDeque<Arc<SharedRevision>>>,
    /// The change log's compact revision, as the store has it (set at
    /// start-up and by compaction, its only writer).
    compacted: AtomicU64,
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
            recent: Default::default(),
            compacted: AtomicU64::new(0),
        }
    }

    /// At start-up: the log's compact revision and its newest records (in
    /// order, ending at the head), so that watchers resuming after a
    /// restart find them in memory.
    pub fn prime(&self, compacted: u64, tail: Vec<Revision>) {
        self.compacted.store(compacted, Ordering::SeqCst);
        for revision in tail {
            self.remember(Arc::new(SharedRevision::new(Arc::new(revision))));
        }
    }

    fn capacity(&self) -> usize {
        self.config.hub_capacity.max(16)
    }

    fn remember(&self, shared: Arc<SharedRevision>) {
        let mut recent = self.recent.write().unwrap_or_else(|e| e.into_inner());
        // Only a gapless run is kept: a revision that does not follow the
        // newest starts it again.
        if recent
            .back()
            .is_some_and(|last| last.revision + 1 != shared.revision)
        {
            recent.clear();
        }
        recent.push_back(shared);
        while recent.len() > self.capacity() {
            recent.pop_front();
        }
    }

    /// The change log's compact revision (no storage call).
    pub fn compacted(&self) -> u64 {
        self.compacted.load(Ordering::SeqCst)
    }

    /// After compaction removed the log up to `upto`: forgets the same.
    pub fn compacted_upto(&self, upto: u64) {
        self.compacted.fetch_max(upto, Ordering::SeqCst);
        let mut recent = self.recent.write().unwrap_or_else(|e| e.into_inner());
        while recent.front().is_some_and(|r| r.revision <= upto) {
            recent.pop_front();
        }
    }

    /// At most `max` revisions from `next` on (up to `upto`), when memory
    /// holds `next`; `None` when it does not (read the log).
    pub fn recent_from(
        &self,
        next: u64,
        upto: u64,
        max: usize,
    ) -> Option<Vec<Arc<SharedRevision>>> {
        let recent = self.recent.read().unwrap_or_else(|e| e.into_inner());
        let first = recent.front()?.revision;
        let last = recent.back()?.revision;
        if next < first || next > last || next <= self.compacted() {
            return None;
        }
        let from = usize::try_from(next - first).ok()?;
        Some(
            recent
                .range(from..)
                .take_while(|r| r.revision <= upto)
                .take(max)
                .cloned()
                .collect(),
        )
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
            let shared = Arc::new(SharedRevision::new(revision));
            // Kept before it is sent: a watcher that lagged past it on the
            // ring finds it here.
            self.remember(shared.clone());
            // No receiver is not an error: nobody is watching.
            let _ = self.sender.send(Published::Revision(shared));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(number: u64) -> Arc<Revision> {
        Arc::new(Revision {
            revision: number,
            time: number as i64,
            changes: Vec::new(),
            trace_id: None,
        })
    }

    fn numbers(page: Option<Vec<Arc<SharedRevision>>>) -> Option<Vec<u64>> {
        page.map(|p| p.iter().map(|r| r.revision).collect())
    }

    #[tokio::test]
    async fn recent_revisions_serve_resumes_within_their_bounds() {
        let config = WatchConfig {
            hub_capacity: 16,
            ..WatchConfig::default()
        };
        let hub = Hub::new(config, 0);
        hub.prime(2, (3..=5).map(|n| Revision::clone(&revision(n))).collect());
        hub.publish((6..=20).map(revision));
        // Bounded by the capacity: 16 kept, 5..=20.
        assert_eq!(numbers(hub.recent_from(4, 20, 100)), None);
        assert_eq!(numbers(hub.recent_from(5, 7, 100)), Some(vec![5, 6, 7]));
        assert_eq!(numbers(hub.recent_from(18, 20, 2)), Some(vec![18, 19]));
        // Past the newest: the log decides (it may be committed already).
        assert_eq!(numbers(hub.recent_from(21, 21, 10)), None);
        // Compaction removes from memory what it removed from the log.
        hub.compacted_upto(9);
        assert_eq!(hub.compacted(), 9);
        assert_eq!(numbers(hub.recent_from(9, 20, 100)), None);
        assert_eq!(numbers(hub.recent_from(10, 11, 100)), Some(vec![10, 11]));
        // A gap (never in one process, but never served across either).
        hub.publish([revision(30)]);
        assert_eq!(numbers(hub.recent_from(20, 30, 100)), None);
        assert_eq!(numbers(hub.recent_from(30, 30, 100)), Some(vec![30]));
    }
}
