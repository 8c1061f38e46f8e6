//! `converge`: N agents watch `production` with an agent id and acknowledge
//! (AckApplied APPLIED) every target they receive, with the digest the event
//! carries. After the fleet is in sync on v2, one Rollback to v1; the time
//! until FleetStatus reports all N in sync and none stale is the headline
//! "rollback to the whole fleet" figure. Also when the last event arrived
//! and when the last acknowledgement was answered.

use super::{publish, set_label, wait_until, Options};
use crate::procfs::CpuMeter;
use crate::server::Conn;
use crate::server::ServerProcess;
use crate::stats::Samples;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const NAME: &str = "bench/converge";
const LABEL: &str = "production";

/// What one agent saw of the rollback.
#[derive(Debug, Default)]
struct AgentTrace {
    /// (revision, received, ack answered) for each label move after the
    /// snapshot.
    moves: Vec<(u64, Instant, Instant)>,
}

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.connections).await?;
    let mut admin = RegistryClient::new(channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;
    set_label(&mut admin, NAME, LABEL, v2).await?;

    let n = opts.watchers;
    let acked = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let client = RegistryClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(agent(
            client,
            format!("agent-{i:05}"),
            acked.clone(),
            stop_rx.clone(),
        )));
    }
    // Everyone applied v2 (the snapshot).
    wait_until(
        "every agent's first ack",
        Duration::from_secs(120),
        Duration::from_millis(5),
        || acked.load(Ordering::Relaxed) >= n || tasks.iter().any(|t| t.is_finished()),
    )
    .await?;
    anyhow::ensure!(
        !tasks.iter().any(|t| t.is_finished()),
        "an agent ended early"
    );
    let summary = fleet(&mut admin).await?;
    anyhow::ensure!(
        summary.in_sync as usize == n,
        "before the rollback: {summary:?}, expected {n} in sync"
    );

    // The rollback, and FleetStatus polled until the fleet is back in sync.
    let meter = CpuMeter::start(Some(server.pid()));
    let t0 = Instant::now();
    let moved = admin
        .rollback(pb::RollbackRequest {
            name: NAME.into(),
            label: LABEL.into(),
            to_version: None,
            actor: "promptreg-bench".into(),
            reason: "benchmark rollback".into(),
            expected_version: None,
            emergency: false,
        })
        .await?
        .into_inner();
    let rollback_rpc = t0.elapsed();
    anyhow::ensure!(
        moved.to_version == v1,
        "rollback went to v{}",
        moved.to_version
    );
    let mut polls = Samples::new();
    let deadline = t0 + Duration::from_secs(120);
    let converged = loop {
        let p0 = Instant::now();
        let s = fleet(&mut admin).await?;
        polls.push(p0.elapsed());
        if s.in_sync as usize == n && s.stale == 0 {
            break t0.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no convergence after 120 s: {s:?}"
        );
        tokio::time::sleep(opts.fleet_poll).await;
    };
    let cpu = meter.stop();
    stop_tx.send(true)?;
    let (mut last_event, mut last_ack) = (Duration::ZERO, Duration::ZERO);
    let mut events = Samples::new();
    let mut bad = 0usize;
    for t in tasks {
        let trace = t.await??;
        let rollback: Vec<_> = trace
            .moves
            .iter()
            .filter(|m| m.0 == moved.revision)
            .collect();
        if rollback.len() != 1 || trace.moves.len() != 1 {
            bad += 1;
        }
        for (_, received, answered) in rollback {
            let e = received.saturating_duration_since(t0);
            events.push(e);
            last_event = last_event.max(e);
            last_ack = last_ack.max(answered.saturating_duration_since(t0));
        }
    }
    Ok(json!({
        "agents": n,
        "connections": channels.len(),
        "converge_ms": ms(converged),
        "rollback_rpc_ms": ms(rollback_rpc),
        "last_event_ms": ms(last_event),
        "last_ack_ms": ms(last_ack),
        "event": events.summary(),
        "fleet_status_poll": polls.summary(),
        "fleet_poll_pause_ms": opts.fleet_poll.as_millis() as u64,
        "correct": bad == 0,
        "agents_with_wrong_events": bad,
        "cpu": cpu,
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

async fn fleet(admin: &mut RegistryClient<Conn>) -> anyhow::Result<pb::FleetSummary> {
    let status = admin
        .fleet_status(pb::FleetStatusRequest {
            name: NAME.into(),
            label: LABEL.into(),
            summary_only: true,
        })
        .await?
        .into_inner();
    status
        .summary
        .ok_or_else(|| anyhow::anyhow!("FleetStatus without a summary"))
}

/// One agent: watch with an agent id, ack the snapshot's target and every
/// move after it.
async fn agent(
    mut client: RegistryClient<Conn>,
    agent_id: String,
    acked: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<AgentTrace> {
    let mut stream = client
        .watch(super::agent_watch(&[NAME], LABEL, &agent_id))
        .await?
        .into_inner();
    use pb::watch_response::Event;
    let mut trace = AgentTrace::default();
    // One registration for the whole loop: a fresh `changed()` per message
    // would lock the channel's waiter list once per delivery.
    let stopped = stop.wait_for(|stopping| *stopping);
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            m = stream.message() => m?,
            _ = &mut stopped => break,
        };
        match message {
            Some(pb::WatchResponse {
                event: Some(Event::Snapshot(s)),
            }) => {
                for l in s.labels {
                    ack(&mut client, &agent_id, l.version, l.digest, l.revision).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(pb::WatchResponse {
                event: Some(Event::Changes(batch)),
            }) => {
                let received = Instant::now();
                for change in batch.changes {
                    if let Some(pb::change::Kind::LabelMoved(m)) = change.kind {
                        ack(
                            &mut client,
                            &agent_id,
                            m.to_version,
                            m.digest,
                            batch.revision,
                        )
                        .await?;
                        trace.moves.push((batch.revision, received, Instant::now()));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok(trace)
}

async fn ack(
    client: &mut RegistryClient<Conn>,
    agent_id: &str,
    version: u64,
    digest: String,
    revision: u64,
) -> anyhow::Result<()> {
    client
        .ack_applied(pb::AckAppliedRequest {
            agent_id: agent_id.to_string(),
            name: NAME.into(),
            label: LABEL.into(),
            version,
            digest,
            revision,
            outcome: pb::ApplyOutcome::Applied as i32,
            reason: String::new(),
        })
        .await?;
    Ok(())
}
