//! `WatchMany`: many watches on one bidirectional stream.
//!
//! Each watch is an ordinary [`WatchStream`], the same watcher that serves
//! `Watch`, so every guarantee carries over (snapshot or resume, no gap, in
//! order, compaction, shutdown with the revision to resume from). This
//! stream polls them all from the task that writes the gRPC stream, and
//! watches that take the same revision from the shared ring hold the same
//! `SharedRevision`: one message, with the revision's shared encoding, goes
//! out for all of them, listing their ids. A revision that reaches a
//! hundred watches on a stream costs one message, not a hundred.

use super::convert;
use super::pb::{self, watch_many_request::Request as Command};
use super::wire::WatchManyFrame;
use crate::registry::watch::{SharedRevision, WatchEvent, WatchStream};
use crate::registry::Registry;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::{Code, Status};

/// Client messages handled per poll, so a client that floods opens cannot
/// hold the task.
const COMMANDS_PER_POLL: usize = 64;
/// Messages produced per refill of the outgoing queue.
const OUT_BATCH: usize = 256;

type Inbound = Pin<Box<dyn Stream<Item = Result<pb::WatchManyRequest, Status>> + Send>>;

/// The response stream of one `WatchMany` call.
pub struct WatchMany {
    registry: Registry,
    inbound: Inbound,
    /// The client may still send opens and cancels.
    inbound_open: bool,
    watches: BTreeMap<u64, WatchStream>,
    /// Messages ready to send, in order.
    out: VecDeque<WatchManyFrame>,
    /// Completes when the server starts stopping; `None` once it has.
    stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    done: bool,
}

impl WatchMany {
    pub fn new(registry: Registry, inbound: Inbound) -> WatchMany {
        WatchMany {
            stopping: Some(Box::pin(registry.watches_stopping())),
            registry,
            inbound,
            inbound_open: true,
            watches: BTreeMap::new(),
            out: VecDeque::new(),
            done: false,
        }
    }

    fn stopped(&self) -> bool {
        self.stopping.is_none()
    }

    fn end(&mut self, watch_id: u64, code: Code, message: impl Into<String>) {
        self.out.push_back(WatchManyFrame::ended(
            vec![watch_id],
            convert::ended(code, message),
        ));
    }

    fn handle(&mut self, request: pb::WatchManyRequest) {
        match request.request {
            Some(Command::Open(open)) => self.open(open),
            Some(Command::Cancel(cancel)) => {
                let id = cancel.watch_id;
                if self.watches.remove(&id).is_some() {
                    self.end(id, Code::Cancelled, "cancelled by the client");
                } else {
                    self.end(
                        id,
                        Code::NotFound,
                        format!("no watch {id} is open on this stream"),
                    );
                }
            }
            None => self.end(
                0,
                Code::InvalidArgument,
                "request: must be `open` or `cancel`",
            ),
        }
    }

    fn open(&mut self, open: pb::WatchOpen) {
        let id = open.watch_id;
        if id == 0 {
            return self.end(0, Code::InvalidArgument, "watch_id: must be 1 or more");
        }
        if self.watches.contains_key(&id) {
            return self.end(
                id,
                Code::AlreadyExists,
                format!("watch_id: watch {id} is already open on this stream"),
            );
        }
        if self.stopped() {
            return self.end(id, Code::Unavailable, "the server is shutting down");
        }
        let Some(watch) = open.watch else {
            return self.end(id, Code::InvalidArgument, "watch: is required");
        };
        let opened = convert::watch_request(watch, self.registry.limits())
            .and_then(|request| self.registry.watch(request).map_err(Status::from));
        match opened {
            Ok(stream) => {
                self.watches.insert(id, stream);
            }
            Err(status) => {
                let message = format!("watch.{}", status.message());
                self.end(id, status.code(), message);
            }
        }
    }

    /// Polls the watches until none has a message ready (or the outgoing
    /// queue holds a batch). The first round polls every watch, so that each
    /// one that stays pending has registered to be woken; later rounds poll
    /// only those that had a message.
    fn poll_watches(&mut self, cx: &mut Context<'_>) {
        let mut polling: Vec<u64> = self.watches.keys().copied().collect();
        while !polling.is_empty() && self.out.len() < OUT_BATCH {
            let mut ready = Vec::new();
            let mut ended = Vec::new();
            let mut shared: Vec<(Arc<SharedRevision>, Vec<u64>)> = Vec::new();
            for id in polling {
                let Some(stream) = self.watches.get_mut(&id) else {
                    continue;
                };
                let Poll::Ready(item) = Pin::new(stream).poll_next(cx) else {
                    continue;
                };
                match item {
                    Some(Ok(WatchEvent::Changes(revision))) => {
                        ready.push(id);
                        match shared.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &revision)) {
                            Some((_, ids)) => ids.push(id),
                            None => shared.push((revision, vec![id])),
                        }
                    }
                    Some(Ok(event)) => {
                        ready.push(id);
                        let frame = convert::watch_frame(event);
                        self.out
                            .push_back(WatchManyFrame::response(vec![id], frame));
                    }
                    Some(Err(end)) => {
                        ended.push(id);
                        self.out
                            .push_back(WatchManyFrame::ended(vec![id], convert::watch_ended(end)));
                    }
                    None => ended.push(id),
                }
            }
            for (revision, ids) in shared {
                let frame = convert::watch_frame(WatchEvent::Changes(revision));
                self.out.push_back(WatchManyFrame::response(ids, frame));
            }
            for id in ended {
                self.watches.remove(&id);
            }
            polling = ready;
        }
    }
}

impl Stream for WatchMany {
    type Item = Result<WatchManyFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(frame) = this.out.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(stopping) = this.stopping.as_mut() {
            if stopping.as_mut().poll(cx).is_ready() {
                this.stopping = None;
            }
        }
        let mut handled = 0;
        while this.inbound_open && handled < COMMANDS_PER_POLL {
            match this.inbound.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(request))) => {
                    handled += 1;
                    this.handle(request);
                }
                // The client reset the call: nobody to send to.
                Poll::Ready(Some(Err(_))) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                // Half-closed: the open watches go on.
                Poll::Ready(None) => this.inbound_open = false,
                Poll::Pending => break,
            }
        }
        this.poll_watches(cx);
        if let Some(frame) = this.out.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.watches.is_empty() {
            if this.stopped() {
                this.done = true;
                return Poll::Ready(Some(Err(Status::unavailable(
                    "the server is shutting down; reopen each watch from the resume_revision \
                     of its WatchEnded",
                ))));
            }
            if !this.inbound_open {
                // No watch and no way to open one: the call is over.
                this.done = true;
                return Poll::Ready(None);
            }
        }
        if handled == COMMANDS_PER_POLL {
            // More commands may be waiting, and nothing registered a wake-up
            // for them.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
