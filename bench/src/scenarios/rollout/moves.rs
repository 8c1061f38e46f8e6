//! The timed moves of the `rollout` scenario: promote fan-out to the fleet
//! with and without a rollout active, a step from 10% to 50% until every
//! newly assigned agent has acknowledged the candidate, and a guardrail
//! breach until every canary agent is back on the stable version and has
//! acknowledged it.
//!
//! Times are wall-clock (Unix nanoseconds) on both sides: the agents stamp
//! each acknowledgement, and the abort's decision time is the one the server
//! recorded on the rollout's label move, so "after the decision" is measured
//! from the server's own clock on the same machine.

use super::{report, rollout_status, unix_ns, Fleet, LABEL, NAME, OTHER, REQUESTS_PER_REPORT};
use crate::scenarios::{set_label, wait_until};
use crate::server::Conn;
use crate::stats::Samples;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The guardrail's name for itself in label history.
const GUARDRAIL: &str = "guardrail";

/// One fan-out run: every delivery, and each promote's slowest one.
#[derive(Default)]
pub struct Fanout {
    pub deliveries: Samples,
    pub last: Samples,
}

impl Fanout {
    pub fn extend(&mut self, other: Fanout) {
        self.deliveries.extend(other.deliveries);
        self.last.extend(other.last);
    }

    pub fn summary(&mut self) -> Value {
        json!({
            "promotes": self.last.len(),
            "deliveries": self.deliveries.summary(),
            "last_agent": self.last.summary(),
        })
    }
}

/// `promotes` moves of `OTHER`'s label, alternating between its two
/// versions, one after another; per move, the time from sending SetLabel to
/// each agent receiving it. The agents watch `NAME` (under rollout, or not)
/// and `OTHER` on the same stream, so a rollout's per-agent targets are on
/// the path of every delivery.
pub async fn fanout(
    admin: &mut RegistryClient<Conn>,
    fleet: &Fleet,
    versions: (u64, u64),
    current: &mut u64,
    promotes: usize,
) -> anyhow::Result<Fanout> {
    let n = fleet.n;
    let mut deliveries = Samples::new();
    let mut last = Samples::new();
    for m in 0..promotes {
        let version = if *current == versions.0 {
            versions.1
        } else {
            versions.0
        };
        let base = fleet.other_received.load(Ordering::Relaxed);
        let sent = unix_ns();
        let moved = set_label(admin, OTHER, LABEL, version).await?;
        anyhow::ensure!(moved.changed, "promote {m} of {OTHER} did not move it");
        *current = version;
        wait_until(
            "every agent's event",
            Duration::from_secs(60),
            Duration::from_micros(500),
            || fleet.other_received.load(Ordering::Relaxed) >= base + n,
        )
        .await?;
        let mut worst = 0;
        for at in fleet.other_at.iter() {
            let took = at.load(Ordering::Relaxed).saturating_sub(sent);
            worst = worst.max(took);
            deliveries.push(Duration::from_nanos(took));
        }
        last.push(Duration::from_nanos(worst));
        // A short gap so one promote's tail does not overlap the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = fleet.other_received.load(Ordering::Relaxed);
    anyhow::ensure!(
        extra.is_multiple_of(n),
        "{OTHER}: {extra} deliveries to {n} agents, not a whole number of promotes"
    );
    Ok(Fanout { deliveries, last })
}

/// The operator's `advance` from the first step to the second; the time
/// from sending it until every newly assigned agent has acknowledged the
/// candidate (stamped by the agents), checked against GetRollout.
pub async fn step(
    admin: &mut RegistryClient<Conn>,
    fleet: &Fleet,
    candidate: u64,
) -> anyhow::Result<Value> {
    let before = fleet.on(candidate);
    let sent = unix_ns();
    admin
        .control_rollout(pb::ControlRolloutRequest {
            name: NAME.into(),
            label: LABEL.into(),
            action: pb::RolloutAction::Advance.into(),
            reason: "benchmark step".into(),
        })
        .await?;
    let answered = unix_ns();
    let status = wait_for_status("the step's cohort to acknowledge", admin, |s| {
        let c = candidate_arm(s);
        c.agents_assigned as usize > before && c.agents_acknowledged == c.agents_assigned
    })
    .await?;
    let rollout = status.rollout.clone().unwrap_or_default();
    let assigned = candidate_arm(&status).agents_assigned as usize;
    wait_until(
        "the harness to count the step's cohort",
        Duration::from_secs(30),
        Duration::from_millis(1),
        || fleet.on(candidate) == assigned,
    )
    .await?;
    let mut acks = Samples::new();
    for i in 0..fleet.n {
        let at = fleet.acked_at[i].load(Ordering::Relaxed);
        if fleet.applied[i].load(Ordering::Relaxed) == candidate && at > sent {
            acks.push(Duration::from_nanos(at - sent));
        }
    }
    anyhow::ensure!(
        acks.len() == assigned - before,
        "{} agents acknowledged the candidate after the step, {} were newly assigned",
        acks.len(),
        assigned - before
    );
    Ok(json!({
        "from_bp": rollout.previous_weight_bp,
        "to_bp": rollout.weight_bp,
        "agents_before": before,
        "agents_after": assigned,
        "newly_assigned": assigned - before,
        "control_rpc_ms": ms(answered - sent),
        "acks_after_send": acks.summary(),
        "all_acknowledged_ms": acks.max_ms(),
    }))
}

/// Reports from every canary agent with half their requests failed, until
/// the guardrail aborts; then the time from the decision (the abort move's
/// timestamp) until every canary agent has acknowledged the stable version.
pub async fn breach(
    admin: &mut RegistryClient<Conn>,
    rpc_channels: &[Conn],
    fleet: &Fleet,
    (stable, candidate): (u64, u64),
) -> anyhow::Result<Value> {
    let canary: Vec<usize> = (0..fleet.n)
        .filter(|&i| fleet.applied[i].load(Ordering::Relaxed) == candidate)
        .collect();
    anyhow::ensure!(!canary.is_empty(), "no canary agents to breach with");
    // Every canary agent reports one bad window, 64 at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for (t, chunk) in canary.chunks(canary.len().div_ceil(64)).enumerate() {
        let mut client = RegistryClient::new(rpc_channels[t % rpc_channels.len()].clone());
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let (mut answered, mut refused) = (0u64, 0u64);
            for agent in chunk {
                let bad = report(agent, candidate, REQUESTS_PER_REPORT / 2);
                // Once the rollout has aborted a late report may be refused
                // (no rollout to count it in); that is not a failure here.
                match client.report_outcome(bad).await {
                    Ok(_) => answered += 1,
                    Err(_) => refused += 1,
                }
            }
            (answered, refused, unix_ns())
        });
    }
    let (mut answered, mut refused, mut reported) = (0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        let (a, r, at) = done?;
        (answered, refused, reported) = (answered + a, refused + r, reported.max(at));
    }
    let status = wait_for_status("the guardrail's abort", admin, |s| {
        s.rollout.as_ref().map(|r| r.state) == Some(pb::RolloutState::Aborted as i32)
    })
    .await?;
    let abort = status
        .log
        .iter()
        .rev()
        .find(|m| m.actor == GUARDRAIL)
        .ok_or_else(|| {
            anyhow::anyhow!("the abort is not in the rollout's log: {:?}", status.log)
        })?;
    let decided = abort
        .time
        .as_ref()
        .map(|t| t.seconds as u64 * 1_000_000_000 + t.nanos as u64)
        .ok_or_else(|| anyhow::anyhow!("the abort move has no time"))?;
    wait_until(
        "every canary agent back on the stable version",
        Duration::from_secs(60),
        Duration::from_millis(1),
        || {
            canary
                .iter()
                .all(|&i| fleet.applied[i].load(Ordering::Relaxed) == stable)
        },
    )
    .await?;
    let mut back = Samples::new();
    for &i in &canary {
        let at = fleet.acked_at[i].load(Ordering::Relaxed);
        back.push(Duration::from_nanos(at.saturating_sub(decided)));
    }
    Ok(json!({
        "canary_agents": canary.len(),
        "reports_answered": answered,
        "reports_refused_after_abort": refused,
        "rule": abort.reason,
        // Bounded by --rollout-eval-interval: the guardrail looks on a timer.
        "last_report_to_decision_ms": ms(decided.saturating_sub(reported)),
        "acks_after_decision": back.summary(),
        "all_back_ms": back.max_ms(),
    }))
}

fn candidate_arm(status: &pb::RolloutStatus) -> pb::ArmStatus {
    status
        .arms
        .iter()
        .find(|a| a.arm == pb::Arm::Candidate as i32)
        .cloned()
        .unwrap_or_default()
}

/// Polls GetRollout every 5 ms (for at most 120 s) until `done`.
async fn wait_for_status(
    what: &str,
    admin: &mut RegistryClient<Conn>,
    done: impl Fn(&pb::RolloutStatus) -> bool,
) -> anyhow::Result<pb::RolloutStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = rollout_status(admin).await?;
        if done(&status) {
            return Ok(status);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after 120 s waiting for {what}: {:?} {:?}",
            status.rollout.map(|r| (r.state, r.step, r.weight_bp)),
            status.arms
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(ns: u64) -> f64 {
    crate::procfs::round3(ns as f64 / 1e6)
}
