//! Unit tests of the registry core that span its parts: group commit under
//! concurrent writers, and the label cache against concurrent moves.

use super::*;
use crate::domain::{Content, LabelName, NewVersion, PromptName, TemplateBody};

fn new_version(name: &PromptName, text: &str) -> NewVersion {
    NewVersion {
        name: name.clone(),
        content: Content::validate(TemplateBody::Text(text.into()), &[], "", &Limits::default())
            .unwrap(),
        author: "a".into(),
        description: String::new(),
        tags: Default::default(),
        trace_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(RegistryConfig::new(dir.path())).unwrap();
    let name = PromptName::parse("name", "p", 128).unwrap();
    registry.publish(new_version(&name, "x")).await.unwrap();
    let before = registry.flush_count();
    const WRITERS: u64 = 64;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let registry = registry.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let request = MoveRequest {
                    name,
                    label: LabelName::parse("label", &format!("l{i}")).unwrap(),
                    actor: "a".into(),
                    reason: "r".into(),
                    trace_id: None,
                };
                registry.set_label(request, 1, None).await.unwrap()
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.unwrap().revision);
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len() as u64, WRITERS);
    let flushes = registry.flush_count() - before;
    assert!(
        flushes < WRITERS,
        "{WRITERS} writers took {flushes} flushes: no group commit"
    );
    assert_eq!(
        registry.revision(),
        WRITERS + 1,
        "every write is durable when answered"
    );
}

/// The label cache never answers with a target older than a move that
/// was acknowledged before the resolve began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_follow_every_move_while_readers_fill_the_cache() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(RegistryConfig::new(dir.path())).unwrap();
    let name = PromptName::parse("name", "p", 128).unwrap();
    let label = LabelName::parse("label", "production").unwrap();
    const VERSIONS: u64 = 30;
    for i in 0..VERSIONS {
        registry
            .publish(new_version(&name, &format!("v{i}")))
            .await
            .unwrap();
    }
    let request = || MoveRequest {
        name: name.clone(),
        label: label.clone(),
        actor: "a".into(),
        reason: "r".into(),
        trace_id: None,
    };
    registry.set_label(request(), 1, None).await.unwrap();
    let acked = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (registry, name, label) = (registry.clone(), name.clone(), label.clone());
            let (acked, done) = (acked.clone(), done.clone());
            tokio::task::spawn_blocking(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let before = acked.load(Ordering::SeqCst);
                    let selector = VersionSelector::Label(label.clone());
                    let version = registry.get_version(&name, &selector).unwrap();
                    assert!(
                        version.number >= before,
                        "resolved version {} after version {before} was acknowledged",
                        version.number
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for version in 2..=VERSIONS {
        registry.set_label(request(), version, None).await.unwrap();
        acked.store(version, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    let selector = VersionSelector::Label(label.clone());
    assert_eq!(
        registry.get_version(&name, &selector).unwrap().number,
        VERSIONS
    );
    registry.rollback(request(), None, None).await.unwrap();
    assert_eq!(
        registry.get_version(&name, &selector).unwrap().number,
        VERSIONS - 1,
        "a rollback is seen at once"
    );
}
