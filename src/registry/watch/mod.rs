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
//!
//! `hub` is the ring, `stream` one watch (its [`WatchStream`] and the
//! watcher that drives it), `snapshot` the consistent read a watch from
//! revision 0 starts with, and `set` the many watches of one `WatchMany`
//! stream; `heap` gives back what a burst of watches freed.

pub mod arm;
mod heap;
mod hub;
pub mod set;
mod snapshot;
mod stream;

use crate::domain::{PromptName, Revision};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

pub use hub::Hub;
pub use stream::{WatchMembership, WatchRequest, WatchStream};

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
    /// The label's target; for an agent's watch during a rollout, its
    /// arm's version.
    pub target: crate::domain::LabelTarget,
    /// The rollout running or paused on the label.
    pub rollout: Option<Arc<crate::domain::rollout::Rollout>>,
    /// The watching agent's arm (set for an agent's watch only).
    pub arm: Option<crate::domain::rollout::Arm>,
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

#[cfg(test)]
mod tests;
