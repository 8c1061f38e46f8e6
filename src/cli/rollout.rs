//! `rollout start|status|pause|resume|abort|advance|promote` (progressive
//! rollouts of a label) and `report` (an agent's outcome counts, what the
//! guardrails judge).
//!
//! A rollout of a protected label does not start at once: the answer is a
//! promotion request, printed as such, and the command exits 5 as `promote`
//! does there (the label's agents did not move); its approval starts the
//! rollout. Every refusal is the server's, printed as it gives it (exit 1).

use super::client::{connect, Failure};
use super::json::{
    arm_of, emit, finite, kind_name, metric_name, state_of, time_text, ArmJson, LogJson,
    RolloutJson,
};
use super::release::RequestJson;
use super::text::{actor_text, counted, short_digest, table, version_text};
use super::{
    ClientOptions, OutputFormat, ReportArgs, RolloutAction, RolloutArgs, RolloutControlArgs,
    RolloutStartArgs, RolloutStatusArgs,
};
use crate::domain::rollout::{percent, Arm, Guardrail, Metric, RolloutState};
use crate::grpc::pb;
use serde::Serialize;

pub(super) async fn rollout(args: RolloutArgs) -> Result<(), Failure> {
    match args.action {
        RolloutAction::Start(args) => start(args).await,
        RolloutAction::Status(args) => status(args).await,
        RolloutAction::Pause(args) => control(args, pb::RolloutAction::Pause, "paused").await,
        RolloutAction::Resume(args) => control(args, pb::RolloutAction::Resume, "resumed").await,
        RolloutAction::Abort(args) => control(args, pb::RolloutAction::Abort, "aborted").await,
        RolloutAction::Advance(args) => control(args, pb::RolloutAction::Advance, "advanced").await,
        RolloutAction::Promote(args) => control(args, pb::RolloutAction::Promote, "promoted").await,
    }
}

async fn start(args: RolloutStartArgs) -> Result<(), Failure> {
    let spec = pb::RolloutSpec {
        steps_bp: args.steps.0.clone(),
        bake_seconds: args.bake,
        guardrails: args.guardrails.iter().map(guardrail_pb).collect(),
        max_error_rate_increase: args.max_error_rate_increase,
        min_samples: args.min_samples,
        max_extensions: args.max_extensions,
        pause_when_inconclusive: args.pause_when_inconclusive,
        salt: args.salt.clone(),
        sticky_by: args.sticky_by.clone().unwrap_or_default(),
    };
    let mut client = connect(&args.client).await?;
    let request = pb::StartRolloutRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        candidate_version: args.candidate,
        spec: Some(spec),
        reason: args.reason.clone(),
    };
    let r = client.start_rollout(request).await?.into_inner();
    print_response(&args.client, &args.name, &args.label, "started", &r);
    if let Some(request) = &r.request {
        return Err(Failure {
            code: super::exit::PENDING_APPROVAL,
            message: format!(
                "the rollout did not start: the label is protected, and promotion request {} awaits approval",
                request.id
            ),
        });
    }
    Ok(())
}

async fn control(
    args: RolloutControlArgs,
    action: pb::RolloutAction,
    done: &str,
) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::ControlRolloutRequest {
        name: args.name.clone(),
        label: args.label.clone(),
        action: action.into(),
        reason: args.reason.clone(),
    };
    let r = client.control_rollout(request).await?.into_inner();
    print_response(&args.client, &args.name, &args.label, done, &r);
    Ok(())
}

/// The answer of StartRollout or ControlRollout: the rollout after the
/// call, or the promotion request that will start it.
fn print_response(
    options: &ClientOptions,
    name: &str,
    label: &str,
    done: &str,
    r: &pb::RolloutResponse,
) {
    #[derive(Serialize)]
    struct Answer<'a> {
        name: &'a str,
        label: &'a str,
        revision: u64,
        rollout: Option<RolloutJson<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<RequestJson<'a>>,
    }
    let text = || match (&r.request, &r.rollout) {
        (Some(q), _) => format!(
            "{name} {label} is protected: the rollout did not start. Promotion request {} \
             (roll out v{}) awaits {} (until {}); the rollout starts once it is approved: \
             an approver runs `promptreg approve {} --reason ...`",
            q.id,
            q.version,
            counted(q.approvals_required, "approval"),
            time_text(&q.expires),
            q.id
        ),
        (None, Some(rollout)) => {
            let mut text = format!(
                "{name} {label}: rollout {} {done}: {}; revision {}",
                rollout.id,
                where_it_stands(rollout),
                r.revision
            );
            if done == "started" {
                let spec = rollout.spec.clone().unwrap_or_default();
                text.push_str(&format!(
                    "\nsteps {}, bake {} each; see `promptreg rollout status {name} --label {label}`",
                    steps_text(&spec.steps_bp),
                    duration_text(spec.bake_seconds)
                ));
            }
            text
        }
        (None, None) => format!("{name} {label}: revision {}", r.revision),
    };
    emit(
        options,
        text,
        Answer {
            name,
            label,
            revision: r.revision,
            rollout: r.rollout.as_ref().map(RolloutJson::of),
            request: r.request.as_ref().map(RequestJson::of),
        },
    );
}

async fn status(args: RolloutStatusArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    loop {
        let request = pb::GetRolloutRequest {
            name: args.name.clone(),
            label: args.label.clone(),
        };
        let s = client.get_rollout(request).await?.into_inner();
        print_status(&args, &s);
        if !args.watch {
            return Ok(());
        }
        match s.rollout.as_ref().map(|r| r.state()) {
            Some(pb::RolloutState::Completed) => return Ok(()),
            Some(pb::RolloutState::Aborted) => {
                return Err(Failure {
                    code: 1,
                    message: "the rollout was aborted".into(),
                })
            }
            _ => tokio::time::sleep(args.interval).await,
        }
        if args.client.output == OutputFormat::Text {
            println!();
        }
    }
}

fn print_status(args: &RolloutStatusArgs, s: &pb::RolloutStatus) {
    let rollout = s.rollout.clone().unwrap_or_default();
    if args.client.output == OutputFormat::Text {
        println!("{}", status_text(&args.name, &args.label, &rollout, s));
        return;
    }
    #[derive(Serialize)]
    struct Status<'a> {
        name: &'a str,
        label: &'a str,
        rollout: RolloutJson<'a>,
        arms: Vec<ArmJson>,
        unassigned_reports: u64,
        exposed_at: Option<String>,
        decision_due: Option<String>,
        /// Newest first.
        log: Vec<LogJson<'a>>,
    }
    emit(
        &args.client,
        String::new,
        Status {
            name: &args.name,
            label: &args.label,
            rollout: RolloutJson::of(&rollout),
            arms: s.arms.iter().map(ArmJson::of).collect(),
            unassigned_reports: s.unassigned_reports,
            exposed_at: s.exposed_at.is_some().then(|| time_text(&s.exposed_at)),
            decision_due: s.decision_due.is_some().then(|| time_text(&s.decision_due)),
            log: s.log.iter().map(LogJson::of).collect(),
        },
    );
}

fn status_text(name: &str, label: &str, rollout: &pb::Rollout, s: &pb::RolloutStatus) -> String {
    let spec = rollout.spec.clone().unwrap_or_default();
    let mut lines = vec![
        format!(
            "{name} {label}: rollout {} {}, v{} stable ({}) -> v{} candidate ({})",
            rollout.id,
            where_it_stands(rollout),
            rollout.stable_version,
            short_digest(&rollout.stable_digest),
            rollout.candidate_version,
            short_digest(&rollout.candidate_digest),
        ),
        format!(
            "started by {} at {}{}",
            rollout.started_by,
            time_text(&rollout.started_at),
            match rollout.request_id {
                0 => String::new(),
                id => format!(" (promotion request {id})"),
            }
        ),
        format!(
            "steps {}; bake {}; guardrails: {}; max error rate increase: {}",
            steps_text(&spec.steps_bp),
            duration_text(spec.bake_seconds),
            guardrails_text(&spec.guardrails),
            spec.max_error_rate_increase
                .map_or_else(|| "none".to_string(), |d| d.to_string()),
        ),
        format!(
            "min samples {}; extensions {} of {} (then {}); salt {}; assigned by {}",
            spec.min_samples,
            rollout.extensions,
            spec.max_extensions,
            if spec.pause_when_inconclusive {
                "pause"
            } else {
                "abort"
            },
            spec.salt,
            if spec.sticky_by.is_empty() {
                "agent id".to_string()
            } else {
                format!("attribute {}", spec.sticky_by)
            },
        ),
        format!(
            "step started {}; exposed at {}; decision due {}",
            time_text(&rollout.step_started),
            or_text(time_text(&s.exposed_at), "not yet"),
            or_text(time_text(&s.decision_due), "-"),
        ),
        format!("unassigned reports: {}", s.unassigned_reports),
    ];
    if s.arms.is_empty() {
        lines.push("no arms: the rollout has ended".to_string());
    } else {
        let rows: Vec<Vec<String>> = s.arms.iter().map(arm_row).collect();
        lines.push(table(
            &[
                "ARM",
                "VERSION",
                "AGENTS",
                "ACKED",
                "REQUESTS",
                "ERRORS",
                "ERROR RATE (95% CI)",
                "SAFETY RATE",
                "P95",
            ],
            &rows,
        ));
    }
    lines.push("decision log (newest first):".to_string());
    let rows: Vec<Vec<String>> = s.log.iter().map(log_row).collect();
    lines.push(table(
        &[
            "REVISION", "TIME", "KIND", "STATE", "WEIGHT", "ACTOR", "REASON",
        ],
        &rows,
    ));
    lines.join("\n")
}

/// `running at 5% (step 2/4)`, `aborted: every agent is back on v1`.
fn where_it_stands(r: &pb::Rollout) -> String {
    let steps = r.spec.as_ref().map_or(0, |s| s.steps_bp.len());
    let at = format!("at {} (step {}/{steps})", percent(r.weight_bp), r.step + 1);
    match state_of(r.state) {
        Some(RolloutState::Running) => format!("running {at}"),
        Some(RolloutState::Paused) => format!("paused {at}"),
        Some(RolloutState::Aborted) => {
            format!("aborted: every agent is back on v{}", r.stable_version)
        }
        Some(RolloutState::Completed) => {
            format!("completed: the label points to v{}", r.candidate_version)
        }
        None => format!("in an unknown state ({}) {at}", r.state),
    }
}

fn arm_row(a: &pb::ArmStatus) -> Vec<String> {
    let error_rate = match finite(a.error_rate) {
        Some(rate) => format!(
            "{} ({}..{})",
            rate_text(rate),
            rate_text(a.error_rate_low),
            rate_text(a.error_rate_high)
        ),
        None => "-".to_string(),
    };
    let p95 = match a.latency_p95_ms {
        ms if ms.is_nan() => "-".to_string(),
        ms if ms.is_infinite() => "> 10000 ms".to_string(),
        ms => format!("{ms} ms"),
    };
    vec![
        arm_text(a.arm).to_string(),
        version_text(a.version),
        a.agents_assigned.to_string(),
        a.agents_acknowledged.to_string(),
        a.requests.to_string(),
        a.errors.to_string(),
        error_rate,
        finite(a.safety_rate).map_or_else(|| "-".to_string(), rate_text),
        p95,
    ]
}

fn log_row(m: &pb::LabelMove) -> Vec<String> {
    let r = m.rollout.as_ref();
    vec![
        m.revision.to_string(),
        time_text(&m.time),
        kind_name(m.kind).to_string(),
        r.and_then(|r| state_of(r.state))
            .map_or("-", RolloutState::as_str)
            .to_string(),
        r.map_or_else(|| "-".to_string(), |r| percent(r.weight_bp)),
        actor_text(m),
        m.reason.clone(),
    ]
}

pub(super) async fn report(args: ReportArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::ReportOutcomeRequest {
        agent_id: args.agent_id.clone(),
        name: args.name.clone(),
        label: args.label.clone(),
        version: args.version,
        requests: args.requests,
        errors: args.errors,
        safety_violations: args.safety_violations,
        policy_violations: args.policy_violations,
        latency_ms_sum: args.latency_ms_sum,
        latency_buckets: args.latency_buckets.clone(),
    };
    let r = client.report_outcome(request).await?.into_inner();
    let arm = arm_of(r.arm);
    #[derive(Serialize)]
    struct Reported<'a> {
        name: &'a str,
        label: &'a str,
        agent_id: &'a str,
        version: u64,
        requests: u64,
        /// `null`: no rollout runs on the label; the report was dropped.
        rollout_id: Option<u64>,
        /// `null` with a rollout: counted apart (`unassigned_reports`).
        arm: Option<&'static str>,
    }
    let (name, label) = (args.name.as_str(), args.label.as_str());
    emit(
        &args.client,
        || match (r.rollout_id, arm) {
            (0, _) => format!(
                "dropped: no rollout is running or paused on {name} {label}; nothing was counted"
            ),
            (id, None) => format!(
                "counted apart in rollout {id}: {} is not assigned v{} (see the unassigned \
                 reports of `promptreg rollout status {name} --label {label}`)",
                args.agent_id, args.version
            ),
            (id, Some(arm)) => format!(
                "counted in rollout {id}, {} arm: {} from {} on v{}",
                arm.as_str(),
                counted(args.requests, "request"),
                args.agent_id,
                args.version
            ),
        },
        Reported {
            name,
            label,
            agent_id: &args.agent_id,
            version: args.version,
            requests: args.requests,
            rollout_id: (r.rollout_id != 0).then_some(r.rollout_id),
            arm: arm.map(Arm::as_str),
        },
    );
    Ok(())
}

fn guardrail_pb(g: &Guardrail) -> pb::Guardrail {
    let metric = match g.metric {
        Metric::ErrorRate => pb::GuardrailMetric::ErrorRate,
        Metric::SafetyRate => pb::GuardrailMetric::SafetyRate,
        Metric::PolicyRate => pb::GuardrailMetric::PolicyRate,
        Metric::LatencyP95Ms => pb::GuardrailMetric::LatencyP95Ms,
    };
    pb::Guardrail {
        metric: metric.into(),
        max: g.max,
    }
}

/// An arm for text: `stable`, `candidate`, or `-`.
pub(super) fn arm_text(raw: i32) -> &'static str {
    arm_of(raw).map_or("-", Arm::as_str)
}

fn steps_text(steps_bp: &[u32]) -> String {
    let steps: Vec<String> = steps_bp.iter().map(|bp| percent(*bp)).collect();
    steps.join(", ")
}

fn guardrails_text(guardrails: &[pb::Guardrail]) -> String {
    if guardrails.is_empty() {
        return "none".to_string();
    }
    let all: Vec<String> = guardrails
        .iter()
        .map(|g| format!("{}<={}", metric_name(g.metric), g.max))
        .collect();
    all.join(", ")
}

/// Whole seconds in the largest unit that divides them: `1d`, `10m`, `90s`.
fn duration_text(seconds: u64) -> String {
    match seconds {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A rate in 0..1 as a percentage to 0.01%.
fn rate_text(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

fn or_text(text: String, otherwise: &str) -> String {
    if text.is_empty() {
        otherwise.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(duration_text(86_400), "1d");
        assert_eq!(duration_text(7200), "2h");
        assert_eq!(duration_text(600), "10m");
        assert_eq!(duration_text(90), "90s");
    }

    #[test]
    fn a_rollout_says_where_it_stands_in_percent_and_steps() {
        let mut r = pb::Rollout {
            id: 3,
            stable_version: 1,
            candidate_version: 2,
            state: pb::RolloutState::Paused.into(),
            step: 1,
            weight_bp: 50,
            spec: Some(pb::RolloutSpec {
                steps_bp: vec![1, 50, 10_000],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(where_it_stands(&r), "paused at 0.5% (step 2/3)");
        r.state = pb::RolloutState::Aborted.into();
        assert_eq!(where_it_stands(&r), "aborted: every agent is back on v1");
    }

    #[test]
    fn an_arm_without_requests_has_no_rates() {
        let a = pb::ArmStatus {
            arm: pb::Arm::Candidate.into(),
            version: 2,
            error_rate: f64::NAN,
            error_rate_low: f64::NAN,
            error_rate_high: f64::NAN,
            safety_rate: f64::NAN,
            latency_p95_ms: f64::NAN,
            ..Default::default()
        };
        let row = arm_row(&a);
        assert_eq!((row[0].as_str(), row[6].as_str()), ("candidate", "-"));
        let json = super::super::json::to_json(ArmJson::of(&a));
        assert!(json["error_rate"].is_null() && json["latency_p95_ms"].is_null());
    }
}
