//! The watch set: the state of one multiplexed watch stream (`WatchMany`),
//! without protobuf.
//!
//! It holds the open watches by id, opens and closes them, keeps each
//! watch's membership, merges the watches that stand together, says which
//! event goes to which ids, and how each watch ends. The gRPC layer only
//! translates: request frames into [`WatchSet::open`] and
//! [`WatchSet::cancel`], [`Delivery`]s into response frames,
//! [`WatchSetError`] into a status.
//!
//! Each watch is an ordinary [`WatchStream`], the same watcher that serves
//! `Watch`, so every guarantee carries over (snapshot or resume, no gap, in
//! order, compaction, shutdown with the revision to resume from). The set
//! polls them from the task that writes the stream.
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
//! same round: their changes come as one delivery listing every id.

use super::arm::{self, WatchAgent};
use super::{SharedRevision, WatchEnd, WatchEvent, WatchMembership, WatchRequest, WatchStream};
use crate::domain::rollout::Arm;
use crate::domain::{Limits, Selector, ValidationError};
use crate::registry::{Registry, RegistryError};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::Stream;

/// Why an open or a cancel was refused. Fields are named as in a watch
/// open: `watch_id`, and the request's own fields under `watch`.
#[derive(Debug, thiserror::Error)]
pub enum WatchSetError {
    /// Bad input, or the core refused the watch (a limit, storage).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The id names a watch that is open on this stream.
    #[error("watch_id: watch {0} is already open on this stream")]
    AlreadyOpen(u64),
    /// A cancel for an id that is not open on this stream.
    #[error("no watch {0} is open on this stream")]
    NotOpen(u64),
    /// The server is stopping: no new watch.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<ValidationError> for WatchSetError {
    fn from(error: ValidationError) -> WatchSetError {
        WatchSetError::Registry(RegistryError::Invalid(error))
    }
}

/// What happened to some watches of the set.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// The next message of the watches.
    Event(WatchEvent),
    /// The watches ended; they are no longer in the set.
    Ended(WatchEnd),
}

/// One message for the watches in `watch_ids` (in the order they joined
/// their group; a shared revision lists the groups in polling order).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub watch_ids: Vec<u64>,
    pub delivered: Delivered,
}

/// Watches served by one watcher: they stand at the same place.
struct Group {
    stream: WatchStream,
    /// The watch ids, in the order they joined.
    ids: Vec<u64>,
    /// Each watch's membership, by id.
    members: BTreeMap<u64, WatchMembership>,
    /// The agent of each watch that has one, by id: each is sent its own
    /// view of rollout moves (see `arm.rs`).
    agents: BTreeMap<u64, Arc<WatchAgent>>,
    /// Where the watcher stood after it last sent a message, if it was
    /// then following live: it stays there until it sends the next one
    /// (which is for that place), so a watch that arrives there later can
    /// join it while it waits.
    parked: Option<(u64, Selector)>,
}

/// The watches of one multiplexed stream.
pub struct WatchSet {
    registry: Registry,
    groups: BTreeMap<u64, Group>,
    /// The group of each open watch id.
    group_of: HashMap<u64, u64>,
    next_group: u64,
    /// Completes when the server starts stopping; `None` once it has.
    stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl WatchSet {
    pub fn new(registry: Registry) -> WatchSet {
        WatchSet {
            stopping: Some(Box::pin(registry.watches_stopping())),
            registry,
            groups: BTreeMap::new(),
            group_of: HashMap::new(),
            next_group: 0,
        }
    }

    /// Notes whether the server has started stopping (and registers to be
    /// woken when it does). Opens refused from then on.
    pub fn poll_stopping(&mut self, cx: &mut Context<'_>) {
        if let Some(stopping) = self.stopping.as_mut() {
            if stopping.as_mut().poll(cx).is_ready() {
                self.stopping = None;
            }
        }
    }

    /// The server has started stopping (as of the last
    /// [`poll_stopping`](Self::poll_stopping)).
    pub fn stopped(&self) -> bool {
        self.stopping.is_none()
    }

    /// No watch is open.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Opens watch `id`. `request` builds the request (`None`: the open had
    /// none); it runs only once the id is accepted, so a bad id is reported
    /// before a bad request. Its errors, and the core's, are named within
    /// `watch`. The checks come in this order: the id (1 or more, not
    /// open), the server stopping, the request, the core.
    pub fn open<F, E>(&mut self, id: u64, request: Option<F>) -> Result<(), WatchSetError>
    where
        F: FnOnce(&Limits) -> Result<WatchRequest, E>,
        E: Into<RegistryError>,
    {
        if id == 0 {
            return Err(ValidationError::new("watch_id", "must be 1 or more").into());
        }
        if self.group_of.contains_key(&id) {
            return Err(WatchSetError::AlreadyOpen(id));
        }
        if self.stopped() {
            return Err(WatchSetError::ShuttingDown);
        }
        let Some(request) = request else {
            return Err(ValidationError::new("watch", "is required").into());
        };
        let mut stream = request(self.registry.limits())
            .map_err(Into::into)
            .and_then(|request| self.registry.watch(request))
            .map_err(|error| match error {
                RegistryError::Invalid(invalid) => RegistryError::Invalid(invalid.within("watch")),
                other => other,
            })?;
        let members = stream
            .take_membership()
            .map(|m| (id, m))
            .into_iter()
            .collect();
        let agents = stream.take_agent().map(|a| (id, a)).into_iter().collect();
        let key = self.next_group;
        self.next_group += 1;
        self.group_of.insert(id, key);
        self.groups.insert(
            key,
            Group {
                stream,
                ids: vec![id],
                members,
                agents,
                parked: None,
            },
        );
        Ok(())
    }

    /// Closes watch `id`: it leaves its group (and drops its membership);
    /// the other watches of the group go on. `Ok` means it was open and is
    /// now closed (cancelled by the client).
    pub fn cancel(&mut self, id: u64) -> Result<(), WatchSetError> {
        let Some(key) = self.group_of.remove(&id) else {
            return Err(WatchSetError::NotOpen(id));
        };
        if let Some(group) = self.groups.get_mut(&key) {
            group.ids.retain(|&other| other != id);
            group.members.remove(&id);
            group.agents.remove(&id);
            if group.ids.is_empty() {
                self.groups.remove(&key);
            }
        }
        Ok(())
    }

    /// Ends every watch at once, without a message (the stream cannot go
    /// on).
    pub fn clear(&mut self) {
        self.groups.clear();
        self.group_of.clear();
    }

    /// Polls the watchers until none has a message ready or `room`
    /// deliveries are made (checked before each round, so a round may go
    /// over). The first round polls every watcher, so that each one that
    /// stays pending has registered to be woken; later rounds poll only
    /// those that had a message. After each round, watchers that now stand
    /// at the same place are merged. In a round, the changes of one revision
    /// sent by several groups become one delivery, after the round's other
    /// deliveries.
    pub fn poll_deliveries(&mut self, cx: &mut Context<'_>, room: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut polling: Vec<u64> = self.groups.keys().copied().collect();
        while !polling.is_empty() && out.len() < room {
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
                if let Some(Ok(event)) = &item {
                    if let Some(views) = views(ids, &group.agents, event) {
                        ready.push(key);
                        for (watch_ids, event) in views {
                            out.push(Delivery {
                                watch_ids,
                                delivered: Delivered::Event(event),
                            });
                        }
                        continue;
                    }
                }
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
                        out.push(Delivery {
                            watch_ids: ids.clone(),
                            delivered: Delivered::Event(event),
                        });
                    }
                    Some(Err(end)) => {
                        ended.push(key);
                        out.push(Delivery {
                            watch_ids: ids.clone(),
                            delivered: Delivered::Ended(end),
                        });
                    }
                    None => ended.push(key),
                }
            }
            for (revision, watch_ids) in shared {
                out.push(Delivery {
                    watch_ids,
                    delivered: Delivered::Event(WatchEvent::Changes(revision)),
                });
            }
            for key in ended {
                if let Some(group) = self.groups.remove(&key) {
                    for id in group.ids {
                        self.group_of.remove(&id);
                    }
                }
            }
            for key in &ready {
                if let Some(group) = self.groups.get_mut(key) {
                    group.parked = group.stream.position().map(|(n, s)| (n, s.clone()));
                }
            }
            self.merge(&mut ready);
            polling = ready;
        }
        out
    }

    /// Merges each group among `keys` (those that just sent a message) into
    /// a group standing at the same place: another of `keys`, or one parked
    /// there since its last message. `keys` keeps the survivors.
    ///
    /// Snapshots finish one by one (each is built off the runtime), so the
    /// watches of a stream reach the same place in different rounds; the
    /// parked place lets the later ones join the earlier ones at once
    /// rather than at the next revision.
    fn merge(&mut self, keys: &mut Vec<u64>) {
        if self.groups.len() < 2 {
            return;
        }
        let hash_of = |selector: &Selector| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            selector.hash(&mut hasher);
            hasher.finish()
        };
        // Every group with a place, by place; the first of each is where
        // the others go.
        let mut at: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
        for (&key, group) in &self.groups {
            if let Some((next, selector)) = &group.parked {
                at.entry((*next, hash_of(selector))).or_default().push(key);
            }
        }
        let ready: std::collections::HashSet<u64> = keys.iter().copied().collect();
        for mut candidates in at.into_values().filter(|c| c.len() > 1) {
            // Waiting groups first: the ones that just sent join them.
            candidates.sort_by_key(|k| (ready.contains(k), *k));
            let mut survivors: Vec<u64> = Vec::new();
            for key in candidates {
                let place = |k: &u64| self.groups.get(k).and_then(|g| g.parked.clone());
                let into = survivors
                    .iter()
                    .copied()
                    .find(|s| place(s).is_some() && place(s) == place(&key));
                // Only a group between two messages can be given away; a
                // parked one that is waiting keeps its watcher.
                let (Some(into), true) = (into, ready.contains(&key)) else {
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
                    group.agents.extend(merged.agents);
                }
                // `merged.stream` is dropped here: its watcher is no longer
                // needed.
            }
        }
        keys.retain(|k| self.groups.contains_key(k));
    }

    /// How many watchers serve the set's watches (one per group of merged
    /// watches), for tests.
    #[cfg(test)]
    fn watchers(&self) -> usize {
        self.groups.len()
    }
}

/// One group of ids: their arm signature, the ids, the agent to translate for.
type View<'a> = (
    Option<Vec<(Arm, Arm)>>,
    Vec<u64>,
    Option<&'a Arc<WatchAgent>>,
);

/// The views of an event for a group's watches, when some of them are
/// agents and the event depends on the arm: the ids with the same arms get
/// one message (observers the event itself); ids with nothing to receive
/// get none. `None` when every id gets the event as it is.
fn views(
    ids: &[u64],
    agents: &BTreeMap<u64, Arc<WatchAgent>>,
    event: &WatchEvent,
) -> Option<Vec<(Vec<u64>, WatchEvent)>> {
    let depends = match event {
        WatchEvent::Changes(revision) => arm::has_rollout(revision),
        WatchEvent::Snapshot { labels, .. } => labels.iter().any(|l| l.rollout.is_some()),
        _ => false,
    };
    if agents.is_empty() || !depends {
        return None;
    }
    // By signature (`None`: an observer), in the order ids joined.
    let mut by_view: Vec<View<'_>> = Vec::new();
    for id in ids {
        let agent = agents.get(id);
        let signature = agent.map(|a| arm::signature(event, a));
        match by_view.iter_mut().find(|(s, _, _)| *s == signature) {
            Some((_, same, _)) => same.push(*id),
            None => by_view.push((signature, vec![*id], agent)),
        }
    }
    Some(
        by_view
            .into_iter()
            .filter_map(|(_, ids, agent)| {
                let view = match agent {
                    Some(agent) => arm::translate(event.clone(), agent)?,
                    None => event.clone(),
                };
                Some((ids, view))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
