//! The README's failure-mode table, checked: each failure that can be
//! induced on one machine is induced against the real binary, and the signal
//! its row names (a metric on `/metrics`, a log line, an answer) must appear.
//! The alert rules in deploy/observability/alerts.yml read these metrics.

mod support;

use promptreg::grpc::pb::{self, watch_response::Event};
use std::path::Path;
use std::time::{Duration, Instant};
use support::metrics::{free_port, sample, scrape};
use support::*;
use tonic::Code;

const NAME: &str = "support/triage";
const LABEL: &str = "production";
/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(90);

/// The real server with metrics on; its metrics address.
fn serve(data_dir: &Path, extra: &[&str]) -> (ServerProcess, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-listen", metrics.as_str(), "--log-format", "json"];
    args.extend_from_slice(extra);
    (ServerProcess::start(data_dir, &args), metrics)
}

/// Scrapes until `metric` with `labels` has a value `wanted` accepts.
fn wait_for_sample(metrics: &str, metric: &str, labels: &[&str], wanted: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = scrape(metrics);
        if sample(&body, metric, labels).is_some_and(&wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}{labels:?} never took the expected value; /metrics:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn logged(server: &ServerProcess, words: &str) -> bool {
    server.stderr.lock().unwrap().contains(words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_shows_in_writes_refused_health_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // A first start makes the admin token; then no disk here has an exabyte
    // free: the free-space rule refuses every write at once.
    ServerProcess::start(dir.path(), &[]).terminate();
    let (server, metrics) = serve(dir.path(), &["--min-free-space", "1000000000GiB"]);
    let mut client = connect(&server.url).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.publish_version(publish_text(NAME, "hi", &[])).await {
            Err(status) if status.code() == Code::Unavailable => {
                assert!(status.message().contains("--min-free-space"), "{status:?}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "a publish on a full disk was not refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_sample(
        &metrics,
        "promptreg_writes_refused",
        &["reason=\"low_space\""],
        |v| v == 1.0,
    );
    assert!(logged(&server, "writes refused"));
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_count_as_unauthenticated_and_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = serve(dir.path(), &[]);
    let mut admin = connect(&server.url).await;
    publish(&mut admin, NAME, "one").await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stranger = client_with(channel.clone(), Some("prt_not_a_real_token"));
    assert_status(
        stranger.set_label(set_label(NAME, LABEL, 1, None)).await,
        Code::Unauthenticated,
        "",
    );
    let reader = admin
        .create_token(pb::CreateTokenRequest {
            name: "dashboards".into(),
            bindings: vec![pb::Binding {
                role: pb::Role::Reader.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut reader = client_with(channel, Some(&reader.secret));
    assert_status(
        reader.set_label(set_label(NAME, LABEL, 1, None)).await,
        Code::PermissionDenied,
        "deployer",
    );
    wait_for_sample(&metrics, "promptreg_unauthenticated_total", &[], |v| {
        v >= 1.0
    });
    wait_for_sample(&metrics, "promptreg_denied_total", &[], |v| v >= 1.0);
    server.kill();
}

/// Watches the label as `agent_id` and acknowledges every target it gets
/// with `outcome`; returns once the first one is acknowledged.
async fn agent(url: &str, agent_id: &str, outcome: pb::ApplyOutcome) {
    let mut client = connect(url).await;
    let mut stream = client
        .watch(pb::WatchRequest {
            names: vec![NAME.into()],
            labels: vec![LABEL.into()],
            agent_id: agent_id.into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let agent_id = agent_id.to_string();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        while let Ok(Some(message)) = stream.message().await {
            let target = match message.event {
                Some(Event::Snapshot(s)) => s.labels.first().map(|l| (l.version, l.digest.clone())),
                Some(Event::Changes(batch)) => {
                    batch.changes.into_iter().find_map(|c| match c.kind {
                        Some(pb::change::Kind::LabelMoved(mv)) => Some((mv.to_version, mv.digest)),
                        _ => None,
                    })
                }
                _ => None,
            };
            let Some((version, digest)) = target else {
                continue;
            };
            let _ = client
                .ack_applied(pb::AckAppliedRequest {
                    agent_id: agent_id.clone(),
                    name: NAME.into(),
                    label: LABEL.into(),
                    version,
                    digest,
                    outcome: outcome.into(),
                    reason: "signature does not verify".into(),
                    ..Default::default()
                })
                .await;
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(PATIENCE, first_rx)
        .await
        .expect("the agent's first acknowledgement")
        .expect("the agent task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_rejects_a_version_shows_stale_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = serve(dir.path(), &[]);
    let mut client = connect(&server.url).await;
    publish(&mut client, NAME, "one").await;
    client
        .set_label(set_label(NAME, LABEL, 1, None))
        .await
        .unwrap();
    agent(&server.url, "agent-0", pb::ApplyOutcome::Rejected).await;
    // The fleet gauges are published every 5 s.
    wait_for_sample(
        &metrics,
        "promptreg_fleet_agents",
        &["state=\"stale\"", "label=\"production\""],
        |v| v == 1.0,
    );
    let fleet = client
        .fleet_status(pb::FleetStatusRequest {
            name: NAME.into(),
            label: LABEL.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{fleet:?}");
    assert!(text.contains("signature does not verify"), "{text}");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_abort_is_counted_and_its_reason_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = serve(dir.path(), &["--rollout-eval-interval", "200ms"]);
    let mut client = connect(&server.url).await;
    publish(&mut client, NAME, "one").await;
    publish(&mut client, NAME, "two").await;
    client
        .set_label(set_label(NAME, LABEL, 1, None))
        .await
        .unwrap();
    agent(&server.url, "agent-0", pb::ApplyOutcome::Applied).await;
    client
        .start_rollout(pb::StartRolloutRequest {
            name: NAME.into(),
            label: LABEL.into(),
            candidate_version: 2,
            spec: Some(pb::RolloutSpec {
                steps_bp: vec![10_000],
                bake_seconds: 3600,
                guardrails: vec![pb::Guardrail {
                    metric: pb::GuardrailMetric::ErrorRate.into(),
                    max: 0.05,
                }],
                min_samples: 20,
                ..Default::default()
            }),
            reason: "blue-green v2".into(),
        })
        .await
        .expect("start");
    let deadline = Instant::now() + PATIENCE;
    let reason = loop {
        let _ = client
            .report_outcome(pb::ReportOutcomeRequest {
                agent_id: "agent-0".into(),
                name: NAME.into(),
                label: LABEL.into(),
                version: 2,
                requests: 50,
                errors: 25,
                ..Default::default()
            })
            .await;
        let status = client
            .get_rollout(pb::GetRolloutRequest {
                name: NAME.into(),
                label: LABEL.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let rollout = status.rollout.unwrap();
        if rollout.state() == pb::RolloutState::Aborted {
            break status.log[0].clone();
        }
        assert!(Instant::now() < deadline, "never aborted: {rollout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reason.actor, "guardrail");
    assert!(reason.reason.contains("breached"), "{reason:?}");
    wait_for_sample(
        &metrics,
        "promptreg_rollout_decisions_total",
        &["decision=\"abort\"", "actor=\"guardrail\""],
        |v| v >= 1.0,
    );
    wait_for_sample(
        &metrics,
        "promptreg_rollout_state",
        &["state=\"aborted\""],
        |v| v == 1.0,
    );
    assert!(logged(&server, "rollout decision"));
    server.kill();
}
