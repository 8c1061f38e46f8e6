//! `rollout`: a progressive rollout on a fleet of N agents (10,000 by
//! default). Every agent watches two prompts' `production` label on one
//! stream with its agent id and acknowledges what it is given; a rollout of
//! the first prompt from v1 to v2 runs at steps 10%, 50%, 100% (a bake of an
//! hour, the salt pinned, the guardrail looking every 200 ms). Measured:
//!
//! - promote fan-out of the *second* prompt to all N agents, before the
//!   rollout starts and while it runs (the bar: within 1.2x);
//! - StartRollout until every agent of the 10% cohort acknowledged v2;
//! - ReportOutcome ingest at concurrency 1 and 64: reports/s, latency, and
//!   the server's CPU (from /proc) per report, so `agents_per_core_at_5s`
//!   answers "cheap enough for every agent to report every few seconds";
//! - the step 10% -> 50% (an operator's `advance`) until every newly
//!   assigned agent has acknowledged v2;
//! - a guardrail breach (every canary agent reports half its requests
//!   failed) until every canary agent is back on v1 and acknowledged it,
//!   counted from the decision's own timestamp (the target: under 1 s).
//!
//! **Checks** that GetRollout counts, per arm, exactly the requests and
//! errors the harness reported (every report answered is in its arm, none
//! counted apart), that the ingest left the rollout at step 0, that the
//! step assigns agents only to the candidate and the abort returns all.

mod moves;

use super::{closed_loop, publish, set_label, wait_until, Options};
use crate::procfs::{self, round3, CpuMeter};
use crate::server::{Conn, ServerProcess};
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) const NAME: &str = "bench/rollout";
/// Promoted plainly for the fan-out comparison; never under rollout.
pub(crate) const OTHER: &str = "bench/rollout-other";
pub(crate) const LABEL: &str = "production";
/// How often the server's guardrail looks (`--rollout-eval-interval`).
const EVAL_INTERVAL: &str = "200ms";
/// Requests per arm before a breach may abort (40 bad reports).
const MIN_SAMPLES: u64 = 2_000;
/// The steps (basis points): a 10% canary, then half, then everyone.
const STEPS_BP: [u32; 3] = [1_000, 5_000, 10_000];
/// Long enough that no step ends while the harness measures.
const BAKE_SECONDS: u64 = 3_600;
/// Pinned, so the same agent ids land on the same arms in every run.
const SALT: &str = "promptreg-bench";
/// Requests in one report (an agent's window of a few seconds).
const REQUESTS_PER_REPORT: u64 = 50;
/// The window's requests per latency bucket (the 12 bounds documented on
/// `ReportOutcomeRequest`), summing to `REQUESTS_PER_REPORT`.
const LATENCY_BUCKETS: [u64; 12] = [0, 0, 5, 20, 15, 7, 2, 1, 0, 0, 0, 0];
/// The interval the headline assumes between one agent's reports.
const REPORT_INTERVAL_S: f64 = 5.0;
/// Concurrent reporters per cell.
const CONCURRENCIES: [usize; 2] = [1, 64];

/// What the harness reported and the server answered, per arm.
#[derive(Default)]
struct Tally {
    /// [stable, candidate]: requests and errors in answered reports.
    requests: [AtomicU64; 2],
    errors: [AtomicU64; 2],
    /// Answered reports, in all.
    reports: AtomicU64,
    /// Answers naming another arm than the agent's version's, or another
    /// rollout.
    misfiled: AtomicU64,
}

impl Tally {
    fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }
}

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let args = [
        "--rollout-eval-interval".to_string(),
        EVAL_INTERVAL.to_string(),
    ];
    let server = ServerProcess::start_with_args(&opts.server_bin, &args)?;
    let channels = server.channels(opts.connections).await?;
    let rpc_channels = server.channels(opts.rpc_connections).await?;
    let mut admin = RegistryClient::new(rpc_channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;
    let (o1, _) = publish(&mut admin, OTHER, 1).await?;
    let (o2, _) = publish(&mut admin, OTHER, 2).await?;
    set_label(&mut admin, OTHER, LABEL, o1).await?;
    let mut other = o1;

    let n = opts.watchers.max(1);
    let fleet = Fleet::start(&channels, n).await?;

    // Promote fan-out with no rollout anywhere.
    let plain = moves::fanout(&mut admin, &fleet, (o1, o2), &mut other, opts.promotes).await?;

    let started_at = unix_ns();
    let started = admin
        .start_rollout(pb::StartRolloutRequest {
            name: NAME.into(),
            label: LABEL.into(),
            candidate_version: v2,
            spec: Some(pb::RolloutSpec {
                steps_bp: STEPS_BP.to_vec(),
                bake_seconds: BAKE_SECONDS,
                guardrails: vec![pb::Guardrail {
                    metric: pb::GuardrailMetric::ErrorRate.into(),
                    max: 0.10,
                }],
                max_error_rate_increase: Some(0.02),
                min_samples: MIN_SAMPLES,
                salt: SALT.into(),
                ..Default::default()
            }),
            reason: "benchmark rollout".into(),
        })
        .await?
        .into_inner();
    let rollout_id = started
        .rollout
        .as_ref()
        .map(|r| r.id)
        .ok_or_else(|| anyhow::anyhow!("StartRollout started nothing: {started:?}"))?;

    // Exposure: every agent on the candidate arm has acknowledged v2.
    let mut status = rollout_status(&mut admin).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !exposed(&status, n) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the candidate cohort did not acknowledge v{v2} within 120 s: {:?}",
            status.arms
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = rollout_status(&mut admin).await?;
    }
    let assigned: Vec<u32> = status.arms.iter().map(|a| a.agents_assigned).collect();
    let on_v2 = fleet.on(v2);
    anyhow::ensure!(
        on_v2 as u32 == assigned[1],
        "{on_v2} agents applied v{v2}, GetRollout assigns {} to the candidate",
        assigned[1]
    );
    let exposed_ms = (0..n)
        .filter(|&i| fleet.applied[i].load(Ordering::Relaxed) == v2)
        .map(|i| {
            fleet.acked_at[i]
                .load(Ordering::Relaxed)
                .saturating_sub(started_at)
        })
        .max()
        .unwrap_or(0) as f64
        / 1e6;

    // The same promotes of the other prompt, with the rollout running on
    // this one (per-agent targets on every stream).
    let active = moves::fanout(&mut admin, &fleet, (o1, o2), &mut other, opts.promotes).await?;

    // The server at rest with N agents connected and the rollout running.
    let idle = CpuMeter::start(Some(server.pid()));
    tokio::time::sleep(opts.warmup.max(Duration::from_secs(1))).await;
    let idle = idle.stop();
    let rss_before = procfs::rss_bytes(server.pid())?;
    let applied = fleet.applied.clone();

    let tally = Arc::new(Tally::default());
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut cells = Vec::new();
    for c in CONCURRENCIES {
        let reports0 = tally.reports();
        let meter = CpuMeter::start(Some(server.pid()));
        let chans = rpc_channels.clone();
        let (applied, tally_op, cursor) = (applied.clone(), tally.clone(), cursor.clone());
        let mut result = closed_loop(c, opts.warmup, opts.duration, move |task, _| {
            let mut client = RegistryClient::new(chans[task % chans.len()].clone());
            let agent = cursor.fetch_add(1, Ordering::Relaxed) % applied.len();
            let version = applied[agent].load(Ordering::Relaxed);
            let tally = tally_op.clone();
            async move {
                // One error in every other report: 1% of requests, well under
                // the guardrail, so the rollout never aborts.
                let errors = (agent % 2) as u64;
                let answer = client
                    .report_outcome(report(agent, version, errors))
                    .await?
                    .into_inner();
                let arm = usize::from(version == v2);
                let expected = [pb::Arm::Stable, pb::Arm::Candidate][arm];
                tally.requests[arm].fetch_add(REQUESTS_PER_REPORT, Ordering::Relaxed);
                tally.errors[arm].fetch_add(errors, Ordering::Relaxed);
                tally.reports.fetch_add(1, Ordering::Relaxed);
                if answer.arm != expected as i32 || answer.rollout_id != rollout_id {
                    tally.misfiled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        })
        .await;
        let cpu = meter.stop();
        // Every report answered while the meter ran (warm-up included).
        let reports = tally.reports() - reports0;
        let mut cell = result.summary_json();
        cell["concurrency"] = json!(c);
        cell["reports_metered"] = json!(reports);
        cell["cpu"] = cost(&cpu, &idle, reports);
        // Per cell, to tell growth with the reports from growth with the
        // concurrency (buffers, allocator arenas).
        cell["rss_after_mib"] = json!(mib(procfs::rss_bytes(server.pid())?));
        cells.push(cell);
    }
    let rss_after = procfs::rss_bytes(server.pid())?;

    // The check: the server counted exactly what was reported.
    let status = rollout_status(&mut admin).await?;
    let rollout = status.rollout.clone().unwrap_or_default();
    let arms: Vec<Value> = [pb::Arm::Stable, pb::Arm::Candidate]
        .iter()
        .enumerate()
        .map(|(i, &arm)| {
            let counted = status.arms.iter().find(|a| a.arm == arm as i32);
            let (req, err) = (
                tally.requests[i].load(Ordering::Relaxed),
                tally.errors[i].load(Ordering::Relaxed),
            );
            json!({
                "arm": if i == 0 { "stable" } else { "candidate" },
                "agents_assigned": counted.map_or(0, |a| a.agents_assigned),
                "agents_acknowledged": counted.map_or(0, |a| a.agents_acknowledged),
                "requests_reported": req,
                "requests_counted": counted.map_or(0, |a| a.requests),
                "errors_reported": err,
                "errors_counted": counted.map_or(0, |a| a.errors),
                "error_rate": counted.map_or(f64::NAN, |a| a.error_rate),
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for a in &arms {
        for (reported, counted) in [
            ("requests_reported", "requests_counted"),
            ("errors_reported", "errors_counted"),
        ] {
            if a[reported] != a[counted] {
                wrong.push(format!(
                    "{} arm: {reported} {} but {counted} {}",
                    a["arm"].as_str().unwrap_or("?"),
                    a[reported],
                    a[counted]
                ));
            }
        }
    }
    let misfiled = tally.misfiled.load(Ordering::Relaxed);
    if misfiled > 0 {
        wrong.push(format!("{misfiled} answers named another arm or rollout"));
    }
    if status.unassigned_reports > 0 {
        wrong.push(format!(
            "{} reports counted apart",
            status.unassigned_reports
        ));
    }
    if rollout.id != rollout_id
        || rollout.state != pb::RolloutState::Running as i32
        || rollout.step != 0
    {
        wrong.push(format!(
            "the rollout moved: id {} state {} step {}",
            rollout.id, rollout.state, rollout.step
        ));
    }
    let load_errors: u64 = cells.iter().filter_map(|c| c["errors"].as_u64()).sum();
    if load_errors > 0 {
        wrong.push(format!("{load_errors} ReportOutcome calls failed"));
    }

    anyhow::ensure!(
        wrong.is_empty(),
        "rollout: GetRollout disagrees with the reports: {}",
        wrong.join("; ")
    );

    // The step 10% -> 50%, then a breach that the guardrail aborts on.
    let step = moves::step(&mut admin, &fleet, v2).await?;
    let breach = moves::breach(&mut admin, &rpc_channels, &fleet, (v1, v2)).await?;
    // Plain fan-out again with the rollout over: the comparison pools the
    // runs before and after, so drift over the scenario does not favour
    // either side.
    let after = moves::fanout(&mut admin, &fleet, (o1, o2), &mut other, opts.promotes).await?;
    fleet.stop().await?;
    let (mut plain, mut active) = (plain, active);
    let plain_before = plain.summary();
    let mut after = after;
    let plain_after = after.summary();
    plain.extend(after);
    let (plain, active) = (plain.summary(), active.summary());
    let ratio = |key: &str| {
        let (a, p) = (
            active[key]["p99_ms"].as_f64().unwrap_or(f64::NAN),
            plain[key]["p99_ms"].as_f64().unwrap_or(f64::NAN),
        );
        round3(a / p)
    };

    // The headline: server CPU per report, less what the server uses at
    // rest. At concurrency 1 every report reaches an idle server on its own
    // and pays for waking it (agents reporting at a low rate, each on its
    // own); at 64 the server is saturated and reads and writes many reports
    // per wake-up (the regime of a core kept busy by reports). The first is
    // the conservative figure; the second what a busy core reaches.
    let per_report = |pick: fn(f64, f64) -> f64, init: f64| {
        cells
            .iter()
            .filter_map(|c| c["cpu"]["server_net_us_per_report"].as_f64())
            .fold(init, pick)
    };
    let (isolated_us, saturated_us) = (
        per_report(f64::max, f64::NEG_INFINITY),
        per_report(f64::min, f64::INFINITY),
    );
    let per_core = |us: f64| {
        if us.is_finite() && us > 0.0 {
            1e6 / us
        } else {
            f64::NAN
        }
    };
    Ok(json!({
        "agents": n,
        "connections": channels.len(),
        "rpc_connections": rpc_channels.len(),
        "rollout_id": rollout_id,
        "steps_bp": STEPS_BP,
        "bake_seconds": BAKE_SECONDS,
        "salt": SALT,
        "requests_per_report": REQUESTS_PER_REPORT,
        "duration_s": opts.duration.as_secs_f64(),
        "idle_cpu": idle,
        "cells": cells,
        "rss_before_mib": mib(rss_before),
        "rss_after_mib": mib(rss_after),
        "rss_delta_kib": (rss_after as f64 - rss_before as f64) / 1024.0,
        "server_cpu_us_per_report": round3(isolated_us),
        "reports_per_core_s": per_core(isolated_us).round(),
        "report_interval_s": REPORT_INTERVAL_S,
        "agents_per_core_at_5s": (per_core(isolated_us) * REPORT_INTERVAL_S).round(),
        "server_cpu_us_per_report_saturated": round3(saturated_us),
        "reports_per_core_s_saturated": per_core(saturated_us).round(),
        "agents_per_core_at_5s_saturated": (per_core(saturated_us) * REPORT_INTERVAL_S).round(),
        "arms": arms,
        "unassigned_reports": status.unassigned_reports,
        "rollout_state_after": rollout.state,
        "rollout_step_after": rollout.step,
        "eval_interval": EVAL_INTERVAL,
        "start_to_exposed_ms": round3(exposed_ms),
        "fanout_plain": plain,
        "fanout_plain_before": plain_before,
        "fanout_plain_after": plain_after,
        "fanout_rollout_active": active,
        "fanout_ratio_p99": ratio("deliveries"),
        "fanout_ratio_last_agent_p99": ratio("last_agent"),
        "step": step,
        "breach": breach,
        "correct": true,
    }))
}

/// The meter's figures with the cost per report: the server's CPU per
/// report, gross and less its CPU at rest (`idle`) over the same time.
fn cost(cpu: &Value, idle: &Value, reports: u64) -> Value {
    let mut v = cpu.clone();
    let wall = cpu["wall_s"].as_f64().unwrap_or(0.0);
    let server = cpu["server_cpu_s"].as_f64().unwrap_or(0.0);
    let harness = cpu["harness_cpu_s"].as_f64().unwrap_or(0.0);
    let rest = idle["server_cores"].as_f64().unwrap_or(0.0) * wall;
    let per = |s: f64| {
        if reports == 0 {
            f64::NAN
        } else {
            round3(s * 1e6 / reports as f64)
        }
    };
    v["server_us_per_report"] = json!(per(server));
    v["server_net_us_per_report"] = json!(per((server - rest).max(0.0)));
    v["harness_us_per_report"] = json!(per(harness));
    v
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / 1_048_576.0)
}

fn agent_id(i: usize) -> String {
    format!("agent-{i:05}")
}

/// One agent's report for one window: `REQUESTS_PER_REPORT` requests served
/// by `version`, `errors` of them failed.
fn report(agent: usize, version: u64, errors: u64) -> pb::ReportOutcomeRequest {
    pb::ReportOutcomeRequest {
        agent_id: agent_id(agent),
        name: NAME.into(),
        label: LABEL.into(),
        version,
        requests: REQUESTS_PER_REPORT,
        errors,
        safety_violations: 0,
        policy_violations: 0,
        latency_ms_sum: 2_150.0,
        latency_buckets: LATENCY_BUCKETS.to_vec(),
    }
}

async fn rollout_status(admin: &mut RegistryClient<Conn>) -> anyhow::Result<pb::RolloutStatus> {
    Ok(admin
        .get_rollout(pb::GetRolloutRequest {
            name: NAME.into(),
            label: LABEL.into(),
        })
        .await?
        .into_inner())
}

/// Every one of the `n` agents is assigned an arm and every candidate agent
/// acknowledged the candidate.
fn exposed(status: &pb::RolloutStatus, n: usize) -> bool {
    let assigned: u32 = status.arms.iter().map(|a| a.agents_assigned).sum();
    let candidate = status
        .arms
        .iter()
        .find(|a| a.arm == pb::Arm::Candidate as i32);
    assigned as usize == n
        && candidate
            .is_some_and(|c| c.agents_assigned > 0 && c.agents_acknowledged == c.agents_assigned)
}

/// Now, in nanoseconds since the Unix epoch: the clock the agents stamp
/// their acknowledgements with and the server stamps its moves with.
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The N agents and what each saw, in slots indexed by agent.
pub(crate) struct Fleet {
    pub(crate) n: usize,
    /// The version of `NAME` each agent acknowledged last, and when.
    applied: Arc<Vec<AtomicU64>>,
    acked_at: Arc<Vec<AtomicU64>>,
    acks: Arc<AtomicUsize>,
    /// When each agent last received a move of `OTHER`; moves received.
    other_at: Arc<Vec<AtomicU64>>,
    other_received: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Fleet {
    /// Opens the N agents' streams over `channels` and waits for every
    /// agent's first acknowledgement.
    pub(crate) async fn start(channels: &[Conn], n: usize) -> anyhow::Result<Fleet> {
        let slots = || Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let (stop, stop_rx) = watch::channel(false);
        let mut fleet = Fleet {
            n,
            applied: slots(),
            acked_at: slots(),
            acks: Arc::new(AtomicUsize::new(0)),
            other_at: slots(),
            other_received: Arc::new(AtomicUsize::new(0)),
            stop,
            tasks: Vec::with_capacity(n),
        };
        for i in 0..n {
            let client = RegistryClient::new(channels[i % channels.len()].clone());
            let task = agent(client, i, fleet.slots(), stop_rx.clone());
            fleet.tasks.push(tokio::spawn(task));
        }
        wait_until(
            "every agent's first ack",
            Duration::from_secs(120),
            Duration::from_millis(5),
            || {
                fleet.acks.load(Ordering::Relaxed) >= n
                    || fleet.tasks.iter().any(|t| t.is_finished())
            },
        )
        .await?;
        if let Some(i) = fleet.tasks.iter().position(|t| t.is_finished()) {
            let ended = fleet.tasks.swap_remove(i).await?;
            anyhow::bail!("agent {i} ended early: {ended:?}");
        }
        Ok(fleet)
    }

    fn slots(&self) -> Slots {
        Slots {
            applied: self.applied.clone(),
            acked_at: self.acked_at.clone(),
            acks: self.acks.clone(),
            other_at: self.other_at.clone(),
            other_received: self.other_received.clone(),
        }
    }

    /// Agents whose last acknowledged version is `version`.
    pub(crate) fn on(&self, version: u64) -> usize {
        self.applied
            .iter()
            .filter(|v| v.load(Ordering::Relaxed) == version)
            .count()
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.send(true)?;
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

/// One agent's handles on the fleet's slots.
struct Slots {
    applied: Arc<Vec<AtomicU64>>,
    acked_at: Arc<Vec<AtomicU64>>,
    acks: Arc<AtomicUsize>,
    other_at: Arc<Vec<AtomicU64>>,
    other_received: Arc<AtomicUsize>,
}

/// One agent: watch both prompts with an agent id; acknowledge the
/// snapshot's target of `NAME` and every move of it after, stamping
/// `applied[i]` and `acked_at[i]`; stamp every move of `OTHER` it receives.
async fn agent(
    mut client: RegistryClient<Conn>,
    i: usize,
    slots: Slots,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let agent_id = agent_id(i);
    let mut stream = client
        .watch(super::agent_watch(&[NAME, OTHER], LABEL, &agent_id))
        .await?
        .into_inner();
    use pb::watch_response::Event;
    let stopped = stop.wait_for(|stopping| *stopping);
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            m = stream.message() => m?,
            _ = &mut stopped => break,
        };
        let targets: Vec<(u64, String, u64)> = match message {
            Some(pb::WatchResponse {
                event: Some(Event::Snapshot(s)),
            }) => s
                .labels
                .into_iter()
                .filter(|l| l.name == NAME)
                .map(|l| (l.version, l.digest, l.revision))
                .collect(),
            Some(pb::WatchResponse {
                event: Some(Event::Changes(batch)),
            }) => {
                let mut targets = Vec::new();
                for change in batch.changes {
                    let Some(pb::change::Kind::LabelMoved(m)) = change.kind else {
                        continue;
                    };
                    if m.name == NAME {
                        targets.push((m.to_version, m.digest, batch.revision));
                    } else {
                        slots.other_at[i].store(unix_ns(), Ordering::Relaxed);
                        slots.other_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                targets
            }
            Some(_) => Vec::new(),
            None => break,
        };
        for (version, digest, revision) in targets {
            client
                .ack_applied(pb::AckAppliedRequest {
                    agent_id: agent_id.clone(),
                    name: NAME.into(),
                    label: LABEL.into(),
                    version,
                    digest,
                    revision,
                    outcome: pb::ApplyOutcome::Applied as i32,
                    reason: String::new(),
                })
                .await?;
            slots.applied[i].store(version, Ordering::Relaxed);
            slots.acked_at[i].store(unix_ns(), Ordering::Relaxed);
            slots.acks.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
