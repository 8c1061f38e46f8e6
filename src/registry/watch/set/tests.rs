//! Unit tests of the watch set, below gRPC: grouping, ids, ends.

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
                Ok::<_, ValidationError>(WatchRequest {
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
async fn watches_whose_snapshots_finish_apart_merge_before_any_revision() {
    let mut check = Check::new();
    check.publish("p", "a").await;
    let moved = check.promote("p", 1).await;
    let mut got = Received::default();
    // One watch, its snapshot delivered and its watcher waiting; then
    // more, each built in its own round.
    check.open(1, &["p"], 0).unwrap();
    check.until(&mut got, |g| g.snapshot_complete(1)).await;
    for id in 2..=5 {
        check.open(id, &["p"], 0).unwrap();
        check.until(&mut got, |g| g.snapshot_complete(id)).await;
    }
    assert_eq!(
        check.set.watchers(),
        1,
        "the later watches joined the waiting one"
    );
    check.publish("p", "b").await;
    let second = check.promote("p", 2).await;
    assert!(second > moved);
    check
        .until(&mut got, |g| {
            (1..=5).all(|id| g.revisions(id).contains(&second))
        })
        .await;
    for id in 1..=5 {
        let revisions = got.revisions(id);
        let mut sorted = revisions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted, revisions,
            "watch {id}: each revision once, in order"
        );
    }
    assert!(
        got.change_deliveries
            .iter()
            .any(|ids| (1..=5).all(|id| ids.contains(&id))),
        "{:?}",
        got.change_deliveries
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
                Ok::<_, ValidationError>(WatchRequest {
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
