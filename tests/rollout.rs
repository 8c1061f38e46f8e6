//! Progressive rollouts over the wire: a healthy candidate walks every step,
//! a guardrail breach aborts, thin evidence extends then aborts, the manual
//! verbs, plain moves refused while a rollout runs, the emergency rollback,
//! a restart mid-rollout, approval on a protected label, per-agent targets
//! in Watch, WatchMany, GetVersion and FleetStatus, and bad input.

mod support;

use promptreg::domain::rollout::bucket;
use promptreg::grpc::pb::{self, watch_response::Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tonic::Code;

const NAME: &str = "support/triage";
const LABEL: &str = "production";
const SALT: &str = "pinned-salt";
/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(90);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.rollout_eval_interval = Duration::from_millis(200)).await
}

/// Two versions, `production` on v1.
async fn two_versions(client: &mut Client) {
    publish(client, NAME, "one").await;
    publish(client, NAME, "two").await;
    client
        .set_label(set_label(NAME, LABEL, 1, None))
        .await
        .expect("promote v1");
}

fn spec(steps: &[u32], bake_seconds: u64) -> pb::RolloutSpec {
    pb::RolloutSpec {
        steps_bp: steps.to_vec(),
        bake_seconds,
        guardrails: vec![pb::Guardrail {
            metric: pb::GuardrailMetric::ErrorRate.into(),
            max: 0.2,
        }],
        min_samples: 20,
        max_extensions: 1,
        salt: SALT.into(),
        ..Default::default()
    }
}

fn start(spec: pb::RolloutSpec) -> pb::StartRolloutRequest {
    pb::StartRolloutRequest {
        name: NAME.into(),
        label: LABEL.into(),
        candidate_version: 2,
        spec: Some(spec),
        reason: "canary v2".into(),
    }
}

fn control(action: pb::RolloutAction) -> pb::ControlRolloutRequest {
    pb::ControlRolloutRequest {
        name: NAME.into(),
        label: LABEL.into(),
        action: action.into(),
        reason: "by hand".into(),
    }
}

async fn status(client: &mut Client) -> pb::RolloutStatus {
    client
        .get_rollout(pb::GetRolloutRequest {
            name: NAME.into(),
            label: LABEL.into(),
        })
        .await
        .expect("GetRollout")
        .into_inner()
}

fn state(status: &pb::RolloutStatus) -> pb::RolloutState {
    status.rollout.as_ref().expect("rollout").state()
}

async fn wait_state(client: &mut Client, want: pb::RolloutState) -> pb::RolloutStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = status(client).await;
        if state(&now) == want {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never became {want:?}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one simulated agent saw: the version it runs and every label move
/// its watch delivered.
#[derive(Debug, Default)]
struct Seen {
    running: u64,
    moves: Vec<pb::LabelMove>,
}

/// A simulated agent: watches the label with its id, acknowledges what it
/// applies, and reports outcomes every 100 ms, failing `error_rate` of
/// its requests on the candidate (v2).
fn agent(url: String, id: String, error_rate_v2: f64) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut client = connect(&url).await;
        let mut stream = client
            .watch(pb::WatchRequest {
                names: vec![NAME.into()],
                labels: vec![LABEL.into()],
                agent_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let mut reporter = client.clone();
        let reporting = out.clone();
        let agent_id = id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let version = reporting.lock().unwrap().running;
                if version == 0 {
                    continue;
                }
                let errors = if version == 2 {
                    (10.0 * error_rate_v2) as u64
                } else {
                    0
                };
                let report = pb::ReportOutcomeRequest {
                    agent_id: agent_id.clone(),
                    name: NAME.into(),
                    label: LABEL.into(),
                    version,
                    requests: 10,
                    errors,
                    ..Default::default()
                };
                if reporter.report_outcome(report).await.is_err() {
                    return;
                }
            }
        });
        while let Ok(Some(message)) = stream.message().await {
            let applied = match message.event {
                Some(Event::Snapshot(s)) => s.labels.first().map(|l| (l.version, l.digest.clone())),
                Some(Event::Changes(batch)) => {
                    let mut last = None;
                    for change in batch.changes {
                        if let Some(pb::change::Kind::LabelMoved(mv)) = change.kind {
                            last = Some((mv.to_version, mv.digest.clone()));
                            out.lock().unwrap().moves.push(mv);
                        }
                    }
                    last
                }
                _ => None,
            };
            if let Some((version, digest)) = applied {
                out.lock().unwrap().running = version;
                let _ = client
                    .ack_applied(pb::AckAppliedRequest {
                        agent_id: id.clone(),
                        name: NAME.into(),
                        label: LABEL.into(),
                        version,
                        digest,
                        outcome: pb::ApplyOutcome::Applied.into(),
                        ..Default::default()
                    })
                    .await;
            }
        }
    });
    seen
}

/// `n` agents (agent-0 ..), once each has applied v1.
async fn fleet_of(
    server: &TestServer,
    n: usize,
    error_rate_v2: f64,
) -> Vec<(String, Arc<Mutex<Seen>>)> {
    let agents: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("agent-{i}");
            (id.clone(), agent(server.url.clone(), id, error_rate_v2))
        })
        .collect();
    wait_until("every agent runs v1", || {
        agents.iter().all(|(_, s)| s.lock().unwrap().running == 1)
    })
    .await;
    agents
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_walks_every_step_and_only_moving_agents_hear_of_it() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    let agents = fleet_of(&server, 40, 0.0).await;
    let started = client
        .start_rollout(start(spec(&[2500, 5000, 10_000], 1)))
        .await
        .expect("start")
        .into_inner();
    let rollout = started.rollout.expect("rollout");
    assert_eq!(
        (rollout.weight_bp, rollout.spec.unwrap().salt.as_str()),
        (2500, SALT)
    );
    let done = wait_state(&mut client, pb::RolloutState::Completed).await;
    let version = resolve(&mut client, NAME, LABEL).await.unwrap();
    assert_eq!(version.version, 2, "the label moved to the candidate");
    // The decision log: start, two advances by the guardrail, completion.
    let log = &done.log;
    assert!(
        log.iter()
            .any(|m| m.kind() == pb::MoveKind::Promote && m.actor == "guardrail"),
        "{log:#?}"
    );
    assert!(
        log.iter().filter(|m| m.actor == "guardrail").count() >= 3,
        "{log:#?}"
    );
    assert!(log
        .iter()
        .all(|m| m.rollout.as_ref().unwrap().id == rollout.id));
    // Every agent ends on v2, having been told exactly once: at the step
    // its bucket came under the weight.
    wait_until("every agent runs v2", || {
        agents.iter().all(|(_, s)| s.lock().unwrap().running == 2)
    })
    .await;
    for (id, seen) in &agents {
        let seen = seen.lock().unwrap();
        let moves: Vec<_> = seen.moves.iter().filter(|m| m.rollout.is_some()).collect();
        assert_eq!(
            moves.len(),
            1,
            "{id} should hear of exactly one move: {moves:#?}"
        );
        let mv = moves[0];
        assert_eq!(
            (mv.kind(), mv.from_version, mv.to_version),
            (pb::MoveKind::Promote, 1, 2)
        );
        let weight = mv.rollout.as_ref().unwrap().weight_bp;
        let b = bucket(SALT, id);
        assert!(b < weight, "{id} (bucket {b}) moved at weight {weight}");
        assert!(
            b >= mv.rollout.as_ref().unwrap().previous_weight_bp,
            "{id} moved late"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_breach_aborts_and_every_canary_agent_goes_back() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    let agents = fleet_of(&server, 20, 0.5).await;
    client
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .expect("start");
    let aborted = wait_state(&mut client, pb::RolloutState::Aborted).await;
    let last = &aborted.log[0];
    assert_eq!(last.actor, "guardrail");
    assert!(last.reason.contains("error_rate<=0.2"), "{}", last.reason);
    assert_eq!(resolve(&mut client, NAME, LABEL).await.unwrap().version, 1);
    wait_until("every agent runs v1 again", || {
        agents.iter().all(|(_, s)| s.lock().unwrap().running == 1)
    })
    .await;
    for (id, seen) in &agents {
        let seen = seen.lock().unwrap();
        let on_canary = bucket(SALT, id) < 5000;
        let kinds: Vec<_> = seen.moves.iter().map(|m| m.kind()).collect();
        let expected = if on_canary {
            vec![pb::MoveKind::Promote, pb::MoveKind::Rollback]
        } else {
            vec![]
        };
        assert_eq!(kinds, expected, "{id}");
    }
    // The abort is in the label's history and the ledger.
    let history = client
        .label_history(pb::LabelHistoryRequest {
            name: NAME.into(),
            label: LABEL.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.moves[0].kind(), pb::MoveKind::Rollout);
    assert_eq!(history.moves[0].actor, "guardrail");
    let audit = client
        .list_audit(pb::ListAuditRequest {
            name: NAME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.actor == "guardrail" && e.reason.contains("breached")),
        "{:#?}",
        audit.entries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_evidence_extends_the_step_then_aborts() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    // No agent at all: nobody is exposed, nothing is reported.
    client
        .start_rollout(start(spec(&[5000, 10_000], 1)))
        .await
        .expect("start");
    let aborted = wait_state(&mut client, pb::RolloutState::Aborted).await;
    let reasons: Vec<&str> = aborted.log.iter().map(|m| m.reason.as_str()).collect();
    assert!(
        reasons[0].contains("inconclusive after 1 extension"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("extension 1 of 1"), "{reasons:?}");
    assert_eq!(resolve(&mut client, NAME, LABEL).await.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_verbs_and_plain_moves_refused_while_a_rollout_runs() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    client
        .start_rollout(start(spec(&[1000, 5000, 10_000], 3600)))
        .await
        .expect("start");
    assert_status(
        client.set_label(set_label(NAME, LABEL, 2, None)).await,
        Code::FailedPrecondition,
        "under rollout",
    );
    assert_status(
        client.rollback(rollback(NAME, LABEL, None)).await,
        Code::FailedPrecondition,
        "rollout",
    );
    assert_status(
        client
            .remove_label(pb::RemoveLabelRequest {
                name: NAME.into(),
                label: LABEL.into(),
                reason: "no".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "rollout",
    );
    assert_status(
        client.start_rollout(start(spec(&[10_000], 60))).await,
        Code::FailedPrecondition,
        "abort or finish it",
    );
    let paused = client
        .control_rollout(control(pb::RolloutAction::Pause))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.rollout.unwrap().state(), pb::RolloutState::Paused);
    assert_status(
        client
            .control_rollout(control(pb::RolloutAction::Pause))
            .await,
        Code::FailedPrecondition,
        "paused already",
    );
    client
        .control_rollout(control(pb::RolloutAction::Resume))
        .await
        .unwrap();
    let advanced = client
        .control_rollout(control(pb::RolloutAction::Advance))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(advanced.rollout.unwrap().weight_bp, 5000);
    let promoted = client
        .control_rollout(control(pb::RolloutAction::Promote))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        promoted.rollout.unwrap().state(),
        pb::RolloutState::Completed
    );
    assert_eq!(resolve(&mut client, NAME, LABEL).await.unwrap().version, 2);
    assert_status(
        client
            .control_rollout(control(pb::RolloutAction::Abort))
            .await,
        Code::FailedPrecondition,
        "has ended",
    );
    // Ended: plain moves work again, and a rollback goes back to v1.
    let back = client
        .rollback(rollback(NAME, LABEL, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.to_version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_rollback_aborts_the_rollout() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    let id = client
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
        .id;
    let moved = client
        .rollback(pb::RollbackRequest {
            emergency: true,
            ..rollback(NAME, LABEL, None)
        })
        .await
        .expect("emergency rollback")
        .into_inner();
    assert_eq!(
        (
            moved.rollout_aborted,
            moved.from_version,
            moved.to_version,
            moved.emergency
        ),
        (id, 2, 1, true)
    );
    let now = status(&mut client).await;
    assert_eq!(state(&now), pb::RolloutState::Aborted);
    assert_eq!(now.log[0].actor, "admin");
    assert_eq!(resolve(&mut client, NAME, LABEL).await.unwrap().version, 1);
}

/// An agent id whose bucket under `SALT` is below (or not) `weight`.
fn agent_on(candidate: bool, weight: u32) -> String {
    (0..)
        .map(|i| format!("probe-{i}"))
        .find(|id| (bucket(SALT, id) < weight) == candidate)
        .unwrap()
}

async fn resolve_for(client: &mut Client, agent_id: &str) -> pb::GetVersionResponse {
    client
        .get_version(pb::GetVersionRequest {
            name: NAME.into(),
            selector: Some(pb::get_version_request::Selector::Label(LABEL.into())),
            agent_id: agent_id.into(),
            ..Default::default()
        })
        .await
        .expect("GetVersion")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_is_sticky_across_a_restart_and_resolves_per_agent() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    client
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap();
    let (on, off) = (agent_on(true, 5000), agent_on(false, 5000));
    let before = resolve_for(&mut client, &on).await;
    assert_eq!(
        (before.version.as_ref().unwrap().version, before.arm()),
        (2, pb::Arm::Candidate)
    );
    let stable = resolve_for(&mut client, &off).await;
    assert_eq!(
        (stable.version.as_ref().unwrap().version, stable.arm()),
        (1, pb::Arm::Stable)
    );
    assert_eq!(
        resolve(&mut client, NAME, LABEL).await.unwrap().version,
        1,
        "no agent id: stable"
    );

    let server = server.restart().await;
    let mut client = server.client().await;
    let now = status(&mut client).await;
    let rollout = now.rollout.unwrap();
    assert_eq!(
        (rollout.state(), rollout.weight_bp),
        (pb::RolloutState::Running, 5000)
    );
    assert_eq!(rollout.spec.unwrap().salt, SALT);
    let after = resolve_for(&mut client, &on).await;
    assert_eq!(
        (after.version.as_ref().unwrap().version, after.arm()),
        (2, pb::Arm::Candidate)
    );
    assert_eq!(resolve_for(&mut client, &off).await.arm(), pb::Arm::Stable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_different_arms_on_one_watch_many_stream() {
    use pb::watch_many_request::Request as Command;
    use pb::watch_many_response::Event as Out;
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    let (send, receive) = tokio::sync::mpsc::channel(16);
    let mut stream = client
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
        .unwrap()
        .into_inner();
    let (on, off) = (agent_on(true, 5000), agent_on(false, 5000));
    for (watch_id, agent_id) in [(1, on.as_str()), (2, off.as_str()), (3, "")] {
        let open = pb::WatchOpen {
            watch_id,
            watch: Some(pb::WatchRequest {
                names: vec![NAME.into()],
                labels: vec![LABEL.into()],
                agent_id: agent_id.into(),
                ..Default::default()
            }),
        };
        send.send(pb::WatchManyRequest {
            request: Some(Command::Open(open)),
        })
        .await
        .unwrap();
    }
    // Read until every watch has its snapshot.
    let mut moves: BTreeMap<u64, Vec<pb::LabelMove>> = BTreeMap::new();
    let mut snapshots = 0;
    while snapshots < 3 {
        let m = read_many(&mut stream).await;
        if let Some(Out::Response(r)) = &m.event {
            if let Some(Event::Snapshot(s)) = &r.event {
                if s.complete {
                    snapshots += m.watch_ids.len();
                }
            }
        }
    }
    client
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap();
    // Then the start reaches the candidate agent and the observer; the
    // stable agent hears nothing until a later revision.
    publish(&mut client, "other/prompt", "x").await;
    client
        .control_rollout(control(pb::RolloutAction::Abort))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while moves.get(&1).map_or(0, Vec::len) < 2 || moves.get(&3).map_or(0, Vec::len) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{moves:#?}");
        let m = read_many(&mut stream).await;
        if let Some(Out::Response(r)) = m.event {
            if let Some(Event::Changes(batch)) = r.event {
                for change in batch.changes {
                    if let Some(pb::change::Kind::LabelMoved(mv)) = change.kind {
                        for id in &m.watch_ids {
                            moves.entry(*id).or_default().push(mv.clone());
                        }
                    }
                }
            }
        }
    }
    let kinds = |id| {
        moves
            .get(&id)
            .map(|m| {
                m.iter()
                    .map(|x| (x.kind(), x.to_version))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        kinds(1),
        vec![(pb::MoveKind::Promote, 2), (pb::MoveKind::Rollback, 1)]
    );
    assert_eq!(kinds(2), vec![], "the stable agent's arm never changed");
    assert_eq!(
        kinds(3),
        vec![(pb::MoveKind::Rollout, 1), (pb::MoveKind::Rollout, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_and_the_fleet_view_show_each_agents_arm() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    client
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap();
    let on = agent_on(true, 5000);
    let seen = agent(server.url.clone(), on.clone(), 0.0);
    wait_until("the candidate agent runs v2 from its snapshot", || {
        seen.lock().unwrap().running == 2
    })
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let fleet = client
            .fleet_status(pb::FleetStatusRequest {
                name: NAME.into(),
                label: LABEL.into(),
                summary_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        let row = fleet.agents.iter().find(|a| a.agent_id == on);
        if let Some(row) = row.filter(|r| r.applied_version == 2) {
            assert_eq!(
                (row.arm(), row.target_version, row.in_sync),
                (pb::Arm::Candidate, 2, true)
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{fleet:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = status(&mut client).await;
    let candidate = now
        .arms
        .iter()
        .find(|a| a.arm() == pb::Arm::Candidate)
        .unwrap();
    assert_eq!((candidate.agents_assigned, candidate.version), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_label_starts_its_rollout_only_once_approved() {
    let server = server().await;
    let mut admin = server.client().await;
    two_versions(&mut admin).await;
    admin
        .set_policy(pb::SetPolicyRequest {
            label: LABEL.into(),
            approvals: 1,
            reason: "four eyes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = admin
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap()
        .into_inner();
    let request = answer.request.expect("a promotion request");
    assert_eq!(request.kind(), pb::MoveKind::Rollout);
    assert!(answer.rollout.is_none());
    assert_status(
        admin
            .get_rollout(pb::GetRolloutRequest {
                name: NAME.into(),
                label: LABEL.into(),
            })
            .await,
        Code::NotFound,
        "no rollout",
    );
    let mut approver = server.client_as("bob", pb::Role::Approver, &[], &[]).await;
    let reviewed = approver
        .approve_request(pb::ApproveRequestRequest {
            id: request.id,
            reason: "ok".into(),
        })
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(
        reviewed.request.unwrap().state(),
        pb::RequestState::Approved
    );
    let now = status(&mut admin).await;
    let rollout = now.rollout.unwrap();
    assert_eq!(
        (rollout.state(), rollout.request_id),
        (pb::RolloutState::Running, request.id)
    );
    assert_eq!(now.log[0].approvers, vec!["bob".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    let cases = [
        (spec(&[5000, 1000, 10_000], 60), "spec.steps_bp[1]"),
        (spec(&[5000], 60), "spec.steps_bp"),
        (spec(&[10_000], 0), "spec.bake_seconds"),
        (
            pb::RolloutSpec {
                salt: "has space".into(),
                ..spec(&[10_000], 60)
            },
            "spec.salt",
        ),
        (
            pb::RolloutSpec {
                guardrails: vec![pb::Guardrail {
                    metric: 0,
                    max: 0.1,
                }],
                ..spec(&[10_000], 60)
            },
            "spec.guardrails[0].metric",
        ),
    ];
    for (spec, field) in cases {
        assert_status(
            client.start_rollout(start(spec)).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        client
            .start_rollout(pb::StartRolloutRequest {
                spec: None,
                ..start(spec(&[10_000], 60))
            })
            .await,
        Code::InvalidArgument,
        "spec",
    );
    assert_status(
        client
            .start_rollout(pb::StartRolloutRequest {
                label: "latest".into(),
                ..start(spec(&[10_000], 60))
            })
            .await,
        Code::InvalidArgument,
        "latest",
    );
    assert_status(
        client
            .start_rollout(pb::StartRolloutRequest {
                candidate_version: 1,
                ..start(spec(&[10_000], 60))
            })
            .await,
        Code::FailedPrecondition,
        "already points to version 1",
    );
    assert_status(
        client
            .start_rollout(pb::StartRolloutRequest {
                candidate_version: 9,
                ..start(spec(&[10_000], 60))
            })
            .await,
        Code::NotFound,
        "9",
    );
    let report = pb::ReportOutcomeRequest {
        agent_id: "a".into(),
        name: NAME.into(),
        label: LABEL.into(),
        version: 1,
        requests: 5,
        errors: 6,
        ..Default::default()
    };
    assert_status(
        client.report_outcome(report.clone()).await,
        Code::InvalidArgument,
        "errors",
    );
    assert_status(
        client
            .report_outcome(pb::ReportOutcomeRequest {
                errors: 0,
                latency_buckets: vec![1, 2],
                ..report.clone()
            })
            .await,
        Code::InvalidArgument,
        "latency_buckets",
    );
    assert_status(
        client
            .report_outcome(pb::ReportOutcomeRequest {
                name: "no/such".into(),
                errors: 0,
                ..report.clone()
            })
            .await,
        Code::NotFound,
        "no/such",
    );
    let dropped = client
        .report_outcome(pb::ReportOutcomeRequest {
            errors: 0,
            ..report
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dropped.rollout_id, dropped.arm()),
        (0, pb::Arm::Unspecified)
    );
    assert_status(
        client
            .control_rollout(pb::ControlRolloutRequest {
                action: 0,
                ..control(pb::RolloutAction::Pause)
            })
            .await,
        Code::InvalidArgument,
        "action",
    );
    assert_status(
        client
            .control_rollout(control(pb::RolloutAction::Pause))
            .await,
        Code::NotFound,
        "no rollout",
    );
}

/// The next WatchMany message, waited for patiently.
async fn read_many(stream: &mut tonic::Streaming<pb::WatchManyResponse>) -> pb::WatchManyResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a message")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_holds_a_running_rollout_but_never_its_abort() {
    let server = server().await;
    let mut client = server.client().await;
    two_versions(&mut client).await;
    client
        .start_rollout(start(spec(&[1000, 10_000], 3600)))
        .await
        .expect("start");
    let in_an_hour =
        promptreg::grpc::timestamp::to_timestamp(promptreg::time::now_micros() + 3_600_000_000);
    client
        .freeze_label(pb::FreezeLabelRequest {
            prefix: "support/".into(),
            label: LABEL.into(),
            until: Some(in_an_hour),
            reason: "holiday change freeze".into(),
        })
        .await
        .unwrap();
    for action in [pb::RolloutAction::Advance, pb::RolloutAction::Promote] {
        assert_status(
            client.control_rollout(control(action)).await,
            Code::FailedPrecondition,
            "holiday change freeze",
        );
    }
    let held = status(&mut client).await.rollout.unwrap();
    assert_eq!(
        (held.state(), held.weight_bp),
        (pb::RolloutState::Running, 1000)
    );
    let aborted = client
        .control_rollout(control(pb::RolloutAction::Abort))
        .await
        .expect("an abort passes a freeze")
        .into_inner();
    assert_eq!(aborted.rollout.unwrap().state(), pb::RolloutState::Aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_promotion_request_cannot_complete_under_a_rollout() {
    let server = server().await;
    let mut admin = server.client().await;
    two_versions(&mut admin).await;
    publish(&mut admin, NAME, "three").await;
    admin
        .set_policy(pb::SetPolicyRequest {
            label: LABEL.into(),
            approvals: 1,
            reason: "four eyes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A plain promotion request to v3, then a rollout to v2 (approved first).
    let plain = admin
        .set_label(set_label(NAME, LABEL, 3, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .expect("a promotion request for v3");
    let rollout_request = admin
        .start_rollout(start(spec(&[5000, 10_000], 3600)))
        .await
        .unwrap()
        .into_inner()
        .request
        .expect("a promotion request for the rollout");
    let mut approver = server.client_as("bob", pb::Role::Approver, &[], &[]).await;
    approver
        .approve_request(pb::ApproveRequestRequest {
            id: rollout_request.id,
            reason: "ok".into(),
        })
        .await
        .expect("approve the rollout");
    assert_status(
        approver
            .approve_request(pb::ApproveRequestRequest {
                id: plain.id,
                reason: "ok".into(),
            })
            .await,
        Code::FailedPrecondition,
        "under rollout",
    );
    assert_eq!(resolve(&mut admin, NAME, LABEL).await.unwrap().version, 1);
    let running = status(&mut admin).await.rollout.unwrap();
    assert_eq!(running.state(), pb::RolloutState::Running);
}
