//! Watch: snapshot then live, ordering under concurrency, resume, retention,
//! slow watchers, progress, shutdown, cleanup, acknowledgements.

mod support;

use promptreg::grpc::pb::{self, watch_response::Event};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;
use tonic::{Code, Streaming};

/// Generous: a loaded 2-core machine is slow, but an event that never comes
/// must still fail the test.
const PATIENCE: Duration = Duration::from_secs(60);

fn watch_request(names: &[&str], labels: &[&str], start_revision: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        names: names.iter().map(|s| s.to_string()).collect(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        start_revision,
        ..Default::default()
    }
}

async fn open(client: &mut Client, request: pb::WatchRequest) -> Streaming<pb::WatchResponse> {
    client
        .watch(request)
        .await
        .expect("watch opens")
        .into_inner()
}

/// The next event, failing after PATIENCE.
async fn next_event(stream: &mut Streaming<pb::WatchResponse>) -> Event {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the timeout")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .event
        .expect("an event")
}

/// Reads change batches (skipping progress) until one at `revision` or later.
async fn batches_until(
    stream: &mut Streaming<pb::WatchResponse>,
    revision: u64,
) -> Vec<pb::ChangeBatch> {
    let mut batches = Vec::new();
    loop {
        match next_event(stream).await {
            Event::Changes(batch) => {
                let done = batch.revision >= revision;
                batches.push(batch);
                if done {
                    return batches;
                }
            }
            Event::Progress(p) if p.revision >= revision => return batches,
            Event::Progress(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn label_move(change: &pb::Change) -> &pb::LabelMove {
    match change.kind.as_ref() {
        Some(pb::change::Kind::LabelMoved(m)) => m,
        other => panic!("expected a label move, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_then_live_changes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "agents/support", "one").await;
    publish(&mut client, "agents/support", "two").await;
    publish(&mut client, "agents/other", "x").await;
    client
        .set_label(set_label("agents/support", "production", 1, None))
        .await
        .unwrap(); // r4

    let mut stream = open(
        &mut client,
        watch_request(&["agents/support"], &["production"], 0),
    )
    .await;
    let Event::Created(created) = next_event(&mut stream).await else {
        panic!("created first")
    };
    assert_eq!(created.revision, 4);
    let Event::Snapshot(snapshot) = next_event(&mut stream).await else {
        panic!("then a snapshot")
    };
    assert!(snapshot.complete);
    assert_eq!(snapshot.revision, 4);
    assert_eq!(snapshot.labels.len(), 1);
    assert_eq!(
        (
            snapshot.labels[0].label.as_str(),
            snapshot.labels[0].version
        ),
        ("production", 1)
    );

    // Not selected: another prompt, another label, a publication.
    client
        .set_label(set_label("agents/other", "production", 1, None))
        .await
        .unwrap(); // r5
    client
        .set_label(set_label("agents/support", "staging", 2, None))
        .await
        .unwrap(); // r6
    publish(&mut client, "agents/support", "three").await; // r7
    let moved = client
        .set_label(set_label("agents/support", "production", 2, None))
        .await
        .unwrap()
        .into_inner(); // r8
    let Event::Changes(batch) = next_event(&mut stream).await else {
        panic!("a change batch")
    };
    assert_eq!(batch.revision, moved.revision);
    assert_eq!(batch.changes.len(), 1);
    let m = label_move(&batch.changes[0]);
    assert_eq!(
        (
            m.name.as_str(),
            m.label.as_str(),
            m.from_version,
            m.to_version
        ),
        ("agents/support", "production", 1, 2)
    );
    assert_eq!(m.kind, pb::MoveKind::Promote as i32);
    assert_eq!(
        (m.actor.as_str(), m.reason.as_str()),
        ("admin", "promote v2")
    );
    assert_eq!(m.digest, moved.digest);

    // With versions and every label: a publish is one revision with two
    // changes (the version, and `latest` moving to it), delivered together.
    let mut all = open(
        &mut client,
        pb::WatchRequest {
            prefixes: vec!["agents/".into()],
            include_versions: true,
            ..Default::default()
        },
    )
    .await;
    let Event::Created(_) = next_event(&mut all).await else {
        panic!()
    };
    let Event::Snapshot(snapshot) = next_event(&mut all).await else {
        panic!()
    };
    let labels: BTreeSet<(String, String)> = snapshot
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.label.clone()))
        .collect();
    assert_eq!(labels.len(), 5, "{labels:?}");
    let published = publish(&mut client, "agents/support", "four").await;
    let Event::Changes(batch) = next_event(&mut all).await else {
        panic!()
    };
    assert_eq!(batch.revision, published.revision);
    assert_eq!(batch.changes.len(), 2);
    assert!(
        matches!(batch.changes[0].kind, Some(pb::change::Kind::VersionPublished(ref v)) if v.version == 4)
    );
    assert_eq!(label_move(&batch.changes[1]).label, "latest");
}

#[tokio::test]
async fn concurrent_writers_every_watcher_sees_every_revision_once_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 1..=4 {
        publish(&mut client, "p", &format!("v{i}")).await;
    }
    let start = server.registry().revision();

    let mut watchers = Vec::new();
    for _ in 0..50 {
        let mut c = server.client().await;
        let mut stream = open(&mut c, watch_request(&["p"], &[], 0)).await;
        let Event::Created(_) = next_event(&mut stream).await else {
            panic!()
        };
        let Event::Snapshot(s) = next_event(&mut stream).await else {
            panic!()
        };
        watchers.push((c, stream, s.revision));
    }

    const WRITERS: u64 = 8;
    const MOVES: u64 = 25;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = server.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..MOVES {
                let version = (w + i) % 4 + 1;
                c.set_label(set_label("p", &format!("w{w}"), version, None))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let head = server.registry().revision();
    // The first move of each writer label always changes it; later ones too
    // because the version changes every step.
    assert_eq!(head, start + WRITERS * MOVES);

    let mut readers = Vec::new();
    for (_client, mut stream, snapshot_revision) in watchers {
        readers.push(tokio::spawn(async move {
            let batches = batches_until(&mut stream, head).await;
            let revisions: Vec<u64> = batches.iter().map(|b| b.revision).collect();
            let expected: Vec<u64> = (snapshot_revision + 1..=head).collect();
            assert_eq!(revisions, expected, "every revision once, in order, no gap");
            assert!(batches.iter().all(|b| b.changes.len() == 1));
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
}

#[tokio::test]
async fn resume_after_a_dropped_connection_gets_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    publish(&mut client, "p", "b").await;
    let mut stream = open(&mut client, watch_request(&["p"], &["production"], 0)).await;
    next_event(&mut stream).await;
    next_event(&mut stream).await;
    let first = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    let seen = batches_until(&mut stream, first.revision).await;
    let last_seen = seen.last().unwrap().revision;
    drop(stream);

    let mut missed = Vec::new();
    for v in [2, 1, 2] {
        missed.push(
            client
                .set_label(set_label("p", "production", v, None))
                .await
                .unwrap()
                .into_inner()
                .revision,
        );
    }
    publish(&mut client, "p", "c").await; // not selected: label latest only
    let mut resumed = open(
        &mut client,
        watch_request(&["p"], &["production"], last_seen + 1),
    )
    .await;
    let Event::Created(created) = next_event(&mut resumed).await else {
        panic!("created")
    };
    assert!(created.revision >= *missed.last().unwrap());
    let batches = batches_until(&mut resumed, *missed.last().unwrap()).await;
    assert_eq!(
        batches.iter().map(|b| b.revision).collect::<Vec<_>>(),
        missed
    );
    let versions: Vec<u64> = batches
        .iter()
        .map(|b| label_move(&b.changes[0]).to_version)
        .collect();
    assert_eq!(versions, [2, 1, 2]);
    // Live after the replay.
    let live = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batches_until(&mut resumed, live.revision).await.len(), 1);
}

#[tokio::test]
async fn resume_across_a_server_restart() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    publish(&mut client, "p", "b").await;
    let r = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    drop(client);
    let server = server.restart().await;
    let mut client = server.client().await;
    let after = client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap()
        .into_inner();
    let mut stream = open(
        &mut client,
        watch_request(&["p"], &["production"], r.revision),
    )
    .await;
    next_event(&mut stream).await;
    let batches = batches_until(&mut stream, after.revision).await;
    assert_eq!(
        batches.iter().map(|b| b.revision).collect::<Vec<_>>(),
        [r.revision, after.revision]
    );
}

#[tokio::test]
async fn resuming_below_the_retention_window_gets_out_of_range() {
    let server = TestServer::start_with(|config| {
        config.watch.retention_revisions = 3;
        config.watch.retention = Duration::ZERO;
    })
    .await;
    let mut client = server.client().await;
    for i in 0..10 {
        publish(&mut client, "p", &format!("v{i}")).await;
    }
    let compact = server.registry().compact_log().unwrap();
    assert_eq!(compact, 7, "keeps the newest 3 of 10 revisions");

    let mut stream = open(&mut client, watch_request(&["p"], &[], 2)).await;
    let status = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .expect_err("compacted");
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("compact revision 7"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.metadata().get("promptreg-compact-revision").unwrap(),
        "7"
    );

    // From the compact revision + 1 it works, and history is untouched.
    let mut ok = open(&mut client, watch_request(&["p"], &[], 8)).await;
    next_event(&mut ok).await;
    assert_eq!(batches_until(&mut ok, 10).await.len(), 3);
    let history = client
        .label_history(pb::LabelHistoryRequest {
            name: "p".into(),
            label: "latest".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.moves.len(), 10);
}

/// The status a Watch call ends with before its first message, or its
/// first event.
async fn watch_refusal(
    client: &mut Client,
    request: pb::WatchRequest,
) -> Result<Event, tonic::Status> {
    let mut stream = client.watch(request).await?.into_inner();
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(message))) => Ok(message.event.expect("an event")),
        Ok(Ok(None)) => Err(tonic::Status::ok("ended without a status")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no answer within {PATIENCE:?}"),
    }
}

/// Watch holds its fields to the rules the rest of the API keeps: a prefix
/// is the start of a valid name (as ListPrompts' prefix), and a start
/// revision past the head is refused as ResolveAt refuses a future revision.
#[tokio::test]
async fn watch_refuses_invalid_prefixes_and_a_start_beyond_the_head() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "support/triage", "a").await;
    let head = publish(&mut client, "support/triage", "b").await.revision;

    for (i, bad) in [(0, "Support/"), (1, "support//"), (0, "/support")] {
        let mut request = watch_request(&[], &[], 0);
        request.prefixes = vec!["support/".into(); i];
        request.prefixes.push(bad.into());
        let refused = watch_refusal(&mut client, request).await;
        assert_status(refused, Code::InvalidArgument, &format!("prefixes[{i}]:"));
        let listed = client
            .list_prompts(pb::ListPromptsRequest {
                prefix: bad.into(),
                ..Default::default()
            })
            .await;
        assert_status(listed, Code::InvalidArgument, "prefix:");
    }
    let mut request = watch_request(&[], &[], 0);
    request.prefixes = vec!["support/tri".into()];
    assert!(matches!(
        watch_refusal(&mut client, request).await,
        Ok(Event::Created(_))
    ));

    for start in [head + 2, u64::MAX] {
        let refused =
            watch_refusal(&mut client, watch_request(&["support/triage"], &[], start)).await;
        assert_status(refused, Code::InvalidArgument, "start_revision:");
        let resolved = client
            .resolve_at(pb::ResolveAtRequest {
                name: "support/triage".into(),
                label: "latest".into(),
                at: Some(pb::resolve_at_request::At::Revision(start)),
            })
            .await;
        assert_status(resolved, Code::InvalidArgument, "revision:");
    }
    // Resuming from the revision after the head is how a client that saw
    // everything carries on.
    let mut stream = open(
        &mut client,
        watch_request(&["support/triage"], &[], head + 1),
    )
    .await;
    assert!(matches!(next_event(&mut stream).await, Event::Created(_)));
    let third = publish(&mut client, "support/triage", "c").await.revision;
    assert_eq!(batches_until(&mut stream, third).await.len(), 1);
}

#[tokio::test]
async fn a_slow_watcher_does_not_hold_back_the_others_and_stays_bounded() {
    let server = TestServer::start_with(|config| {
        config.watch.hub_capacity = 16;
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    publish(&mut client, "p", "b").await;

    // The slow watcher's HTTP/2 window is tiny, so the server cannot push
    // more than a few messages before it must wait for the client to read.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .initial_stream_window_size(Some(2048))
        .initial_connection_window_size(Some(2048))
        .connect()
        .await
        .unwrap();
    let mut slow_client = client_with(channel, Some(&server.admin_token()));
    let mut slow = open(&mut slow_client, watch_request(&["p"], &["production"], 0)).await;
    let Event::Created(created) = next_event(&mut slow).await else {
        panic!()
    };

    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut c = server.client().await;
        let mut stream = open(&mut c, watch_request(&["p"], &["production"], 0)).await;
        next_event(&mut stream).await;
        next_event(&mut stream).await;
        readers.push((c, stream));
    }

    let reason = "r".repeat(1000);
    let mut last = 0;
    for i in 0..120u64 {
        let mut request = set_label("p", "production", i % 2 + 1, None);
        request.reason = reason.clone();
        last = client
            .set_label(request)
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    let first_move = last - 119;
    let mut tasks = Vec::new();
    for (_c, mut stream) in readers {
        tasks.push(tokio::spawn(async move {
            let batches = batches_until(&mut stream, last).await;
            assert_eq!(
                batches.len(),
                120,
                "a reader beside the slow one got everything"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Nothing grew for the slow watcher: the shared ring holds at most its
    // capacity, and the watcher's own queue is the fixed stream buffer.
    assert!(server.registry().watch_ring_len() <= 16);
    let stats = server.registry().watch_stats();

    // Once it reads, it gets every revision in order, without a gap: the
    // revisions it fell behind on come from the change log.
    let snapshot = next_event(&mut slow).await;
    assert!(matches!(snapshot, Event::Snapshot(ref s) if s.revision == created.revision));
    let batches = batches_until(&mut slow, last).await;
    let revisions: Vec<u64> = batches.iter().map(|b| b.revision).collect();
    assert_eq!(revisions, (first_move..=last).collect::<Vec<_>>());
    assert!(
        stats.catchups.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the slow watcher lagged and caught up from the log"
    );
}

#[tokio::test]
async fn progress_notifications_arrive_on_an_idle_stream() {
    let server = TestServer::start_with(|config| {
        config.watch.progress_interval = Duration::from_millis(100)
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let mut stream = open(&mut client, watch_request(&["nothing-here"], &[], 0)).await;
    next_event(&mut stream).await;
    next_event(&mut stream).await;
    publish(&mut client, "p", "b").await; // r2: not selected
    loop {
        match next_event(&mut stream).await {
            Event::Progress(p) if p.revision == 2 => break,
            Event::Progress(p) => assert!(p.revision <= 2),
            other => panic!("only progress expected, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_the_resume_revision() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let moved = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    let mut stream = open(&mut client, watch_request(&["p"], &["production"], 1)).await;
    next_event(&mut stream).await;
    assert_eq!(batches_until(&mut stream, moved.revision).await.len(), 1);

    let stopping = tokio::spawn(async move {
        server.stop().await;
    });
    let status = loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    let resume = (moved.revision + 1).to_string();
    assert_eq!(
        status.metadata().get("promptreg-resume-revision").unwrap(),
        resume.as_str()
    );
    stopping.await.unwrap();
}

async fn wait_for_open_streams(server: &TestServer, expected: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let open = server
            .registry()
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst);
        if open == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "open streams stayed {open}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cancelled_stream_is_cleaned_up_at_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = open(&mut client, watch_request(&["p"], &[], 0)).await;
        next_event(&mut s).await;
        streams.push(s);
    }
    wait_for_open_streams(&server, 5).await;
    // Idle streams: nothing is published, so only the cancellation itself
    // can wake their tasks.
    streams.truncate(2);
    wait_for_open_streams(&server, 2).await;
    drop(streams);
    drop(client);
    wait_for_open_streams(&server, 0).await;
}

/// Fleet status with rows; also checks that the summary-only answer (the
/// path `--wait` polls) counts the same.
async fn fleet(client: &mut Client, name: &str, label: &str) -> pb::FleetStatusResponse {
    let request = |summary_only| pb::FleetStatusRequest {
        name: name.into(),
        label: label.into(),
        summary_only,
    };
    let before = client
        .fleet_status(request(true))
        .await
        .unwrap()
        .into_inner();
    let full = client
        .fleet_status(request(false))
        .await
        .unwrap()
        .into_inner();
    let after = client
        .fleet_status(request(true))
        .await
        .unwrap()
        .into_inner();
    assert!(before.agents.is_empty());
    // Agents may come and go between the calls; when nothing moved, the
    // counts must agree.
    if before.summary == after.summary {
        assert_eq!(
            after.summary, full.summary,
            "summary-only counts agree with the rows"
        );
    }
    full
}

fn ack(
    agent: &str,
    version: u64,
    digest: &str,
    outcome: pb::ApplyOutcome,
) -> pb::AckAppliedRequest {
    pb::AckAppliedRequest {
        agent_id: agent.into(),
        name: "p".into(),
        label: "production".into(),
        version,
        digest: digest.into(),
        revision: 0,
        outcome: outcome.into(),
        reason: if outcome == pb::ApplyOutcome::Rejected {
            "digest mismatch".into()
        } else {
            String::new()
        },
    }
}

#[tokio::test]
async fn acks_and_fleet_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let v1 = publish(&mut client, "p", "a").await;
    let v2 = publish(&mut client, "p", "b").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();

    let mut request = watch_request(&["p"], &["production"], 0);
    request.agent_id = "agent-1".into();
    request.agent = Some(pb::AgentInfo {
        host: "pod-1".into(),
        sdk: "test".into(),
        version: "1".into(),
        ..Default::default()
    });
    let mut stream = open(&mut client, request).await;
    next_event(&mut stream).await;

    // Watching but nothing applied yet: stale.
    let status = fleet(&mut client, "p", "production").await;
    assert_eq!(
        status.summary.unwrap(),
        pb::FleetSummary {
            in_sync: 0,
            stale: 1,
            disconnected: 0
        }
    );
    let answer = client
        .ack_applied(ack("agent-1", 1, &v1.digest, pb::ApplyOutcome::Applied))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.in_sync, answer.target_version), (true, 1));
    let status = fleet(&mut client, "p", "production").await;
    assert_eq!(
        status.summary.unwrap(),
        pb::FleetSummary {
            in_sync: 1,
            stale: 0,
            disconnected: 0
        }
    );
    let row = &status.agents[0];
    assert_eq!(
        (
            row.agent_id.as_str(),
            row.connected,
            row.applied_version,
            row.in_sync
        ),
        ("agent-1", true, 1, true)
    );
    assert_eq!(row.agent.as_ref().unwrap().host, "pod-1");

    // A promote makes it stale until it acknowledges; a rejection is shown.
    client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap();
    let status = fleet(&mut client, "p", "production").await;
    assert_eq!(status.summary.unwrap().stale, 1);
    client
        .ack_applied(ack("agent-1", 2, &v2.digest, pb::ApplyOutcome::Rejected))
        .await
        .unwrap();
    let row = fleet(&mut client, "p", "production").await.agents.remove(0);
    assert_eq!(
        (
            row.applied_version,
            row.rejected_version,
            row.rejected_reason.as_str()
        ),
        (1, 2, "digest mismatch")
    );
    client
        .ack_applied(ack("agent-1", 2, &v2.digest, pb::ApplyOutcome::Applied))
        .await
        .unwrap();
    assert_eq!(
        fleet(&mut client, "p", "production")
            .await
            .summary
            .unwrap()
            .in_sync,
        1
    );

    // Disconnect: shown as disconnected, still with what it last ran.
    drop(stream);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = fleet(&mut client, "p", "production").await;
        if status.summary.unwrap().disconnected == 1 {
            assert_eq!(status.agents[0].applied_version, 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never shown disconnected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Bad acks are refused, naming the field.
    assert_status(
        client
            .ack_applied(ack("", 1, &v1.digest, pb::ApplyOutcome::Applied))
            .await,
        Code::InvalidArgument,
        "agent_id",
    );
    assert_status(
        client
            .ack_applied(ack("a", 1, "sha256:nope", pb::ApplyOutcome::Applied))
            .await,
        Code::InvalidArgument,
        "digest",
    );
    assert_status(
        client
            .ack_applied(ack("a", 1, &v1.digest, pb::ApplyOutcome::Unspecified))
            .await,
        Code::InvalidArgument,
        "outcome",
    );
    assert_status(
        client
            .ack_applied(ack(
                &"a".repeat(300),
                1,
                &v1.digest,
                pb::ApplyOutcome::Applied,
            ))
            .await,
        Code::InvalidArgument,
        "agent_id: is longer than 256 bytes",
    );
}

#[tokio::test]
async fn departed_agents_are_forgotten_after_the_ttl() {
    let server = TestServer::start_with(|config| config.watch.agent_ttl = Duration::ZERO).await;
    let mut client = server.client().await;
    let v1 = publish(&mut client, "p", "a").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();
    client
        .ack_applied(ack("gone", 1, &v1.digest, pb::ApplyOutcome::Applied))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(fleet(&mut client, "p", "production")
        .await
        .agents
        .is_empty());
}

#[tokio::test]
async fn rollback_wait_returns_when_the_fleet_has_converged() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "agents/support", "a").await;
    publish(&mut client, "agents/support", "b").await;
    client
        .set_label(set_label("agents/support", "production", 1, None))
        .await
        .unwrap();
    client
        .set_label(set_label("agents/support", "production", 2, None))
        .await
        .unwrap();

    // Three CLI agents: watch, verify, acknowledge.
    let mut agents = Vec::new();
    for i in 0..3 {
        let child = support::cli_command(&server.url)
            .args([
                "watch",
                "agents/support",
                "--label",
                "production",
                "--ack",
                "--agent-id",
                &format!("cli-{i}"),
                "--output",
                "json",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        agents.push(KillOnDrop(child));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while fleet(&mut client, "agents/support", "production")
        .await
        .summary
        .unwrap()
        .in_sync
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents never came up in sync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        support::cli_command(&url)
            .args([
                "rollback",
                "agents/support",
                "--label",
                "production",
                "--reason",
                "bad",
                "--wait",
                "--timeout",
                "60s",
                "--output",
                "json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["to_version"], 1);
    assert_eq!(json["fleet"]["converged"], true);
    assert_eq!(json["fleet"]["agents"], 3);
    let status = fleet(&mut client, "agents/support", "production").await;
    assert!(status
        .agents
        .iter()
        .all(|a| a.in_sync && a.applied_version == 1));

    // With agents gone, a promote that nobody applies: --wait times out, exit 4.
    agents.truncate(0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while fleet(&mut client, "agents/support", "production")
        .await
        .summary
        .unwrap()
        .disconnected
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut request = watch_request(&["agents/support"], &["production"], 0);
    request.agent_id = "silent".into();
    let _silent = open(&mut client, request).await;
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        support::cli_command(&url)
            .args([
                "promote",
                "agents/support",
                "2",
                "--label",
                "production",
                "--reason",
                "x",
                "--wait",
                "--timeout",
                "300ms",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    // The move happened: exit 4 (moved, not converged), the move on stdout.
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not converge"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("v1 -> v2"));
}
