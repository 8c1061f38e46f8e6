//! Watch: how a committed revision reaches every watcher.
//!
//! The flusher makes a group of revisions durable and then publishes them, in
//! order, on one `broadcast` channel (the hub). Every watch stream holds its
//! own broadcast receiver and is driven by the task that writes its gRPC
//! stream, so HTTP/2 flow control is its only buffer. The broadcast ring is
//! shared and fixed in size, so memory does not grow with a slow watcher: a
//! watcher that cannot keep up lags, and then reads what it missed from the
//! change log on disk (the same log that serves resumes), a page at a time,
//! in order and without a gap.

use super::Registry;
use crate::domain::{Change, LabelName, PromptName, Revision, Selector};
use crate::telemetry::metrics as telemetry;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::Stream;

/// Watch settings, with their defaults.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often a progress notification ("you have everything up to R") is
    /// sent on every stream (default 30 s).
    pub progress_interval: Duration,
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
    /// Most watches open at once, Watch streams and the watches of
    /// WatchMany streams alike (default 100 000).
    pub max_watchers: usize,
    /// Most snapshots being built at once (default 64).
    pub max_snapshots: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_interval: Duration::from_secs(30),
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
    Changes(Arc<SharedRevision>),
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

/// A revision as watch streams send it: the first stream that sends the
/// whole revision encodes it, and every other stream sends the same bytes.
pub type SharedRevision = super::Encodable<Arc<Revision>>;

/// What the ring carries. Progress ticks and the stop travel on the ring
/// too, so a watcher waits on one thing only.
#[derive(Debug, Clone)]
enum Published {
    /// A durable revision, in revision order.
    Revision(Arc<SharedRevision>),
    /// Time for a progress notification on every stream.
    ProgressTick,
    /// The server is stopping (also in `Hub::stopping`, for a watcher that
    /// lagged past this message).
    ShuttingDown,
}

/// The fan-out point: the flusher publishes here, watchers subscribe here.
pub struct Hub {
    sender: broadcast::Sender<Published>,
    /// The newest revision published (durable, and sent to the ring).
    published: AtomicU64,
    stopping: AtomicBool,
    /// The same stop, for those that wait for it without a watch (an empty
    /// `WatchMany` stream).
    stopped: tokio::sync::watch::Sender<bool>,
    /// Snapshots being built: bounded so a reconnect storm cannot starve
    /// writers of CPU and store bandwidth.
    snapshots: tokio::sync::Semaphore,
    pub stats: WatchStats,
    config: WatchConfig,
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
        Hub {
            sender,
            published: AtomicU64::new(head),
            stopping: AtomicBool::new(false),
            stopped: tokio::sync::watch::Sender::new(false),
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

/// Decrements the open-stream gauge when a stream ends, however it ends.
struct OpenStream(Arc<super::Inner>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.hub.stats.open_streams.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(telemetry::WATCH_STREAMS).decrement(1.0);
    }
}

/// What makes a watch count: it holds a place among the open watch streams
/// (`--max-watchers`) and keeps its agent connected in the fleet view.
/// Dropping it ends both.
pub struct WatchMembership {
    _open: OpenStream,
    _connection: Option<super::fleet::Connection>,
}

/// The request of a watch, validated.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub selector: Selector,
    pub start_revision: u64,
    pub agent: Option<super::fleet::AgentHello>,
}

/// A watch stream. Polling it runs the watcher itself, in the task that
/// writes the gRPC stream: no task or channel of its own, so a delivery
/// costs no extra wake-up and an idle stream holds only its state. Dropping
/// it (the client left) ends the watch at once. When the server stops, the
/// stream ends with `ShuttingDown` and the exact revision to resume from.
pub struct WatchStream {
    /// The watcher, while no step is running.
    watcher: Option<Box<Watcher>>,
    /// The step being run: it owns the watcher until it finishes.
    step: Option<Pin<Box<dyn Future<Output = Step> + Send>>>,
    done: bool,
}

type Step = (Box<Watcher>, Result<WatchEvent, WatchEnd>);

impl WatchStream {
    /// Takes the watch's membership out, for a caller that serves several
    /// watches from one stream (`WatchMany`): the stream goes on, and the
    /// watch counts as long as the caller keeps the membership.
    pub fn take_membership(&mut self) -> Option<WatchMembership> {
        self.watcher.as_mut()?.membership.take()
    }

    /// Where the watch stands, when that alone decides everything it sends
    /// from now on: between two messages, following the ring live, nothing
    /// queued. It then sends the matching changes of every revision from
    /// `next` on, in order (and progress, and how it ends), whatever its
    /// position in the ring: revisions below `next` are skipped and a lag is
    /// caught up from the log. So two watches with the same `(next,
    /// selector)` send the same messages from here on, and one stream can
    /// serve both.
    pub fn position(&self) -> Option<(u64, &Selector)> {
        if self.done || self.step.is_some() {
            return None;
        }
        let w = self.watcher.as_ref()?;
        let following = matches!(w.phase, Phase::Live) && w.queue.is_empty();
        (following && w.catch_up_to.is_none()).then_some((w.next, &w.selector))
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, WatchEnd>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.step.is_none() {
            let Some(mut watcher) = self.watcher.take() else {
                self.done = true;
                return Poll::Ready(None);
            };
            self.step = Some(Box::pin(async move {
                let item = watcher.next().await;
                (watcher, item)
            }));
        }
        let Some(step) = self.step.as_mut() else {
            return Poll::Ready(None);
        };
        let (watcher, item) = std::task::ready!(step.as_mut().poll(cx));
        self.step = None;
        self.watcher = Some(watcher);
        self.done = item.is_err();
        Poll::Ready(Some(item))
    }
}

/// Snapshot messages hold at most this many labels each.
const SNAPSHOT_CHUNK: usize = 500;
/// Log records read per catch-up page.
const CATCH_UP_PAGE: usize = 256;

impl Registry {
    /// Opens a watch. The returned stream ends when the client drops it,
    /// when the server shuts down, or with a [`WatchEnd`].
    pub fn watch(&self, request: WatchRequest) -> super::Result<WatchStream> {
        crate::domain::validate::start_revision(
            "start_revision",
            request.start_revision,
            self.committed_head(),
        )?;
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
        // Subscribe before reading any state, so no revision published from
        // here on can be missed.
        let ring = inner.hub.sender.subscribe();
        let start = request.start_revision;
        let connection = request.agent.as_ref().map(|hello| {
            self.inner
                .fleet
                .connect(hello.clone(), request.selector.clone())
        });
        let watcher = Box::new(Watcher {
            registry: self.clone(),
            selector: request.selector,
            ring,
            next: start.max(1),
            phase: Phase::Start { start },
            queue: VecDeque::new(),
            catch_up_to: None,
            membership: Some(WatchMembership {
                _open: open,
                _connection: connection,
            }),
        });
        Ok(WatchStream {
            watcher: Some(watcher),
            step: None,
            done: false,
        })
    }

    /// The current target of every selected label, consistent at one
    /// revision, once that revision is durable.
    pub async fn snapshot(&self, selector: &Selector) -> super::Result<(u64, Vec<LabelState>)> {
        // On this worker: a short scan, and a blocking-thread hop per
        // snapshot would hold the --max-snapshots permits longer under a
        // reconnect storm.
        let (revision, labels) = self.scan_consistent(selector)?;
        self.wait_durable(revision).await?;
        Ok((revision, labels))
    }

    /// The selected labels at one revision. Writers never wait for readers:
    /// read the head, scan, read the head again; equal heads mean no
    /// revision was committed in between. Under a steady stream of writes,
    /// fall back to scanning under the writer lock so that the snapshot
    /// always finishes.
    fn scan_consistent(&self, selector: &Selector) -> super::Result<(u64, Vec<LabelState>)> {
        for _ in 0..5 {
            let before = self.committed_head();
            let labels = self.scan_labels(selector)?;
            if self.committed_head() == before {
                return Ok((before, labels));
            }
        }
        let writer = self.lock_writer();
        let labels = self.scan_labels(selector)?;
        Ok((writer.head, labels))
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

/// Where a watcher is in its life.
enum Phase {
    /// Nothing sent yet; `start` is the requested start revision.
    Start { start: u64 },
    /// Created (and the snapshot) sent: following the ring.
    Live,
}

/// One watch stream's state. [`Watcher::next`] produces the stream's next
/// message; the queue holds messages already produced (snapshot chunks, a
/// page of catch-up), so memory per stream is bounded by one page.
struct Watcher {
    registry: Registry,
    selector: Selector,
    ring: broadcast::Receiver<Published>,
    /// The next revision this watcher must deliver.
    next: u64,
    phase: Phase,
    queue: VecDeque<WatchEvent>,
    /// Revisions up to this one are read from the change log before the
    /// ring is followed again (a resume, or a watcher that lagged).
    catch_up_to: Option<u64>,
    /// Held here unless taken by the caller.
    membership: Option<WatchMembership>,
}

impl Watcher {
    /// The stream's next message, or how it ends.
    async fn next(&mut self) -> Result<WatchEvent, WatchEnd> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(event);
            }
            match self.phase {
                Phase::Start { start } => {
                    self.begin(start).await?;
                    self.phase = Phase::Live;
                }
                Phase::Live => match self.catch_up_to {
                    Some(upto) if self.next <= upto => self.catch_up_page(upto).await?,
                    _ => {
                        self.catch_up_to = None;
                        self.follow().await?;
                    }
                },
            }
        }
    }

    /// Queues Created and the snapshot (start 0), or Created and the
    /// catch-up from `start`.
    async fn begin(&mut self, start: u64) -> Result<(), WatchEnd> {
        let compact_revision = self
            .registry
            .off_runtime(|registry| Ok(registry.store().compact_revision()?))
            .await
            .map_err(|e| self.storage_end(e.to_string()))?;
        let hub = &self.registry.inner.hub;
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
            self.queue.push_back(WatchEvent::Created {
                revision,
                compact_revision,
            });
            let mut chunks: Vec<Vec<LabelState>> =
                labels.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec).collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let last = chunks.len() - 1;
            for (i, labels) in chunks.into_iter().enumerate() {
                self.queue.push_back(WatchEvent::Snapshot {
                    revision,
                    labels,
                    complete: i == last,
                });
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
            self.queue.push_back(WatchEvent::Created {
                revision,
                compact_revision,
            });
            self.catch_up_to = Some(revision);
        }
        Ok(())
    }

    /// Waits for the next message on the ring and queues what it brings.
    /// Everything queued before has been handed out, so `next` is exactly
    /// where a client resumes after a stop.
    async fn follow(&mut self) -> Result<(), WatchEnd> {
        let hub = &self.registry.inner.hub;
        let shutting_down = WatchEnd::ShuttingDown {
            resume_revision: self.next,
        };
        if hub.stopping.load(Ordering::SeqCst) {
            return Err(shutting_down);
        }
        match self.ring.recv().await {
            Ok(Published::Revision(shared)) => {
                let number = shared.revision;
                if number < self.next {
                    return Ok(());
                }
                if number > self.next {
                    // Cannot happen with an in-order ring; reading the log
                    // keeps the no-gap promise even so.
                    self.catch_up_to = Some(number);
                    return Ok(());
                }
                self.deliver(shared);
            }
            Ok(Published::ProgressTick) => {
                // A watch that starts beyond the head has nothing up to its
                // start: report no more than what exists.
                let revision = (self.next - 1).min(hub.published());
                self.queue.push_back(WatchEvent::Progress { revision });
            }
            Ok(Published::ShuttingDown) | Err(broadcast::error::RecvError::Closed) => {
                return Err(shutting_down);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                hub.stats.catchups.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::WATCH_OVERFLOWS).increment(1);
                self.catch_up_to = Some(hub.published());
            }
        }
        Ok(())
    }

    /// Queues the matching revisions of one page of the change log, from
    /// `self.next` up to `upto`.
    async fn catch_up_page(&mut self, upto: u64) -> Result<(), WatchEnd> {
        // One page of the log, read off the async workers.
        let next = self.next;
        let (compact_revision, page, compact_after) = self
            .registry
            .off_runtime(move |registry| {
                let store = registry.store();
                let compact_revision = store.compact_revision()?;
                if next <= compact_revision {
                    return Ok((compact_revision, Vec::new(), compact_revision));
                }
                let page = store.revisions(next, CATCH_UP_PAGE)?;
                let compact_after = match page.first() {
                    // A gap: compaction removed the start meanwhile.
                    Some(first) if first.revision != next => store.compact_revision()?,
                    _ => compact_revision,
                };
                Ok((compact_revision, page, compact_after))
            })
            .await
            .map_err(|e| self.storage_end(e.to_string()))?;
        if self.next <= compact_revision {
            return Err(WatchEnd::Compacted {
                requested: self.next,
                compact_revision,
            });
        }
        let Some(first) = page.first() else {
            // Nothing more in the log (yet): follow the ring.
            self.catch_up_to = None;
            return Ok(());
        };
        if first.revision != self.next {
            return Err(WatchEnd::Compacted {
                requested: self.next,
                compact_revision: compact_after.max(first.revision - 1),
            });
        }
        for revision in page.into_iter().take_while(|r| r.revision <= upto) {
            self.deliver(Arc::new(SharedRevision::new(Arc::new(revision))));
        }
        Ok(())
    }

    /// Queues the matching changes of one revision (nothing when none
    /// match) and moves `next` past it. When every change matches, the
    /// stream sends the shared revision (and its shared encoding).
    fn deliver(&mut self, shared: Arc<SharedRevision>) {
        let revision: &Revision = &shared;
        self.next = revision.revision + 1;
        let matching = revision
            .changes
            .iter()
            .filter(|c| self.selector.matches(c))
            .count();
        if matching == 0 {
            return;
        }
        self.registry
            .inner
            .hub
            .stats
            .batches_sent
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::WATCH_BATCHES).increment(1);
        // Commit to handed to the stream for this watcher; the histogram's
        // top is the fan-out completion. (Catch-up deliveries count too:
        // they are late.)
        let age = crate::time::now_micros()
            .saturating_sub(revision.time)
            .max(0) as f64
            / 1e6;
        metrics::histogram!(telemetry::WATCH_FANOUT).record(age);
        let event = if matching == revision.changes.len() {
            WatchEvent::Changes(shared)
        } else {
            let changes: Vec<Change> = revision
                .changes
                .iter()
                .filter(|c| self.selector.matches(c))
                .cloned()
                .collect();
            WatchEvent::Changes(Arc::new(SharedRevision::new(Arc::new(Revision {
                revision: revision.revision,
                time: revision.time,
                trace_id: revision.trace_id.clone(),
                changes,
            }))))
        };
        self.queue.push_back(event);
    }

    fn storage_end(&self, message: String) -> WatchEnd {
        WatchEnd::Storage {
            message,
            resume_revision: self.next,
        }
    }
}
