//! Watch: how a committed revision reaches every watcher.
//!
//! The flusher makes a group of revisions durable and then publishes them, in
//! order, on one `broadcast` channel (the hub). Every watch stream is a task
//! with its own broadcast receiver and a small bounded `mpsc` towards its
//! gRPC stream. The broadcast ring is shared and fixed in size, so memory
//! does not grow with a slow watcher: a watcher that cannot keep up lags,
//! and then reads what it missed from the change log on disk (the same log
//! that serves resumes), in order and without a gap.

use super::Registry;
use crate::domain::{Change, LabelName, PromptName, Revision, Selector};
use crate::telemetry::metrics as telemetry;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;

/// Watch settings, with their defaults.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often a progress notification ("you have everything up to R") is
    /// sent on every stream (default 30 s).
    pub progress_interval: Duration,
    /// Messages buffered per stream before the watcher falls behind and
    /// catches up from the log (default 64).
    pub stream_buffer: usize,
    /// Revisions kept in the shared in-memory ring (default 1024).
    pub hub_capacity: usize,
    /// The change log keeps at least this many of the newest revisions
    /// (default 100 000) ...
    pub retention_revisions: u64,
    /// ... and at least this much time (default 24 h).
    pub retention: Duration,
    /// How often compaction runs (default 60 s).
    pub compaction_interval: Duration,
    /// Agents disconnected for longer than this are forgotten (default 1 h).
    pub agent_ttl: Duration,
    /// Most watch streams open at once (default 100 000).
    pub max_watchers: usize,
    /// Most snapshots being built at once (default 64).
    pub max_snapshots: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_interval: Duration::from_secs(30),
            stream_buffer: 64,
            hub_capacity: 1024,
            retention_revisions: 100_000,
            retention: Duration::from_secs(24 * 3600),
            compaction_interval: Duration::from_secs(60),
            agent_ttl: Duration::from_secs(3600),
            max_watchers: 100_000,
            max_snapshots: 64,
        }
    }
}

/// Where one label points, in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelState {
    pub name: PromptName,
    pub target: crate::domain::LabelTarget,
}

/// What a watch stream carries, before it becomes protobuf.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Created {
        revision: u64,
        compact_revision: u64,
    },
    Snapshot {
        revision: u64,
        labels: Vec<LabelState>,
        complete: bool,
    },
    /// The matching changes of one revision.
    Changes(Revision),
    Progress {
        revision: u64,
    },
}

/// Why a watch stream ended (other than the client leaving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The requested revisions are no longer in the log.
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    /// The server is stopping; resume from `resume_revision`.
    ShuttingDown { resume_revision: u64 },
    /// Reading the log failed.
    Storage {
        message: String,
        resume_revision: u64,
    },
    /// A limit was reached; the message names it.
    Busy { message: String },
}

/// Counters a test or a metrics exporter can read.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch streams open now.
    pub open_streams: AtomicUsize,
    /// Times a watcher fell behind the shared ring and caught up from the log.
    pub catchups: AtomicU64,
    /// Change batches sent to watchers.
    pub batches_sent: AtomicU64,
}

/// The fan-out point: the flusher publishes here, watchers subscribe here.
pub struct Hub {
    sender: broadcast::Sender<Arc<Revision>>,
    /// The newest revision published (durable, and sent to the ring).
    published: AtomicU64,
    progress: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    /// Snapshots being built: bounded so a reconnect storm cannot starve
    /// writers of CPU and store bandwidth.
    snapshots: tokio::sync::Semaphore,
    pub stats: WatchStats,
    config: WatchConfig,
}

impl Hub {
    pub fn new(config: WatchConfig, head: u64) -> Hub {
        let (sender, _) = broadcast::channel(config.hub_capacity.max(16));
        let (progress_tx, progress) = watch::channel(0u64);
        let interval = config.progress_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => progress_tx.send_modify(|n| *n += 1),
                    // Every receiver gone: the hub was dropped.
                    () = progress_tx.closed() => return,
                }
            }
        });
        Hub {
            sender,
            published: AtomicU64::new(head),
            progress,
            shutdown: watch::Sender::new(false),
            snapshots: tokio::sync::Semaphore::new(config.max_snapshots.max(1)),
            stats: WatchStats::default(),
            config,
        }
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Publishes durable revisions, in revision order. Called by the flusher
    /// only.
    pub fn publish(&self, revisions: impl IntoIterator<Item = Arc<Revision>>) {
        for revision in revisions {
            let number = revision.revision;
            // No receiver is not an error: nobody is watching.
            let _ = self.sender.send(revision);
            self.published.store(number, Ordering::SeqCst);
        }
    }

    /// Ends every watch stream with UNAVAILABLE.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Decrements the open-stream gauge when a stream ends, however it ends.
struct OpenStream(Arc<super::Inner>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.hub.stats.open_streams.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(telemetry::WATCH_STREAMS).decrement(1.0);
    }
}

/// The request of a watch, validated.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub selector: Selector,
    pub start_revision: u64,
    pub agent: Option<super::fleet::AgentHello>,
}

/// A watch stream: the watcher task's events, ended early with
/// `ShuttingDown` when the server stops. It remembers the last revision it
/// handed out, so the resume revision it reports is exact.
pub struct WatchStream {
    events: mpsc::Receiver<Result<WatchEvent, WatchEnd>>,
    shutdown: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    delivered: u64,
    done: bool,
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, WatchEnd>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.done = true;
            let resume_revision = self.delivered + 1;
            return Poll::Ready(Some(Err(WatchEnd::ShuttingDown { resume_revision })));
        }
        let item = std::task::ready!(self.events.poll_recv(cx));
        match &item {
            Some(Ok(event)) => {
                let revision = match event {
                    WatchEvent::Created { .. } => None,
                    WatchEvent::Snapshot {
                        revision, complete, ..
                    } => complete.then_some(*revision),
                    WatchEvent::Changes(rev) => Some(rev.revision),
                    WatchEvent::Progress { revision } => Some(*revision),
                };
                if let Some(revision) = revision {
                    self.delivered = self.delivered.max(revision);
                }
            }
            Some(Err(_)) | None => self.done = true,
        }
        Poll::Ready(item)
    }
}

/// Snapshot messages hold at most this many labels each.
const SNAPSHOT_CHUNK: usize = 500;
/// Log records read per catch-up page.
const CATCH_UP_PAGE: usize = 256;

impl Registry {
    /// Opens a watch. The returned stream ends when the client drops it
    /// (the watcher task notices at once and exits), when the server shuts
    /// down, or with a [`WatchEnd`].
    pub fn watch(&self, request: WatchRequest) -> super::Result<WatchStream> {
        let inner = self.inner.clone();
        let limit = inner.hub.config.max_watchers;
        if inner.hub.stats.open_streams.load(Ordering::SeqCst) >= limit {
            return Err(super::RegistryError::Exhausted(format!(
                "{limit} watch streams are open, the limit (--max-watchers); retry with backoff"
            )));
        }
        inner.hub.stats.open_streams.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(telemetry::WATCH_STREAMS).increment(1.0);
        let open = OpenStream(inner.clone());
        let (tx, rx) = mpsc::channel(inner.hub.config.stream_buffer.max(4));
        // Subscribe before reading any state, so no revision published from
        // here on can be missed.
        let ring = inner.hub.sender.subscribe();
        let registry = self.clone();
        let start = request.start_revision;
        let connection = request.agent.as_ref().map(|hello| {
            self.inner
                .fleet
                .connect(hello.clone(), request.selector.clone())
        });
        tokio::spawn(async move {
            let _open = open;
            let _connection = connection;
            let mut watcher = Watcher {
                registry,
                selector: request.selector,
                tx,
                ring,
                next: start.max(1),
            };
            if let Err(end) = watcher.run(start).await {
                // The client may be gone already; then nobody needs to know.
                let _ = watcher.tx.send(Err(end)).await;
            }
        });
        let mut shutdown = self.inner.hub.shutdown.subscribe();
        Ok(WatchStream {
            events: rx,
            shutdown: Box::pin(async move {
                if shutdown.wait_for(|stopping| *stopping).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }),
            delivered: start.saturating_sub(1),
            done: false,
        })
    }

    /// The current target of every selected label, consistent at one
    /// revision, once that revision is durable.
    pub async fn snapshot(&self, selector: &Selector) -> super::Result<(u64, Vec<LabelState>)> {
        // Writers never wait for readers: read the head, scan, read the head
        // again; equal heads mean no revision was committed in between. Under
        // a steady stream of writes, fall back to scanning under the writer
        // lock so that the snapshot always finishes.
        let mut attempt = 0;
        let (revision, labels) = loop {
            attempt += 1;
            if attempt > 5 {
                let writer = self.lock_writer();
                let labels = self.scan_labels(selector)?;
                break (writer.head, labels);
            }
            let before = self.lock_writer().head;
            let labels = self.scan_labels(selector)?;
            if self.lock_writer().head == before {
                break (before, labels);
            }
        };
        self.wait_durable(revision).await?;
        Ok((revision, labels))
    }

    fn scan_labels(&self, selector: &Selector) -> super::Result<Vec<LabelState>> {
        let store = self.store();
        let mut found: BTreeMap<(PromptName, LabelName), LabelState> = BTreeMap::new();
        let mut add = |pairs: Vec<(PromptName, crate::domain::LabelTarget)>| {
            for (name, target) in pairs {
                if selector.matches_label(&name, &target.label) {
                    found.insert(
                        (name.clone(), target.label.clone()),
                        LabelState { name, target },
                    );
                }
            }
        };
        if selector.names.is_empty() && selector.prefixes.is_empty() {
            add(store.labels_under("")?);
        }
        for name in &selector.names {
            add(store
                .labels(name)?
                .into_iter()
                .map(|t| (name.clone(), t))
                .collect());
        }
        for prefix in &selector.prefixes {
            add(store.labels_under(prefix)?);
        }
        Ok(found.into_values().collect())
    }

    /// Counters of the watch machinery.
    pub fn watch_stats(&self) -> &WatchStats {
        &self.inner.hub.stats
    }

    /// Revisions held in the shared ring now (at most its capacity).
    pub fn watch_ring_len(&self) -> usize {
        self.inner.hub.sender.len()
    }

    /// Ends every open watch stream with UNAVAILABLE and the revision to
    /// resume from. Used on shutdown.
    pub fn shut_down_watches(&self) {
        self.inner.hub.shut_down();
    }
}

/// One watch stream's task.
struct Watcher {
    registry: Registry,
    selector: Selector,
    tx: mpsc::Sender<Result<WatchEvent, WatchEnd>>,
    ring: broadcast::Receiver<Arc<Revision>>,
    /// The next revision this watcher must deliver.
    next: u64,
}

/// The client went away: stop quietly.
struct Gone;

impl Watcher {
    async fn run(&mut self, start: u64) -> Result<(), WatchEnd> {
        match self.run_inner(start).await {
            Ok(Ok(())) | Ok(Err(Gone)) => Ok(()),
            Err(end) => Err(end),
        }
    }

    async fn run_inner(&mut self, start: u64) -> Result<Result<(), Gone>, WatchEnd> {
        let inner = self.registry.inner.clone();
        let hub = &inner.hub;
        let compact_revision = self
            .registry
            .store()
            .compact_revision()
            .map_err(|e| self.storage_end(e.to_string()))?;
        if start == 0 {
            let limit = hub.config.max_snapshots;
            let Ok(_building) = hub.snapshots.try_acquire() else {
                return Err(WatchEnd::Busy {
                    message: format!("{limit} snapshots are being built, the limit (--max-snapshots); retry with backoff"),
                });
            };
            let (revision, labels) = self
                .registry
                .snapshot(&self.selector)
                .await
                .map_err(|e| self.storage_end(e.to_string()))?;
            if self
                .send(WatchEvent::Created {
                    revision,
                    compact_revision,
                })
                .await
                .is_err()
            {
                return Ok(Err(Gone));
            }
            let mut chunks: Vec<Vec<LabelState>> =
                labels.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec).collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let last = chunks.len() - 1;
            for (i, labels) in chunks.into_iter().enumerate() {
                let event = WatchEvent::Snapshot {
                    revision,
                    labels,
                    complete: i == last,
                };
                if self.send(event).await.is_err() {
                    return Ok(Err(Gone));
                }
            }
            self.next = revision + 1;
        } else {
            if start <= compact_revision {
                return Err(WatchEnd::Compacted {
                    requested: start,
                    compact_revision,
                });
            }
            let revision = hub.published();
            if self
                .send(WatchEvent::Created {
                    revision,
                    compact_revision,
                })
                .await
                .is_err()
            {
                return Ok(Err(Gone));
            }
            if let Err(gone) = self.catch_up(revision).await? {
                return Ok(Err(gone));
            }
        }

        let mut progress = hub.progress.clone();
        progress.mark_unchanged();
        loop {
            tokio::select! {
                biased;
                () = self.tx.closed() => return Ok(Err(Gone)),
                received = self.ring.recv() => match received {
                    Ok(revision) => {
                        if revision.revision < self.next {
                            continue;
                        }
                        if revision.revision > self.next {
                            // Cannot happen with an in-order ring; reading the
                            // log keeps the no-gap promise even so.
                            if let Err(gone) = self.catch_up(revision.revision - 1).await? {
                                return Ok(Err(gone));
                            }
                        }
                        if self.deliver(&revision).await.is_err() {
                            return Ok(Err(Gone));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        hub.stats.catchups.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(telemetry::WATCH_OVERFLOWS).increment(1);
                        if let Err(gone) = self.catch_up(hub.published()).await? {
                            return Ok(Err(gone));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(WatchEnd::ShuttingDown { resume_revision: self.next });
                    }
                },
                changed = progress.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    // A watch that starts beyond the head has nothing up to
                    // its start: report no more than what exists.
                    let revision = (self.next - 1).min(hub.published());
                    if self.send(WatchEvent::Progress { revision }).await.is_err() {
                        return Ok(Err(Gone));
                    }
                }
            }
        }
    }

    /// Delivers every matching revision from `self.next` up to `upto` from
    /// the change log.
    async fn catch_up(&mut self, upto: u64) -> Result<Result<(), Gone>, WatchEnd> {
        while self.next <= upto {
            let store = self.registry.store();
            let compact_revision = store
                .compact_revision()
                .map_err(|e| self.storage_end(e.to_string()))?;
            if self.next <= compact_revision {
                return Err(WatchEnd::Compacted {
                    requested: self.next,
                    compact_revision,
                });
            }
            let page = store
                .revisions(self.next, CATCH_UP_PAGE)
                .map_err(|e| self.storage_end(e.to_string()))?;
            let Some(first) = page.first() else { break };
            if first.revision != self.next {
                let compact_revision = store
                    .compact_revision()
                    .map_err(|e| self.storage_end(e.to_string()))?;
                return Err(WatchEnd::Compacted {
                    requested: self.next,
                    compact_revision: compact_revision.max(first.revision - 1),
                });
            }
            for revision in page.into_iter().take_while(|r| r.revision <= upto) {
                if self.deliver(&revision).await.is_err() {
                    return Ok(Err(Gone));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Sends the matching changes of one revision (nothing when none match)
    /// and moves `next` past it.
    async fn deliver(&mut self, revision: &Revision) -> Result<(), Gone> {
        self.next = revision.revision + 1;
        let changes: Vec<Change> = revision
            .changes
            .iter()
            .filter(|c| self.selector.matches(c))
            .cloned()
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        self.registry
            .inner
            .hub
            .stats
            .batches_sent
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::WATCH_BATCHES).increment(1);
        // Commit to queued for this watcher; the histogram's top is the
        // fan-out completion. (Catch-up deliveries count too: they are late.)
        let age = crate::time::now_micros()
            .saturating_sub(revision.time)
            .max(0) as f64
            / 1e6;
        metrics::histogram!(telemetry::WATCH_FANOUT).record(age);
        self.send(WatchEvent::Changes(Revision {
            revision: revision.revision,
            time: revision.time,
            trace_id: revision.trace_id.clone(),
            changes,
        }))
        .await
    }

    async fn send(&self, event: WatchEvent) -> Result<(), Gone> {
        self.tx.send(Ok(event)).await.map_err(|_| Gone)
    }

    fn storage_end(&self, message: String) -> WatchEnd {
        WatchEnd::Storage {
            message,
            resume_revision: self.next,
        }
    }
}
