//! `WatchMany`: many watches on one bidirectional stream, translated.
//!
//! The engine (watch ids, memberships, merging, what goes to which id, how
//! each watch ends) is the domain's [`WatchSet`]; this stream only turns
//! request frames into its calls, its deliveries into response frames, and
//! its errors into statuses (through `status`).

use super::convert;
use super::pb::{self, watch_many_request::Request as Command};
use super::wire::WatchManyFrame;
use crate::domain::access::{Action, Principal};
use crate::domain::{Limits, ValidationError};
use crate::registry::watch::set::{Delivered, Delivery, WatchSet};
use crate::registry::{Registry, RegistryError};
use std::collections::VecDeque;
use std::pin::Pin;
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
    watches: WatchSet,
    /// Who opened the stream: every watch is narrowed to what it may watch.
    principal: Principal,
    inbound: Inbound,
    /// The client may still send opens and cancels.
    inbound_open: bool,
    /// Messages ready to send, in order.
    out: VecDeque<WatchManyFrame>,
    /// Request frames received so far, to name a bad one.
    frames: u64,
    /// The status the call ends with once `out` is sent (a bad frame).
    failed: Option<Status>,
    done: bool,
}

impl WatchMany {
    pub fn new(registry: Registry, inbound: Inbound, principal: Principal) -> WatchMany {
        WatchMany {
            watches: WatchSet::new(registry),
            principal,
            inbound,
            inbound_open: true,
            out: VecDeque::new(),
            frames: 0,
            failed: None,
            done: false,
        }
    }

    fn end(&mut self, watch_id: u64, code: Code, message: impl Into<String>) {
        self.out.push_back(WatchManyFrame::ended(
            vec![watch_id],
            convert::ended(code, message),
        ));
    }

    /// Ends a watch with the status of a refused open or cancel, or of bad
    /// input (mapped where every error is, in `status`).
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
        let principal = &self.principal;
        let request = open.watch.map(|watch| {
            move |limits: &Limits| -> Result<_, RegistryError> {
                let mut request = convert::watch_request(watch, limits)?;
                principal.narrow(Action::Watch, &mut request.selector)?;
                Ok(request)
            }
        });
        if let Err(error) = self.watches.open(id, request) {
            self.end_with(id, error);
        }
    }

    fn cancel(&mut self, id: u64) {
        match self.watches.cancel(id) {
            Ok(()) => self.end(id, Code::Cancelled, "cancelled by the client"),
            Err(error) => self.end_with(id, error),
        }
    }

    /// Refills the outgoing queue from the watches.
    fn poll_watches(&mut self, cx: &mut Context<'_>) {
        let room = OUT_BATCH.saturating_sub(self.out.len());
        for Delivery {
            watch_ids,
            delivered,
        } in self.watches.poll_deliveries(cx, room)
        {
            let frame = match delivered {
                Delivered::Event(event) => {
                    WatchManyFrame::response(watch_ids, convert::watch_frame(event))
                }
                Delivered::Ended(end) => {
                    WatchManyFrame::ended(watch_ids, convert::watch_ended(end))
                }
            };
            self.out.push_back(frame);
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
            return Poll::Ready(this.failed.take().map(Err));
        }
        this.watches.poll_stopping(cx);
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
                    this.watches.clear();
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
        if this.watches.is_empty() {
            if this.watches.stopped() {
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
