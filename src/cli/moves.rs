//! `promote`, `rollback` and `unlabel`, `--wait` for the fleet after a
//! move; `history` (the moves of a label) and `fleet` (who runs what).
//!
//! The incident path: a move that happened is always printed first, also
//! when `--wait` then gives up, so that nobody retries a rollback that went
//! through. A move whose fleet did not converge exits 4, a refused move 1
//! (nothing changed).

use super::client::{connect, Failure};
use super::json::{emit, version_or_null, AgentJson, FleetAgentJson, MoveJson};
use super::text::{ago, counted, move_row, short_digest, table, version_text, Listing};
use super::{
    exit, local_user, ClientOptions, FleetArgs, HistoryArgs, OutputFormat, PromoteArgs,
    RollbackArgs, UnlabelArgs, WaitArgs,
};
use crate::domain::AgentState;
use crate::grpc::access::Client;
use crate::grpc::pb;
use serde::Serialize;
use std::time::{Duration, Instant};

pub(super) async fn promote(args: PromoteArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::SetLabelRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        version: args.version,
        actor: args.actor.clone().unwrap_or_else(local_user),
        reason: args.reason.clone(),
        expected_version: args.expect,
    };
    let r = client.set_label(request).await?.into_inner();
    let moving = Moving::new(&args.client, &args.name, &args.label);
    finish_move(&mut client, moving, &r, &args.wait).await
}

pub(super) async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::RollbackRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        to_version: args.to,
        actor: args.actor.clone().unwrap_or_else(local_user),
        reason: args.reason.clone(),
        expected_version: args.expect,
        emergency: args.emergency,
    };
    let r = client.rollback(request).await?.into_inner();
    let moving = Moving::new(&args.client, &args.name, &args.label);
    finish_move(&mut client, moving, &r, &args.wait).await
}

pub(super) async fn unlabel(args: UnlabelArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::RemoveLabelRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        actor: args.actor.clone().unwrap_or_else(local_user),
        reason: args.reason.clone(),
    };
    let r = client.remove_label(request).await?.into_inner();
    print_move(&args.client, &args.name, &args.label, &r, None);
    Ok(())
}

/// The label a move was about, and how to print it.
#[derive(Clone, Copy)]
struct Moving<'a> {
    options: &'a ClientOptions,
    name: &'a str,
    label: &'a str,
}

impl<'a> Moving<'a> {
    fn new(options: &'a ClientOptions, name: &'a str, label: &'a str) -> Self {
        Moving {
            options,
            name,
            label,
        }
    }
}

/// After a move: with `--wait`, waits for the fleet; prints the move (and
/// the fleet) in every case, then fails with exit 4 when the fleet lags.
async fn finish_move(
    client: &mut Client,
    moving: Moving<'_>,
    r: &pb::LabelMoveResponse,
    wait: &WaitArgs,
) -> Result<(), Failure> {
    let Moving {
        options,
        name,
        label,
    } = moving;
    if let Some(request) = &r.request {
        print_move(options, name, label, r, None);
        return Err(Failure {
            code: exit::PENDING_APPROVAL,
            message: format!(
                "the label did not move: it is protected, and promotion request {} awaits approval",
                request.id
            ),
        });
    }
    if !wait.wait {
        print_move(options, name, label, r, None);
        return Ok(());
    }
    let fleet = match wait_for_fleet(client, name, label, wait.timeout).await {
        Ok(fleet) => fleet,
        Err(failure) => {
            // The move happened even if the fleet cannot be asked: say so.
            print_move(options, name, label, r, None);
            return Err(Failure {
                code: exit::NOT_CONVERGED,
                message: format!(
                    "the move happened (revision {}), but waiting for the fleet failed: {}",
                    r.revision, failure.message
                ),
            });
        }
    };
    print_move(options, name, label, r, Some(&fleet));
    match fleet.outcome {
        Outcome::Converged => Ok(()),
        Outcome::NoConnectedAgent => Err(Failure {
            code: exit::NOT_CONVERGED,
            message: format!(
                "the move happened (revision {}), but no connected agent watches {name} {label}{}: \
                 nothing confirmed it; do not repeat the move",
                r.revision,
                disconnected_suffix(&fleet.disconnected)
            ),
        }),
        Outcome::TimedOut => Err(Failure {
            code: exit::NOT_CONVERGED,
            message: format!(
                "the move happened (revision {}), but the fleet did not converge within {:?}: {}, {}; \
                 do not repeat the move: see `promptreg fleet {name} --label {label}`",
                r.revision,
                wait.timeout,
                counted(fleet.stale.len() as u64, "stale agent"),
                counted(fleet.disconnected.len() as u64, "disconnected agent"),
            ),
        }),
    }
}

fn disconnected_suffix(disconnected: &[pb::AgentStatus]) -> String {
    if disconnected.is_empty() {
        String::new()
    } else {
        let ids: Vec<&str> = disconnected.iter().map(|a| a.agent_id.as_str()).collect();
        format!(" (disconnected: {})", ids.join(", "))
    }
}

/// How `--wait` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every connected agent watching the label runs its target.
    Converged,
    /// No agent watching the label is connected: nobody can confirm.
    NoConnectedAgent,
    /// `--timeout` passed with connected agents still stale.
    TimedOut,
}

/// The fleet when `--wait` ended.
struct Fleet {
    outcome: Outcome,
    in_sync: u32,
    /// Connected, not on the target.
    stale: Vec<pb::AgentStatus>,
    disconnected: Vec<pb::AgentStatus>,
    elapsed: Duration,
}

/// Polls fleet status until no connected agent watching the label is stale,
/// no agent is connected at all, or `timeout` passes; then reads the rows
/// once to say which agents lag.
async fn wait_for_fleet(
    client: &mut Client,
    name: &str,
    label: &str,
    timeout: Duration,
) -> Result<Fleet, Failure> {
    let started = Instant::now();
    let outcome = loop {
        let request = pb::FleetStatusRequest {
            name: name.to_string(),
            label: label.to_string(),
            summary_only: true,
        };
        let summary = client
            .fleet_status(request)
            .await?
            .into_inner()
            .summary
            .unwrap_or_default();
        if summary.in_sync == 0 && summary.stale == 0 {
            break Outcome::NoConnectedAgent;
        }
        if summary.stale == 0 {
            break Outcome::Converged;
        }
        if started.elapsed() >= timeout {
            break Outcome::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = started.elapsed();
    let request = pb::FleetStatusRequest {
        name: name.to_string(),
        label: label.to_string(),
        summary_only: false,
    };
    let status = client.fleet_status(request).await?.into_inner();
    let (mut stale, mut disconnected) = (Vec::new(), Vec::new());
    let mut in_sync = 0;
    for agent in status.agents {
        match AgentState::of(agent.connected, agent.in_sync) {
            AgentState::Disconnected => disconnected.push(agent),
            AgentState::Stale => stale.push(agent),
            AgentState::InSync => in_sync += 1,
        }
    }
    Ok(Fleet {
        outcome,
        in_sync,
        stale,
        disconnected,
        elapsed,
    })
}

/// The version an agent rejected and why, or nothing.
fn rejected_cell(a: &pb::AgentStatus) -> String {
    if a.rejected_reason.is_empty() {
        return String::new();
    }
    format!(
        "{}: {}",
        version_text(a.rejected_version),
        a.rejected_reason
    )
}

/// One lagging agent after `--wait`, as table cells.
fn agent_row(state: &str, a: &pb::AgentStatus) -> Vec<String> {
    vec![
        a.agent_id.clone(),
        state.to_string(),
        version_text(a.applied_version),
        ago(&a.last_seen),
        rejected_cell(a),
    ]
}

fn print_move(
    options: &ClientOptions,
    name: &str,
    label: &str,
    r: &pb::LabelMoveResponse,
    fleet: Option<&Fleet>,
) {
    #[derive(Serialize)]
    struct FleetJson<'a> {
        converged: bool,
        agents: u32,
        elapsed_ms: f64,
        no_connected_agent: bool,
        stale: Vec<AgentJson<'a>>,
        disconnected: Vec<AgentJson<'a>>,
    }
    #[derive(Serialize)]
    struct Moved<'a> {
        name: &'a str,
        label: &'a str,
        changed: bool,
        revision: u64,
        from_version: Option<u64>,
        to_version: Option<u64>,
        version: Option<u64>,
        digest: &'a str,
        emergency: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<super::release::RequestJson<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fleet: Option<FleetJson<'a>>,
    }
    let object = Moved {
        name,
        label,
        changed: r.changed,
        revision: r.revision,
        from_version: version_or_null(r.from_version),
        to_version: version_or_null(r.to_version),
        version: version_or_null(r.to_version),
        digest: &r.digest,
        emergency: r.emergency,
        request: r.request.as_ref().map(super::release::RequestJson::of),
        fleet: fleet.map(|fleet| FleetJson {
            converged: fleet.outcome == Outcome::Converged,
            agents: fleet.in_sync,
            elapsed_ms: fleet.elapsed.as_secs_f64() * 1000.0,
            no_connected_agent: fleet.outcome == Outcome::NoConnectedAgent,
            stale: fleet.stale.iter().map(AgentJson::from).collect(),
            disconnected: fleet.disconnected.iter().map(AgentJson::from).collect(),
        }),
    };
    emit(
        options,
        || {
            let mut text = move_summary(name, label, r);
            if let Some(fleet) = fleet {
                text.push('\n');
                text.push_str(&fleet_text(fleet, r.to_version));
            }
            text
        },
        object,
    );
}

fn fleet_text(fleet: &Fleet, target: u64) -> String {
    let ms = fleet.elapsed.as_secs_f64() * 1000.0;
    let mut text = match fleet.outcome {
        Outcome::Converged => format!(
            "fleet converged: {} on v{target} after {ms:.1} ms",
            counted(fleet.in_sync, "agent")
        ),
        Outcome::NoConnectedAgent => {
            "fleet NOT converged: no connected agent watches this label".to_string()
        }
        Outcome::TimedOut => format!(
            "fleet NOT converged after {ms:.0} ms: {} on v{target}, {} stale, {} disconnected:",
            counted(fleet.in_sync, "agent"),
            fleet.stale.len(),
            fleet.disconnected.len()
        ),
    };
    let rows: Vec<Vec<String>> = (fleet.stale.iter().map(|a| agent_row("stale", a)))
        .chain(
            fleet
                .disconnected
                .iter()
                .map(|a| agent_row("disconnected", a)),
        )
        .collect();
    if !rows.is_empty() {
        text.push('\n');
        text.push_str(&table(
            &["AGENT", "STATE", "RUNS", "LAST SEEN", "REJECTED"],
            &rows,
        ));
    }
    text
}

fn move_summary(name: &str, label: &str, r: &pb::LabelMoveResponse) -> String {
    if let Some(request) = &r.request {
        return super::release::request_made_text(request);
    }
    let emergency = if r.emergency {
        " (emergency rollback: the label's policy and freezes were passed over; recorded as such)"
    } else {
        ""
    };
    if !r.changed {
        format!(
            "{name} {label} already points to v{} (revision {}): nothing changed",
            r.to_version, r.revision
        )
    } else if r.to_version == 0 {
        format!(
            "{name} {label} removed (was v{}) at revision {}",
            r.from_version, r.revision
        )
    } else {
        let from = if r.from_version == 0 {
            "unset".to_string()
        } else {
            format!("v{}", r.from_version)
        };
        format!(
            "{name} {label}: {from} -> v{} ({}) at revision {}{emergency}",
            r.to_version,
            short_digest(&r.digest),
            r.revision
        )
    }
}

pub(super) async fn history(args: HistoryArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut listing = Listing::new(
        &args.client,
        &[
            "REVISION", "TIME", "KIND", "MOVE", "DIGEST", "ACTOR", "TRACE", "REASON",
        ],
        "no moves",
    );
    let mut token = String::new();
    loop {
        let request = pb::LabelHistoryRequest {
            name: args.name.clone(),
            label: args.label.clone(),
            page_size: 1000,
            page_token: token,
        };
        let page = client.label_history(request).await?.into_inner();
        for m in &page.moves {
            listing.row(|| move_row(m), MoveJson::from(m));
        }
        if page.next_page_token.is_empty() {
            listing.finish();
            return Ok(());
        }
        token = page.next_page_token;
    }
}

pub(super) async fn fleet(args: FleetArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::FleetStatusRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        summary_only: false,
    };
    let status = client.fleet_status(request).await?.into_inner();
    let summary = status.summary.unwrap_or_default();
    if args.client.output == OutputFormat::Text {
        let agents = u64::from(summary.in_sync + summary.stale + summary.disconnected);
        println!(
            "{} {}: {}: {} in sync, {} stale, {} disconnected",
            args.name,
            args.label,
            counted(agents, "agent"),
            summary.in_sync,
            summary.stale,
            summary.disconnected
        );
        // The ARM column only while a rollout gives agents an arm.
        let arms = status
            .agents
            .iter()
            .any(|a| super::json::arm_of(a.arm).is_some());
        let header: &[&str] = if arms {
            &[
                "AGENT",
                "STATE",
                "ARM",
                "APPLIED",
                "TARGET",
                "LAST SEEN",
                "REJECTED",
            ]
        } else {
            &[
                "AGENT",
                "STATE",
                "APPLIED",
                "TARGET",
                "LAST SEEN",
                "REJECTED",
            ]
        };
        let rows: Vec<Vec<String>> = status.agents.iter().map(|a| fleet_row(a, arms)).collect();
        if !rows.is_empty() {
            println!("{}", table(header, &rows));
        }
        return Ok(());
    }
    #[derive(Serialize)]
    struct Summary {
        in_sync: u32,
        stale: u32,
        disconnected: u32,
    }
    #[derive(Serialize)]
    struct Status<'a> {
        name: &'a str,
        label: &'a str,
        agents: Vec<FleetAgentJson<'a>>,
        summary: Summary,
    }
    emit(
        &args.client,
        String::new,
        Status {
            name: &args.name,
            label: &args.label,
            agents: status.agents.iter().map(FleetAgentJson::from).collect(),
            summary: Summary {
                in_sync: summary.in_sync,
                stale: summary.stale,
                disconnected: summary.disconnected,
            },
        },
    );
    Ok(())
}

/// One agent of `fleet`, as table cells (with its arm when `arms`).
fn fleet_row(a: &pb::AgentStatus, arms: bool) -> Vec<String> {
    // The domain's rule; "in sync" with a space for people.
    let state = match AgentState::of(a.connected, a.in_sync) {
        AgentState::InSync => "in sync",
        state => state.as_str(),
    };
    let arm = arms.then(|| super::rollout::arm_text(a.arm).to_string());
    [a.agent_id.clone(), state.to_string()]
        .into_iter()
        .chain(arm)
        .chain([
            version_text(a.applied_version),
            version_text(a.target_version),
            ago(&a.last_seen),
            rejected_cell(a),
        ])
        .collect()
}
