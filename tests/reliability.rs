//! Faults and limits: failed flushes, request and watcher limits, and a
//! reconnect storm across a restart.

mod support;

use promptreg::grpc::pb::{self, watch_response::Event};
use std::time::Duration;
use support::*;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_failed_flush_is_never_acknowledged_and_the_store_stays_consistent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await;
    server.registry().inject_flush_failures(1);
    let failed = client.publish_version(publish_text("p", "two", &[])).await;
    assert_status(failed, Code::Unavailable, "could not be made durable");
    // Reads keep working, and so do writes once the disk does.
    assert_eq!(
        resolve(&mut client, "p", "latest")
            .await
            .unwrap()
            .digest
            .len(),
        71
    );
    // Writes are refused (UNAVAILABLE) until the retried flush succeeds,
    // then taken again without a restart.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let next = client
            .set_label(set_label("p", "production", 1, None))
            .await;
        match next {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(std::time::Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let report = client
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(report.intact, "{:?}", report.problems);
}

#[tokio::test]
async fn limits_answer_resource_exhausted_naming_the_limit() {
    let server = TestServer::start_with(|config| {
        config.limits.max_request_bytes = 64 * 1024;
        config.watch.max_watchers = 3;
    })
    .await;
    let mut client = server.client().await;
    let huge = client
        .publish_version(publish_text("p", &"x".repeat(100 * 1024), &[]))
        .await;
    assert_status(huge, Code::ResourceExhausted, "--max-request-bytes");
    publish(&mut client, "p", "fine").await;

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = client
            .watch(pb::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap();
        open.push(stream);
    }
    let refused = client.watch(pb::WatchRequest::default()).await;
    assert_status(refused, Code::ResourceExhausted, "--max-watchers");
    drop(open);
}

/// A watcher that reconnects like `promptreg watch`, with its backoff
/// (full jitter, at most 2 s here), resuming from the last revision it saw.
async fn resilient_watcher(url: String, until: u64) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut backoff = promptreg::cli::Backoff::new(Duration::from_secs(2));
    loop {
        if seen.last().is_some_and(|last| *last >= until) {
            return seen;
        }
        let attempt = async {
            let channel = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut client = support::client_with(channel, support::token_for(&url).as_deref());
            let request = pb::WatchRequest {
                names: vec!["storm".into()],
                labels: vec!["production".into()],
                start_revision: next,
                ..Default::default()
            };
            let mut stream = client
                .watch(request)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(message)) => match message.event {
                        Some(Event::Snapshot(s)) if s.complete => next = s.revision + 1,
                        Some(Event::Changes(batch)) => {
                            seen.push(batch.revision);
                            next = batch.revision + 1;
                            if batch.revision >= until {
                                return Ok(());
                            }
                        }
                        _ => {}
                    },
                    Ok(None) => return Err("ended".to_string()),
                    Err(status) => return Err(status.to_string()),
                }
            }
        };
        if attempt.await.is_ok() {
            return seen;
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_resumes_every_watcher_without_gap_or_duplicate() {
    const WATCHERS: u64 = 200;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 1..=2 {
        publish(&mut client, "storm", &format!("v{i}")).await;
    }
    let first = client
        .set_label(set_label("storm", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    let url = server.url.clone();

    // The last move happens after the restart; every watcher must see all.
    const MOVES: u64 = 10;
    let until = first.revision + MOVES;
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|_| tokio::spawn(resilient_watcher(url.clone(), until)))
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server
        .registry()
        .watch_stats()
        .open_streams
        .load(std::sync::atomic::Ordering::SeqCst)
        < WATCHERS as usize
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watchers never all connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..MOVES / 2 {
        client
            .set_label(set_label("storm", "production", 2 - (i % 2), None))
            .await
            .unwrap();
    }
    drop(client);

    // Every stream breaks at once; all reconnect while writes go on.
    let server = server.restart_same_address().await;
    let mut client = server.client().await;
    for i in 0..MOVES / 2 {
        let version = if (MOVES / 2 + i).is_multiple_of(2) {
            2
        } else {
            1
        };
        let moved = tokio::time::timeout(
            PATIENCE,
            client.set_label(set_label("storm", "production", version, None)),
        )
        .await
        .expect("writes are not starved by the storm");
        assert!(moved.is_ok(), "{moved:?}");
    }
    for watcher in watchers {
        let seen = tokio::time::timeout(PATIENCE, watcher)
            .await
            .expect("watcher finished")
            .unwrap();
        let expected: Vec<u64> = (first.revision + 1..=until).collect();
        let tail: Vec<u64> = seen
            .iter()
            .copied()
            .filter(|r| *r > first.revision)
            .collect();
        assert_eq!(tail, expected, "no gap, no duplicate, in order");
    }
}
