//! The registry on a real three-member etcd cluster (`serve --store etcd`):
//! what a member's loss, the leader's loss and a lost quorum do to it.
//! The registry and Watch tests also run on etcd as a whole
//! (`PROMPTREG_TEST_STORE=etcd cargo test --test registry …`, run by
//! `.ci/run`).

mod support;

use promptreg::grpc::pb;
use promptreg::registry::StoreBackend;
use std::time::{Duration, Instant};
use support::etcd::{unique_prefix, EtcdCluster};
use support::*;
use tonic::Code;

/// How long a recovery (an election, members coming back) may take on a
/// loaded machine.
const PATIENCE: Duration = Duration::from_secs(90);

async fn server_on(cluster: &EtcdCluster) -> TestServer {
    let config = cluster.config(&unique_prefix());
    TestServer::start_with(move |c| c.store = StoreBackend::Etcd(config)).await
}

/// A server on `cluster` (its own prefix) with support/triage v1 in
/// production, and an admin client of it.
async fn serving_v1_in_production(cluster: &EtcdCluster) -> (TestServer, Client) {
    let server = server_on(cluster).await;
    let mut client = server.client().await;
    let first = publish(&mut client, "support/triage", "v1 text").await;
    client
        .set_label(set_label(
            "support/triage",
            "production",
            first.version,
            None,
        ))
        .await
        .expect("promote");
    (server, client)
}

/// Publishes until it is accepted (writes answer UNAVAILABLE while the
/// cluster elects a leader); the answer.
async fn publish_until_accepted(
    client: &mut Client,
    name: &str,
    text: &str,
) -> pb::PublishVersionResponse {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.publish_version(publish_text(name, text, &[])).await {
            Ok(answer) => return answer.into_inner(),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("publish failed: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_after_the_leader_is_lost_and_a_restart_keeps_everything() {
    let mut cluster = tokio::task::block_in_place(|| EtcdCluster::start(3));
    let (server, mut client) = serving_v1_in_production(&cluster).await;

    tokio::task::block_in_place(|| {
        let leader = cluster.wait_for_leader();
        cluster.kill(leader);
    });
    let second = publish_until_accepted(&mut client, "support/triage", "v2 text").await;
    assert_eq!(
        (second.version, second.revision),
        (2, 3),
        "no revision lost or repeated"
    );
    client
        .set_label(set_label("support/triage", "production", 2, Some(1)))
        .await
        .expect("promote after the election");

    // A new server process state over the same prefix: everything is in etcd.
    let server = server.restart().await;
    let mut client = server.client().await;
    let production = resolve(&mut client, "support/triage", "production")
        .await
        .expect("resolves after restart");
    assert_eq!(production.version, 2);
    let history = client
        .label_history(pb::LabelHistoryRequest {
            name: "support/triage".into(),
            label: "production".into(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.moves.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_writes_are_unavailable_reads_serve_and_all_recovers() {
    let mut cluster = tokio::task::block_in_place(|| EtcdCluster::start(3));
    let (_server, mut client) = serving_v1_in_production(&cluster).await;

    tokio::task::block_in_place(|| {
        cluster.kill(1);
        cluster.kill(2);
    });
    // A write is refused, naming the cluster, within the store's timeout.
    let refused = client
        .publish_version(publish_text("support/triage", "v2 text", &[]))
        .await
        .expect_err("no quorum, no write");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("etcd"), "{}", refused.message());
    // What was committed is still read.
    let production = resolve(&mut client, "support/triage", "production")
        .await
        .expect("reads serve without a quorum");
    assert_eq!(production.version, 1);

    tokio::task::block_in_place(|| {
        cluster.restart(1);
        cluster.restart(2);
        cluster.wait_for_leader();
    });
    // The refused write may have been committed once the quorum returned
    // (etcd keeps the proposal); either way the next one follows the head.
    let next = publish_until_accepted(&mut client, "support/triage", "v3 text").await;
    let versions = client
        .list_versions(pb::ListVersionsRequest {
            name: "support/triage".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .versions;
    assert_eq!(versions.len() as u64, next.version, "versions are gapless");
    assert!(
        next.revision == next.version + 1,
        "one revision per write: {next:?}"
    );
}

/// Copies a data directory's signing keys (they are not in backups).
fn copy_keys(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    let (from, to) = (from.join("keys"), to.join("keys"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&to)
        .unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_backup_restored_into_etcd_answers_as_the_original() {
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start(3));
    let original = TestServer::start().await;
    let mut client = original.client().await;
    // More records than one etcd transaction holds, to cross batches.
    for n in 1..=60 {
        publish(
            &mut client,
            &format!("fleet/p{:02}", n % 7),
            &format!("text {n}"),
        )
        .await;
    }
    for (label, version) in [("staging", 3), ("production", 2), ("production", 4)] {
        client
            .set_label(set_label("fleet/p01", label, version, None))
            .await
            .expect("promote");
    }
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    let file = original.data_dir().with_file_name("promptreg.backup");
    std::fs::write(&file, &bytes).unwrap();

    let prefix = unique_prefix();
    let endpoints = cluster.endpoints().join(",");
    let restore = |extra: &[&str]| {
        std::process::Command::new(binary())
            .arg("restore")
            .arg(&file)
            .args([
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--etcd-prefix",
                &prefix,
            ])
            .args(extra)
            .output()
            .expect("restore runs")
    };
    let done = tokio::task::block_in_place(|| restore(&[]));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("restored revision 63"));
    // Never over a prefix that holds anything.
    let again = tokio::task::block_in_place(|| restore(&[]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    let config = cluster.config(&prefix);
    let keys_from = original.data_dir().to_path_buf();
    let restored = TestServer::start_with(move |c| {
        copy_keys(&keys_from, &c.data_dir);
        c.store = StoreBackend::Etcd(config);
    })
    .await;
    use_token(&restored.url, &original.admin_token());
    let mut on_etcd = restored.client().await;
    for name in ["fleet/p01", "fleet/p03"] {
        let list = |name: &str| pb::ListVersionsRequest {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(
            client.list_versions(list(name)).await.unwrap().into_inner(),
            on_etcd
                .list_versions(list(name))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    assert_eq!(
        resolve(&mut client, "fleet/p01", "production")
            .await
            .unwrap(),
        resolve(&mut on_etcd, "fleet/p01", "production")
            .await
            .unwrap(),
    );
    let history = pb::LabelHistoryRequest {
        name: "fleet/p01".into(),
        label: "production".into(),
        ..Default::default()
    };
    assert_eq!(
        client
            .label_history(history.clone())
            .await
            .unwrap()
            .into_inner(),
        on_etcd.label_history(history).await.unwrap().into_inner(),
    );
    // And it carries on from the same head.
    let next = publish(&mut on_etcd, "fleet/p01", "after the move").await;
    assert_eq!(next.revision, 64);
}

#[test]
fn store_flags_that_cannot_work_are_refused_with_a_clear_message() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let dir = dir.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", support::metrics::free_port());
    for (args, needle) in [
        (
            vec![
                "serve",
                "--data-dir",
                dir,
                "--listen",
                &listen,
                "--store",
                "etcd",
            ],
            "--store etcd needs --etcd-endpoints",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                dir,
                "--listen",
                &listen,
                "--etcd-endpoints",
                "127.0.0.1:2379",
            ],
            "need --store etcd",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                dir,
                "--listen",
                &listen,
                "--store",
                "etcd",
                "--etcd-endpoints",
                "127.0.0.1:2379",
                "--max-template-bytes",
                "2000000",
            ],
            "with --store etcd the most is",
        ),
        (
            vec!["restore", "nothing.backup"],
            "cannot read nothing.backup",
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// The next Watch event, waiting generously.
async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
) -> Option<pb::watch_response::Event> {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event within the timeout")
        .expect("the stream is healthy")
        .and_then(|response| response.event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_prefix_see_each_others_writes_and_tokens() {
    use pb::watch_response::Event;
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start(3));
    let prefix = unique_prefix();
    let (config_a, config_b) = (cluster.config(&prefix), cluster.config(&prefix));
    let a = TestServer::start_with(move |c| c.store = StoreBackend::Etcd(config_a)).await;
    // Every server of a prefix signs with the same key (in production:
    // --signing-key from one secret).
    let keys_from = a.data_dir().to_path_buf();
    let b = TestServer::start_with(move |c| {
        copy_keys(&keys_from, &c.data_dir);
        c.store = StoreBackend::Etcd(config_b);
    })
    .await;
    use_token(&b.url, &a.admin_token());
    let mut on_a = a.client().await;

    // A token made on A authenticates on B; B's watch sees A's writes.
    let reader = a.token_as("fleet-reader", pb::Role::Agent, &[], &[]).await;
    let endpoint = tonic::transport::Endpoint::from_shared(b.url.clone()).unwrap();
    let mut reader_on_b = client_with(endpoint.connect().await.unwrap(), Some(&reader));
    let deadline = Instant::now() + PATIENCE;
    let mut stream = loop {
        let request = pb::WatchRequest {
            names: vec!["support/triage".into()],
            labels: vec!["production".into()],
            ..Default::default()
        };
        match reader_on_b.watch(request).await {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("watch on B: {status:?}"),
        }
    };
    let first = publish(&mut on_a, "support/triage", "v1 text").await;
    let moved = on_a
        .set_label(set_label(
            "support/triage",
            "production",
            first.version,
            None,
        ))
        .await
        .expect("promote on A")
        .into_inner();
    let seen = loop {
        match next_event(&mut stream).await {
            Some(Event::Changes(batch)) if batch.revision >= moved.revision => break batch,
            Some(_) => {}
            None => panic!("B's watch ended"),
        }
    };
    assert_eq!(
        seen.revision, moved.revision,
        "B delivers A's revision under its own number"
    );
    // B reads it too, and writes after it.
    let mut on_b = b.client().await;
    assert_eq!(
        resolve(&mut on_b, "support/triage", "production")
            .await
            .unwrap()
            .version,
        1
    );
    let second = publish(&mut on_b, "support/triage", "v2 text").await;
    assert_eq!(second.revision, moved.revision + 1);
    let third = publish(&mut on_a, "support/triage", "v3 text").await;
    assert_eq!((third.version, third.revision), (3, moved.revision + 2));

    // Compare-and-set across servers: one winner.
    let (won_a, won_b) = tokio::join!(
        on_a.set_label(set_label("support/triage", "production", 2, Some(1))),
        on_b.set_label(set_label("support/triage", "production", 3, Some(1))),
    );
    let wins = [won_a.is_ok(), won_b.is_ok()];
    assert_eq!(
        wins.iter().filter(|w| **w).count(),
        1,
        "{won_a:?} {won_b:?}"
    );
    for lost in [won_a.err(), won_b.err()].into_iter().flatten() {
        assert!(
            matches!(lost.code(), Code::FailedPrecondition | Code::Aborted),
            "{lost:?}"
        );
    }

    // Revoking the token on A ends the watch it opened on B.
    on_a.revoke_token(pb::RevokeTokenRequest {
        name: "fleet-reader".into(),
        reason: "rotated".into(),
    })
    .await
    .expect("revoke on A");
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("B ends the revoked watch");
    if let Some(status) = ended {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
}
