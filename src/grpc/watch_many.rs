//! `WatchMany`: many watches on one bidirectional stream.
//!
//! Each watch is an ordinary [`WatchStream`], the same watcher that serves
//! `Watch`, so every guarantee carries over (snapshot or resume, no gap, in
//! order, compaction, shutdown with the revision to resume from). This
//! stream polls them from the task that writes the gRPC stream.
//!
//! Watches that stand at the same place, the same selector and the same
//! next revision while following live ([`WatchStream::position`]), send the
//! same messages from then on, so they are merged: one watcher serves the
//! group, each message goes out once listing every id of the group, and
//! each watch keeps its own membership (its place among the open watches,
//! its agent's connection). A hundred agents of one host following one
//! label cost one watcher and one message per revision, not a hundred.
//! Watches that do not stand together yet (different snapshots, a
//! catch-up) still share a revision's encoding when they send it in the
//! same round.

use super::convert;
use super::pb::{self, watch_many_request::Request as Command};
use super::wire::WatchManyFrame;
use crate::domain::ValidationError;
use crate::registry::watch::{SharedRevision, WatchEvent, WatchMembership, WatchStream};
use crate::registry::{Registry, RegistryError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
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

/// Watches served by one watcher: they stand at the same place.
struct Group {
    stream: WatchStream,
    /// The watch ids, in the order they joined.
    ids: Vec<u64>,
    /// Each watch's membership, by id.
    members: BTreeMap<u64, WatchMembership>,
}

/// The response stream of one `WatchMany` call.
pub struct WatchMany {
    registry: Registry,
    inbound: Inbound,
    /// The client may still send opens and cancels.
    inbound_open: bool,
    groups: BTreeMap<u64, Group>,
    /// The group of each open watch id.
    group_of: HashMap<u64, u64>,
    next_group: u64,
    /// Messages ready to send, in order.
    out: VecDeque<WatchManyFrame>,
    /// Request frames received so far, to name a bad one.
    frames: u64,
    /// The status the call ends with once `out` is sent (a bad frame).
    failed: Option<Status>,
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
            groups: BTreeMap::new(),
            group_of: HashMap::new(),
            next_group: 0,
            out: VecDeque::new(),
            frames: 0,
            failed: None,
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

    /// Ends a watch with the status of an error of the core or of bad input
    /// (mapped where every error is, in `status`).
    fn end_with(&mut self, watch_id: u64, status: impl Into<Status>) {
        let status = status.into();
        self.end(watch_id, status.code(), status.message());
    }

    fn handle(&mut self, request: pb::WatchManyRequest) {
        match request.request {
            Some(Command::Open(open)) => self.open(open),
            Some(Command::Cancel(cancel)) => self.cancel(cancel.watch_id),
            None => self.end_with(
                0,
                ValidationError::new("request", "must be `open` or `cancel`"),
            ),
        }
    }

    fn open(&mut self, open: pb::WatchOpen) {
        let id = open.watch_id;
        if id == 0 {
            return self.end_with(0, ValidationError::new("watch_id", "must be 1 or more"));
        }
        if self.group_of.contains_key(&id) {
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
            return self.end_with(id, ValidationError::new("watch", "is required"));
        };
        // The fields of the WatchRequest are named from the WatchOpen
        // (`watch.names[0]`), whether the converter or the core refused them.
        let opened = convert::watch_request(watch, self.registry.limits())
            .map_err(RegistryError::Invalid)
            .and_then(|request| self.registry.watch(request))
            .map_err(|error| match error {
                RegistryError::Invalid(invalid) => RegistryError::Invalid(invalid.within("watch")),
                other => other,
            });
        match opened {
            Ok(mut stream) => {
                let members = stream
                    .take_membership()
                    .map(|m| (id, m))
                    .into_iter()
                    .collect();
                let key = self.next_group;
                self.next_group += 1;
                self.group_of.insert(id, key);
                self.groups.insert(
                    key,
                    Group {
                        stream,
                        ids: vec![id],
                        members,
                    },
                );
            }
            Err(error) => self.end_with(id, error),
        }
    }

    fn cancel(&mut self, id: u64) {
        let Some(key) = self.group_of.remove(&id) else {
            return self.end(
                id,
                Code::NotFound,
                format!("no watch {id} is open on this stream"),
            );
        };
        if let Some(group) = self.groups.get_mut(&key) {
            group.ids.retain(|&other| other != id);
            group.members.remove(&id);
            if group.ids.is_empty() {
                self.groups.remove(&key);
            }
        }
        self.end(id, Code::Cancelled, "cancelled by the client");
    }

    /// Polls the watchers until none has a message ready (or the outgoing
    /// queue holds a batch). The first round polls every watcher, so that
    /// each one that stays pending has registered to be woken; later rounds
    /// poll only those that had a message. After each round, watchers that
    /// now stand at the same place are merged.
    fn poll_watches(&mut self, cx: &mut Context<'_>) {
        let mut polling: Vec<u64> = self.groups.keys().copied().collect();
        while !polling.is_empty() && self.out.len() < OUT_BATCH {
            let mut ready = Vec::new();
            let mut ended = Vec::new();
            let mut shared: Vec<(Arc<SharedRevision>, Vec<u64>)> = Vec::new();
            for key in polling {
                let Some(group) = self.groups.get_mut(&key) else {
                    continue;
                };
                let Poll::Ready(item) = Pin::new(&mut group.stream).poll_next(cx) else {
                    continue;
                };
                let ids = &group.ids;
                match item {
                    Some(Ok(WatchEvent::Changes(revision))) => {
                        ready.push(key);
                        match shared.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &revision)) {
                            Some((_, all)) => all.extend_from_slice(ids),
                            None => shared.push((revision, ids.clone())),
                        }
                    }
                    Some(Ok(event)) => {
                        ready.push(key);
                        let frame = convert::watch_frame(event);
                        self.out
                            .push_back(WatchManyFrame::response(ids.clone(), frame));
                    }
                    Some(Err(end)) => {
                        ended.push(key);
                        self.out.push_back(WatchManyFrame::ended(
                            ids.clone(),
                            convert::watch_ended(end),
                        ));
                    }
                    None => ended.push(key),
                }
            }
            for (revision, ids) in shared {
                let frame = convert::watch_frame(WatchEvent::Changes(revision));
                self.out.push_back(WatchManyFrame::response(ids, frame));
            }
            for key in ended {
                if let Some(group) = self.groups.remove(&key) {
                    for id in group.ids {
                        self.group_of.remove(&id);
                    }
                }
            }
            self.merge(&mut ready);
            polling = ready;
        }
    }

    /// Merges the groups among `keys` that stand at the same place into
    /// one; `keys` keeps the survivors.
    fn merge(&mut self, keys: &mut Vec<u64>) {
        // Only watchers that just sent something are between two messages
        // (a pending one is inside its step), so only they can merge.
        if keys.len() < 2 {
            return;
        }
        let mut at: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
        for &key in keys.iter() {
            if let Some((next, selector)) = self.groups.get(&key).and_then(|g| g.stream.position())
            {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                selector.hash(&mut hasher);
                at.entry((next, hasher.finish())).or_default().push(key);
            }
        }
        for candidates in at.into_values().filter(|c| c.len() > 1) {
            let mut survivors: Vec<u64> = Vec::new();
            for key in candidates {
                let position = |k: &u64| self.groups.get(k).and_then(|g| g.stream.position());
                let into = survivors
                    .iter()
                    .copied()
                    .find(|s| position(s).is_some() && position(s) == position(&key));
                let Some(into) = into else {
                    survivors.push(key);
                    continue;
                };
                let Some(merged) = self.groups.remove(&key) else {
                    continue;
                };
                for id in &merged.ids {
                    self.group_of.insert(*id, into);
                }
                if let Some(group) = self.groups.get_mut(&into) {
                    group.ids.extend(merged.ids);
                    group.members.extend(merged.members);
                }
                // `merged.stream` is dropped here: its watcher is no longer
                // needed.
            }
        }
        keys.retain(|k| self.groups.contains_key(k));
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
            return Poll::Ready(this.failed.take().map(Err));
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
                    this.frames += 1;
                    this.handle(request);
                }
                // A frame that is not a request (or the transport failed, and
                // then nobody reads this): the stream cannot go on.
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    this.groups.clear();
                    this.group_of.clear();
                    this.failed = Some(bad_frame(this.frames + 1, &status));
                    break;
                }
                // Half-closed: the open watches go on.
                Poll::Ready(None) => this.inbound_open = false,
                Poll::Pending => break,
            }
        }
        if this.done {
            // What was ready before the bad frame goes out first.
            return match this.out.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Ready(this.failed.take().map(Err)),
            };
        }
        this.poll_watches(cx);
        if let Some(frame) = this.out.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.groups.is_empty() {
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

/// The status that ends a `WatchMany` call whose request frame `number`
/// (the first is 1) could not be read: INVALID_ARGUMENT, or the limit it
/// broke (OUT_OF_RANGE for a frame over the size limit). Every watch of the
/// stream ends with it; the message says how to go on.
fn bad_frame(number: u64, status: &Status) -> Status {
    let code = match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => status.code(),
        _ => Code::InvalidArgument,
    };
    let reason = status
        .message()
        .strip_prefix(super::codec::UNDECODABLE)
        .unwrap_or(status.message());
    Status::new(
        code,
        format!(
            "request frame {number} could not be decoded: {reason}; this ends every watch on \
             the stream: open a new stream and reopen each watch with start_revision = the \
             revision after the last change it received (0 if its snapshot had not completed)"
        ),
    )
}
