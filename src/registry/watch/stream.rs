//! One watch: the [`WatchStream`] a handler polls and the watcher inside it,
//! which follows the ring live and reads the change log when it must (a
//! resume, or a lag).

use super::arm::WatchAgent;
use super::{LabelState, Published, SharedRevision, WatchEnd, WatchEvent};
use crate::domain::{Change, Revision, Selector};
use crate::registry::{fleet, Inner, Registry, RegistryError};
use crate::telemetry::metrics as telemetry;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::broadcast;
use tokio_stream::Stream;

/// Decrements the open-stream gauge when a stream ends, however it ends.
struct OpenStream(Arc<Inner>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.hub.stats.open_streams.fetch_sub(1, Ordering::SeqCst);
        self.0.hub.heap.touch();
        metrics::gauge!(telemetry::WATCH_STREAMS).decrement(1.0);
    }
}

/// What makes a watch count: it holds a place among the open watch streams
/// (`--max-watchers`) and keeps its agent connected in the fleet view.
/// Dropping it ends both.
pub struct WatchMembership {
    _open: OpenStream,
    _connection: Option<fleet::Connection>,
}

/// The request of a watch, validated.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub selector: Selector,
    pub start_revision: u64,
    pub agent: Option<fleet::AgentHello>,
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
    /// The agent whose view the stream sends (see `arm.rs`), unless a
    /// caller took it to translate per watch.
    agent: Option<Arc<WatchAgent>>,
}

type Step = (Box<Watcher>, Result<WatchEvent, WatchEnd>);

impl WatchStream {
    /// Takes the watch's membership out, for a caller that serves several
    /// watches from one stream (`WatchMany`): the stream goes on, and the
    /// watch counts as long as the caller keeps the membership.
    pub fn take_membership(&mut self) -> Option<WatchMembership> {
        self.watcher.as_mut()?.membership.take()
    }

    /// Takes the watch's agent out: the stream then sends every event as
    /// the hub has it, and the caller turns it into the agent's view
    /// ([`super::arm::translate`]), as `WatchMany` does per watch.
    pub fn take_agent(&mut self) -> Option<Arc<WatchAgent>> {
        self.agent.take()
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
        loop {
            let item = std::task::ready!(self.as_mut().poll_watcher(cx));
            let Some(agent) = self.agent.clone() else {
                return Poll::Ready(item);
            };
            match item {
                Some(Ok(event)) => match super::arm::translate(event, &agent) {
                    Some(event) => return Poll::Ready(Some(Ok(event))),
                    // Nothing of it for this agent: the next one.
                    None => continue,
                },
                other => return Poll::Ready(other),
            }
        }
    }
}

impl WatchStream {
    fn poll_watcher(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WatchEvent, WatchEnd>>> {
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
/// How long a watch from revision 0 waits for one of the `--max-snapshots`
/// places before it ends with RESOURCE_EXHAUSTED.
const SNAPSHOT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Log records read per catch-up page.
const CATCH_UP_PAGE: usize = 256;

impl Registry {
    /// Opens a watch. The returned stream ends when the client drops it,
    /// when the server shuts down, or with a [`WatchEnd`].
    pub fn watch(&self, request: WatchRequest) -> crate::registry::Result<WatchStream> {
        crate::domain::validate::start_revision(
            "start_revision",
            request.start_revision,
            self.committed_head(),
        )?;
        let inner = self.inner.clone();
        let limit = inner.hub.config.max_watchers;
        if inner.hub.stats.open_streams.load(Ordering::SeqCst) >= limit {
            return Err(RegistryError::Exhausted(format!(
                "{limit} watch streams are open, the limit (--max-watchers); retry with backoff"
            )));
        }
        inner.hub.stats.open_streams.fetch_add(1, Ordering::SeqCst);
        inner.hub.heap.touch();
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
        let agent = request.agent.map(|hello| {
            Arc::new(WatchAgent {
                agent_id: hello.agent_id,
                attributes: hello.attributes,
            })
        });
        Ok(WatchStream {
            watcher: Some(watcher),
            step: None,
            done: false,
            agent,
        })
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
            // `begin` and `catch_up_page` are boxed: inline, their state
            // (the snapshot queue's timeout, a blocking read) would size the
            // boxed future of every idle watch, which waits in `follow`.
            match self.phase {
                Phase::Start { start } => {
                    Box::pin(self.begin(start)).await?;
                    self.phase = Phase::Live;
                }
                Phase::Live => match self.catch_up_to {
                    Some(upto) if self.next <= upto => Box::pin(self.catch_up_page(upto)).await?,
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
        let hub = &self.registry.inner.hub;
        if start == 0 {
            // A reconnect storm queues here for a while (each snapshot is
            // short) before it is told to back off.
            let limit = hub.config.max_snapshots;
            let permit = tokio::time::timeout(SNAPSHOT_QUEUE_WAIT, hub.snapshots.acquire()).await;
            let Ok(Ok(_building)) = permit else {
                return Err(WatchEnd::Busy {
                    message: format!(
                        "{limit} snapshots were being built for {} s, the limit (--max-snapshots); retry with backoff",
                        SNAPSHOT_QUEUE_WAIT.as_secs()
                    ),
                });
            };
            let super::snapshot::Snapshot {
                compact_revision,
                revision,
                labels,
            } = self
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
            // No storage call: the hub knows the compact revision.
            let compact_revision = hub.compacted();
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
        // The newest revisions are in memory: no storage call, and the
        // ring's own encodings are reused.
        let hub = &self.registry.inner.hub;
        if let Some(page) = hub.recent_from(self.next, upto, CATCH_UP_PAGE) {
            if page.is_empty() {
                self.catch_up_to = None;
            }
            for shared in page {
                self.deliver(shared);
            }
            return Ok(());
        }
        // Older: one page of the log, read off the async workers.
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
