//! The rollout RPCs (StartRollout, GetRollout, ControlRollout,
//! ReportOutcome) translated, and the rollout's wire form.

use super::access::{authorize, take_principal};
use super::convert::{self, prompt_name};
use super::pb;
use super::timestamp::to_timestamp;
use crate::domain::access::{Action, Scope};
use crate::domain::rollout::{
    Arm, Counts, Guardrail, Metric, Rollout, RolloutSpec, RolloutState, Transition, BUCKETS,
};
use crate::domain::{LabelName, ValidationError};
use crate::registry::rollout::{OutcomeReport, RolloutChanged, RolloutReport};
use crate::registry::{Registry, RegistryError};
use tonic::{Request, Status};

type Answer<T> = Result<T, Status>;

fn invalid(error: ValidationError) -> Status {
    RegistryError::from(error).into()
}

pub async fn start_rollout(
    registry: &Registry,
    mut request: Request<pb::StartRolloutRequest>,
) -> Answer<pb::RolloutResponse> {
    let principal = take_principal(&mut request)?;
    let trace_id = convert::trace_id(&request);
    let r = request.into_inner();
    let candidate =
        crate::domain::validate::version_number("candidate_version", r.candidate_version)
            .map_err(invalid)?;
    let spec = spec_from_pb(r.spec).map_err(invalid)?;
    let mv =
        super::moves::move_request(registry, principal, &r.name, &r.label, r.reason, trace_id)?;
    let changed = registry.start_rollout(mv, candidate, spec).await?;
    if let Some(rollout) = &changed.rollout {
        tracing::info!(rollout = rollout.id, prompt = %rollout.name, label = %rollout.label,
            stable = rollout.stable.version, candidate = rollout.candidate.version,
            weight_bp = rollout.weight_bp, "rollout started");
    }
    Ok(response(changed))
}

pub async fn control_rollout(
    registry: &Registry,
    mut request: Request<pb::ControlRolloutRequest>,
) -> Answer<pb::RolloutResponse> {
    let principal = take_principal(&mut request)?;
    let trace_id = convert::trace_id(&request);
    let r = request.into_inner();
    let transition = match pb::RolloutAction::try_from(r.action) {
        Ok(pb::RolloutAction::Pause) => Transition::Pause,
        Ok(pb::RolloutAction::Resume) => Transition::Resume,
        Ok(pb::RolloutAction::Abort) => Transition::Abort,
        Ok(pb::RolloutAction::Advance) => Transition::Advance,
        Ok(pb::RolloutAction::Promote) => Transition::Promote,
        _ => {
            return Err(invalid(ValidationError::new(
                "action",
                format!(
                    "is {}; one of ROLLOUT_ACTION_PAUSE, _RESUME, _ABORT, _ADVANCE, _PROMOTE",
                    r.action
                ),
            )))
        }
    };
    let mv =
        super::moves::move_request(registry, principal, &r.name, &r.label, r.reason, trace_id)?;
    let changed = registry.control_rollout(mv, transition).await?;
    Ok(response(changed))
}

pub async fn get_rollout(
    registry: &Registry,
    mut request: Request<pb::GetRolloutRequest>,
) -> Answer<pb::RolloutStatus> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = prompt_name(&r.name, registry.limits()).map_err(invalid)?;
    let label = LabelName::parse("label", &r.label).map_err(invalid)?;
    authorize(&principal, Action::Inspect, Scope::Prompt(&name))?;
    let report = registry
        .off_runtime(move |r| r.rollout_status(&name, &label))
        .await?;
    Ok(status(report))
}

pub async fn report_outcome(
    registry: &Registry,
    mut request: Request<pb::ReportOutcomeRequest>,
) -> Answer<pb::ReportOutcomeResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = prompt_name(&r.name, registry.limits()).map_err(invalid)?;
    let label = LabelName::parse("label", &r.label).map_err(invalid)?;
    authorize(&principal, Action::Ack, Scope::Prompt(&name))?;
    crate::domain::validate::agent_id("agent_id", &r.agent_id).map_err(invalid)?;
    let version = crate::domain::validate::version_number("version", r.version).map_err(invalid)?;
    let mut counts = Counts {
        requests: r.requests,
        errors: r.errors,
        safety_violations: r.safety_violations,
        policy_violations: r.policy_violations,
        latency_ms_sum: r.latency_ms_sum,
        ..Counts::default()
    };
    match r.latency_buckets.len() {
        0 => {}
        n if n == BUCKETS => counts.latency_buckets.copy_from_slice(&r.latency_buckets),
        n => {
            return Err(invalid(ValidationError::new(
                "latency_buckets",
                format!("has {n} counts; empty or {BUCKETS} (the bounds documented on ReportOutcomeRequest)"),
            )))
        }
    }
    let report = OutcomeReport {
        agent_id: r.agent_id,
        name: name.clone(),
        label,
        version,
        counts,
    };
    let (rollout_id, arm) = registry.report_outcome(report)?;
    if rollout_id == 0 {
        // Nothing runs on the label: still NOT_FOUND for an unknown prompt.
        registry.off_runtime(move |r| r.check_prompt(&name)).await?;
    }
    Ok(pb::ReportOutcomeResponse {
        rollout_id,
        arm: arm.map_or(pb::Arm::Unspecified, arm_pb).into(),
    })
}

/// For GetVersion by label with an agent id, while a rollout runs on the
/// label: the rollout, the agent's arm and the version to resolve.
pub fn agent_selector(
    registry: &Registry,
    name: &crate::domain::PromptName,
    selector: &crate::registry::VersionSelector,
    req: &pb::GetVersionRequest,
) -> Answer<Option<(u64, pb::Arm, crate::registry::VersionSelector)>> {
    use crate::registry::VersionSelector;
    let VersionSelector::Label(label) = selector else {
        return Ok(None);
    };
    if req.agent_id.is_empty() {
        return Ok(None);
    }
    crate::domain::validate::agent_id("agent_id", &req.agent_id).map_err(invalid)?;
    crate::domain::validate::agent_attributes("agent_attributes", &req.agent_attributes)
        .map_err(invalid)?;
    let attributes: std::collections::BTreeMap<String, String> = req
        .agent_attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let Some((rollout, arm)) = registry.agent_arm(name, label, &req.agent_id, Some(&attributes))
    else {
        return Ok(None);
    };
    Ok(Some((
        rollout.id,
        arm_pb(arm),
        VersionSelector::Number(rollout.side(arm).version),
    )))
}

fn response(changed: RolloutChanged) -> pb::RolloutResponse {
    pb::RolloutResponse {
        rollout: changed.rollout.map(rollout),
        revision: changed.revision,
        request: changed.request.map(super::release::promotion_request),
    }
}

pub fn arm_pb(arm: Arm) -> pb::Arm {
    match arm {
        Arm::Stable => pb::Arm::Stable,
        Arm::Candidate => pb::Arm::Candidate,
    }
}

fn state_pb(state: RolloutState) -> pb::RolloutState {
    match state {
        RolloutState::Running => pb::RolloutState::Running,
        RolloutState::Paused => pb::RolloutState::Paused,
        RolloutState::Aborted => pb::RolloutState::Aborted,
        RolloutState::Completed => pb::RolloutState::Completed,
    }
}

fn metric_pb(metric: Metric) -> pb::GuardrailMetric {
    match metric {
        Metric::ErrorRate => pb::GuardrailMetric::ErrorRate,
        Metric::SafetyRate => pb::GuardrailMetric::SafetyRate,
        Metric::PolicyRate => pb::GuardrailMetric::PolicyRate,
        Metric::LatencyP95Ms => pb::GuardrailMetric::LatencyP95Ms,
    }
}

pub fn spec_pb(s: RolloutSpec) -> pb::RolloutSpec {
    pb::RolloutSpec {
        steps_bp: s.steps_bp,
        bake_seconds: s.bake_secs,
        guardrails: s
            .guardrails
            .into_iter()
            .map(|g| pb::Guardrail {
                metric: metric_pb(g.metric).into(),
                max: g.max,
            })
            .collect(),
        max_error_rate_increase: s.max_error_rate_increase,
        min_samples: s.min_samples,
        max_extensions: s.max_extensions,
        pause_when_inconclusive: s.pause_when_inconclusive,
        salt: s.salt,
        sticky_by: s.sticky_by.unwrap_or_default(),
    }
}

/// The request's spec, before its field rules (`RolloutSpec::validate`).
fn spec_from_pb(spec: Option<pb::RolloutSpec>) -> Result<RolloutSpec, ValidationError> {
    let s = spec.ok_or_else(|| ValidationError::new("spec", "is required"))?;
    let guardrails = s
        .guardrails
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let metric = match pb::GuardrailMetric::try_from(g.metric) {
                Ok(pb::GuardrailMetric::ErrorRate) => Metric::ErrorRate,
                Ok(pb::GuardrailMetric::SafetyRate) => Metric::SafetyRate,
                Ok(pb::GuardrailMetric::PolicyRate) => Metric::PolicyRate,
                Ok(pb::GuardrailMetric::LatencyP95Ms) => Metric::LatencyP95Ms,
                _ => {
                    return Err(ValidationError::new(
                        format!("spec.guardrails[{i}].metric"),
                        format!("is {}; a GUARDRAIL_METRIC_ value", g.metric),
                    ))
                }
            };
            Ok(Guardrail { metric, max: g.max })
        })
        .collect::<Result<_, _>>()?;
    Ok(RolloutSpec {
        steps_bp: s.steps_bp,
        bake_secs: s.bake_seconds,
        guardrails,
        max_error_rate_increase: s.max_error_rate_increase,
        min_samples: s.min_samples,
        max_extensions: s.max_extensions,
        pause_when_inconclusive: s.pause_when_inconclusive,
        salt: s.salt,
        sticky_by: (!s.sticky_by.is_empty()).then_some(s.sticky_by),
    })
}

pub fn rollout(r: Rollout) -> pb::Rollout {
    pb::Rollout {
        id: r.id,
        name: r.name.to_string(),
        label: r.label.to_string(),
        stable_version: r.stable.version,
        stable_digest: r.stable.digest.to_string(),
        candidate_version: r.candidate.version,
        candidate_digest: r.candidate.digest.to_string(),
        state: state_pb(r.state).into(),
        step: r.step,
        weight_bp: r.weight_bp,
        previous_weight_bp: r.previous_weight_bp,
        spec: Some(spec_pb(r.spec)),
        extensions: r.extensions,
        step_started: Some(to_timestamp(r.step_started)),
        started_by: r.started_by,
        started_at: Some(to_timestamp(r.started_at)),
        request_id: r.request_id.unwrap_or(0),
    }
}

fn status(report: RolloutReport) -> pb::RolloutStatus {
    pb::RolloutStatus {
        rollout: Some(rollout(report.rollout)),
        arms: report
            .arms
            .into_iter()
            .map(|a| {
                let c = &a.counts;
                let errors = crate::domain::rollout::wilson(c.errors, c.requests, 0.95);
                pb::ArmStatus {
                    arm: arm_pb(a.arm).into(),
                    version: a.version,
                    agents_assigned: a.agents_assigned,
                    agents_acknowledged: a.agents_acknowledged,
                    requests: c.requests,
                    errors: c.errors,
                    safety_violations: c.safety_violations,
                    policy_violations: c.policy_violations,
                    error_rate: errors.estimate,
                    error_rate_low: errors.low,
                    error_rate_high: errors.high,
                    safety_rate: c.rate(c.safety_violations),
                    latency_p95_ms: c.latency_quantile_ms(0.95),
                }
            })
            .collect(),
        unassigned_reports: report.unassigned_reports,
        exposed_at: report.exposed_at.map(to_timestamp),
        decision_due: report.decision_due.map(to_timestamp),
        log: report.log.into_iter().map(convert::label_move).collect(),
    }
}
