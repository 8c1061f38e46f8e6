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

use super::watch::{
    SharedRevision, WatchEnd, WatchEvent, WatchMembership, WatchRequest, WatchStream,
};
use super::{Registry, RegistryError};
use crate::domain::{Limits, ValidationError};
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
    pub fn open<F>(&mut self, id: u64, request: Option<F>) -> Result<(), WatchSetError>
    where
        F: FnOnce(&Limits) -> Result<WatchRequest, ValidationError>,
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
            .map_err(RegistryError::Invalid)
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
            self.merge(&mut ready);
            polling = ready;
        }
        out
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

    /// How many watchers serve the set's watches (one per group of merged
    /// watches), for tests.
    #[cfg(test)]
    fn watchers(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, LabelName, NewVersion, PromptName, Selector, TemplateBody};
    use crate::registry::{MoveRequest, RegistryConfig};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// A request builder, to name the type of an open without one.
    type MakeRequest = fn(&Limits) -> Result<WatchRequest, ValidationError>;

    /// Generous: the machine running the tests may be loaded.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn name(s: &str) -> PromptName {
        PromptName::parse("name", s, 128).unwrap()
    }

    /// A registry on a temporary directory, and one watch set on it.
    struct Check {
        registry: Registry,
        set: WatchSet,
        _dir: tempfile::TempDir,
    }

    impl Check {
        fn new() -> Check {
            let dir = tempfile::tempdir().unwrap();
            let registry = Registry::open(RegistryConfig::new(dir.path())).unwrap();
            Check {
                set: WatchSet::new(registry.clone()),
                registry,
                _dir: dir,
            }
        }

        async fn publish(&self, prompt: &str, text: &str) {
            let new = NewVersion {
                name: name(prompt),
                content: Content::validate(
                    TemplateBody::Text(text.into()),
                    &[],
                    "",
                    &Limits::default(),
                )
                .unwrap(),
                author: "a".into(),
                description: String::new(),
                tags: Default::default(),
                trace_id: None,
            };
            self.registry.publish(new).await.unwrap();
        }

        /// Points `prompt`'s `production` at `version`; the revision.
        async fn promote(&self, prompt: &str, version: u64) -> u64 {
            let request = MoveRequest {
                name: name(prompt),
                label: LabelName::parse("label", "production").unwrap(),
                actor: "a".into(),
                reason: "r".into(),
                trace_id: None,
            };
            self.registry
                .set_label(request, version, None)
                .await
                .unwrap()
                .revision
        }

        fn open(&mut self, id: u64, prompts: &[&str], start: u64) -> Result<(), WatchSetError> {
            let selector = Selector {
                names: prompts.iter().map(|p| name(p)).collect(),
                ..Selector::default()
            };
            self.set.open(
                id,
                Some(move |_: &Limits| {
                    Ok(WatchRequest {
                        selector,
                        start_revision: start,
                        agent: None,
                    })
                }),
            )
        }

        /// The next deliveries the set makes (at least one).
        async fn next(&mut self) -> Vec<Delivery> {
            let set = &mut self.set;
            let poll = std::future::poll_fn(|cx| {
                set.poll_stopping(cx);
                let out = set.poll_deliveries(cx, 256);
                if out.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(out)
                }
            });
            tokio::time::timeout(PATIENCE, poll)
                .await
                .expect("a delivery within the timeout")
        }

        /// Collects deliveries until `done` holds for what was received.
        async fn until(&mut self, got: &mut Received, done: impl Fn(&Received) -> bool) {
            while !done(got) {
                for delivery in self.next().await {
                    got.add(delivery);
                }
            }
        }
    }

    /// What each watch id received.
    #[derive(Default)]
    struct Received {
        events: BTreeMap<u64, Vec<Delivered>>,
        /// The ids of each delivery of changes.
        change_deliveries: Vec<Vec<u64>>,
    }

    impl Received {
        fn add(&mut self, delivery: Delivery) {
            if matches!(delivery.delivered, Delivered::Event(WatchEvent::Changes(_))) {
                self.change_deliveries.push(delivery.watch_ids.clone());
            }
            for id in delivery.watch_ids {
                let events = self.events.entry(id).or_default();
                events.push(delivery.delivered.clone());
            }
        }

        fn of(&self, id: u64) -> &[Delivered] {
            self.events.get(&id).map(Vec::as_slice).unwrap_or_default()
        }

        fn revisions(&self, id: u64) -> Vec<u64> {
            self.of(id)
                .iter()
                .filter_map(|d| match d {
                    Delivered::Event(WatchEvent::Changes(r)) => Some(r.revision),
                    _ => None,
                })
                .collect()
        }

        fn snapshot_complete(&self, id: u64) -> bool {
            self.of(id).iter().any(|d| {
                matches!(
                    d,
                    Delivered::Event(WatchEvent::Snapshot { complete: true, .. })
                )
            })
        }

        fn end(&self, id: u64) -> Option<&WatchEnd> {
            self.of(id).iter().find_map(|d| match d {
                Delivered::Ended(end) => Some(end),
                _ => None,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_watches_merge_and_each_id_gets_its_events() {
        let mut check = Check::new();
        check.publish("p", "a").await;
        check.publish("p", "b").await;
        check.publish("q", "a").await;
        let first = check.promote("p", 1).await;
        check.open(1, &["p"], 0).unwrap();
        check.open(2, &["p"], 0).unwrap();
        // Another selector that also covers `p`: it never merges with 1 and 2.
        check.open(3, &["p", "q"], 0).unwrap();
        assert_eq!(check.set.watchers(), 3);
        let mut got = Received::default();
        check
            .until(&mut got, |g| (1..=3).all(|id| g.snapshot_complete(id)))
            .await;
        for id in 1..=3 {
            assert!(
                matches!(got.of(id)[0], Delivered::Event(WatchEvent::Created { .. })),
                "watch {id} starts with created: {:?}",
                got.of(id)
            );
            assert!(got.revisions(id).is_empty());
        }

        let second = check.promote("p", 2).await;
        let third = check.promote("q", 1).await;
        check
            .until(&mut got, |g| {
                g.revisions(1).len() == 1 && g.revisions(2).len() == 1 && g.revisions(3).len() == 2
            })
            .await;
        assert!(second > first);
        assert_eq!(got.revisions(1), vec![second]);
        assert_eq!(got.revisions(2), vec![second]);
        assert_eq!(got.revisions(3), vec![second, third]);
        // 1 and 2 stood together: one watcher serves both, and their
        // changes come as one delivery; 3 has its own watcher.
        assert_eq!(check.set.watchers(), 2);
        assert!(
            got.change_deliveries
                .iter()
                .any(|ids| ids.contains(&1) && ids.contains(&2)),
            "{:?}",
            got.change_deliveries
        );
        assert!(got.change_deliveries.iter().all(|ids| {
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            sorted.len() == ids.len()
        }));
        assert_eq!(
            check
                .registry
                .watch_stats()
                .open_streams
                .load(std::sync::atomic::Ordering::SeqCst),
            3,
            "each watch keeps its membership"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_one_merged_watch_leaves_the_other_going() {
        let mut check = Check::new();
        check.publish("p", "a").await;
        check.publish("p", "b").await;
        check.open(1, &["p"], 0).unwrap();
        check.open(2, &["p"], 0).unwrap();
        let mut got = Received::default();
        check
            .until(&mut got, |g| {
                g.snapshot_complete(1) && g.snapshot_complete(2)
            })
            .await;
        let moved = check.promote("p", 1).await;
        check
            .until(&mut got, |g| {
                g.revisions(1) == vec![moved] && g.revisions(2) == vec![moved]
            })
            .await;
        assert_eq!(check.set.watchers(), 1, "merged");

        check.set.cancel(2).unwrap();
        assert!(matches!(
            check.set.cancel(2),
            Err(WatchSetError::NotOpen(2))
        ));
        let open = |check: &Check| {
            check
                .registry
                .watch_stats()
                .open_streams
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        assert_eq!(open(&check), 1, "the cancelled watch's membership is gone");
        let again = check.promote("p", 2).await;
        let mut after = Received::default();
        check
            .until(&mut after, |g| !g.revisions(1).is_empty())
            .await;
        assert_eq!(after.revisions(1), vec![again]);
        assert!(after.of(2).is_empty(), "a cancelled watch gets nothing");

        check.set.cancel(1).unwrap();
        assert!(check.set.is_empty());
        assert_eq!(open(&check), 0);
        // An id can be opened again once closed.
        check.open(1, &["p"], 0).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_opens_name_the_id_or_the_field() {
        let mut check = Check::new();
        check.publish("p", "a").await;
        check.open(1, &["p"], 0).unwrap();

        let error = check.open(1, &["q"], 0).unwrap_err();
        assert!(matches!(error, WatchSetError::AlreadyOpen(1)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "watch_id: watch 1 is already open on this stream"
        );
        // The first watch 1 is untouched.
        assert_eq!(check.set.watchers(), 1);

        let invalid = |error: WatchSetError| match error {
            WatchSetError::Registry(RegistryError::Invalid(invalid)) => invalid,
            other => panic!("not bad input: {other:?}"),
        };
        let zero = invalid(check.open(0, &["p"], 0).unwrap_err());
        assert_eq!(zero.field, "watch_id");

        // A bad selector found while building the request is named within
        // `watch`.
        let bad = check
            .set
            .open(
                2,
                Some(|limits: &Limits| {
                    let name = PromptName::parse("names[0]", "Not A Name!", limits.max_name_bytes)?;
                    Ok(WatchRequest {
                        selector: Selector {
                            names: [name].into(),
                            ..Selector::default()
                        },
                        start_revision: 0,
                        agent: None,
                    })
                }),
            )
            .unwrap_err();
        assert_eq!(invalid(bad).field, "watch.names[0]");
        // So is one the core refuses: a start revision past the head.
        let ahead = invalid(check.open(3, &["p"], 1_000).unwrap_err());
        assert_eq!(ahead.field, "watch.start_revision");
        // An open without a request names `watch` itself.
        let none: Option<MakeRequest> = None;
        let missing = invalid(check.set.open(4, none).unwrap_err());
        assert_eq!(missing.field, "watch");
        // The id is checked before the request.
        let first = check.set.open(1, none).unwrap_err();
        assert!(matches!(first, WatchSetError::AlreadyOpen(1)), "{first:?}");

        // None of the refused opens holds a watch.
        assert_eq!(check.set.watchers(), 1);
        for id in [0, 2, 3, 4] {
            assert!(matches!(
                check.set.cancel(id),
                Err(WatchSetError::NotOpen(_))
            ));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_ends_every_watch_with_its_resume_revision() {
        let mut check = Check::new();
        check.publish("p", "a").await;
        let moved = check.promote("p", 1).await;
        check.open(1, &["p"], moved).unwrap();
        check.open(2, &["q"], 0).unwrap();
        let mut got = Received::default();
        check
            .until(&mut got, |g| {
                !g.revisions(1).is_empty() && g.snapshot_complete(2)
            })
            .await;

        check.registry.shut_down_watches();
        check
            .until(&mut got, |g| g.end(1).is_some() && g.end(2).is_some())
            .await;
        for id in [1, 2] {
            assert_eq!(
                got.end(id),
                Some(&WatchEnd::ShuttingDown {
                    resume_revision: moved + 1
                }),
                "watch {id}: {:?}",
                got.of(id)
            );
        }
        assert!(check.set.is_empty(), "ended watches leave the set");
        assert!(check.set.stopped());
        let refused = check.open(3, &["p"], 0).unwrap_err();
        assert!(
            matches!(refused, WatchSetError::ShuttingDown),
            "{refused:?}"
        );
    }
}
