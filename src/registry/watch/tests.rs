//! Unit tests of one watch, below gRPC.

use super::{WatchEnd, WatchEvent, WatchRequest};
use crate::domain::Selector;
use crate::registry::{Registry, RegistryConfig};
use std::time::Duration;
use tokio_stream::StreamExt;

/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(60);

fn from_zero() -> WatchRequest {
    WatchRequest {
        selector: Selector::default(),
        start_revision: 0,
        agent: None,
    }
}

/// With every `--max-snapshots` place taken, a watch from revision 0 waits
/// for one (a reconnect storm queues), and only a wait past the bound ends
/// it RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_zero_queues_for_a_snapshot_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistryConfig::new(dir.path());
    config.watch.max_snapshots = 1;
    let registry = Registry::open(config).unwrap();
    let places = &registry.inner.hub.snapshots;

    // Every place taken for longer than the bound: told to back off.
    let held = places.acquire().await.unwrap();
    let mut waiting = registry.watch(from_zero()).unwrap();
    let first = tokio::time::timeout(PATIENCE, waiting.next())
        .await
        .unwrap();
    match first {
        Some(Err(WatchEnd::Busy { message })) => {
            assert!(message.contains("--max-snapshots"), "{message}")
        }
        other => panic!("expected Busy, got {other:?}"),
    }

    // A place freed while the watch waits: it gets its snapshot.
    let mut queued = registry.watch(from_zero()).unwrap();
    let next = tokio::spawn(async move { queued.next().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!next.is_finished(), "the watch must wait for a place");
    drop(held);
    let first = tokio::time::timeout(PATIENCE, next).await.unwrap().unwrap();
    assert!(
        matches!(first, Some(Ok(WatchEvent::Created { .. }))),
        "{first:?}"
    );
}
