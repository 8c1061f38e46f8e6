//! The CLI's JSON output: one `Serialize` shape per kind of answer, each
//! built from its protobuf message in one place, and `emit`, which prints a
//! result as text or as one JSON object on a line. Text output is in
//! `text.rs`.
//!
//! Objects print with their keys in alphabetical order (`emit` goes through
//! `serde_json::Value`, whose map is sorted): the order the CLI has always
//! printed, whatever the order of a struct's fields.

use super::{ClientOptions, OutputFormat};
use crate::domain::rollout::{percent, Arm, Metric, RolloutState};
use crate::grpc::pb;
use crate::grpc::timestamp::from_timestamp;
use crate::time::format_micros;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// Prints one result: text as given, or the JSON object on one line.
pub(super) fn emit(options: &ClientOptions, text: impl FnOnce() -> String, json: impl Serialize) {
    match options.output {
        OutputFormat::Text => println!("{}", text()),
        OutputFormat::Json => println!("{}", to_json(json)),
    }
}

/// A shape as a JSON value (keys sorted).
pub(super) fn to_json(json: impl Serialize) -> Value {
    serde_json::to_value(json).expect("CLI output shapes have string keys")
}

/// A time as RFC 3339 text, empty when unset.
pub(super) fn time_text(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref()
        .map(|t| format_micros(from_timestamp(t)))
        .unwrap_or_default()
}

/// A version number, `null` for none (0).
pub(super) fn version_or_null(version: u64) -> Option<u64> {
    (version != 0).then_some(version)
}

pub(super) fn kind_name(kind: i32) -> &'static str {
    match pb::MoveKind::try_from(kind) {
        Ok(pb::MoveKind::Promote) => "promote",
        Ok(pb::MoveKind::Rollback) => "rollback",
        Ok(pb::MoveKind::Remove) => "remove",
        Ok(pb::MoveKind::Rollout) => "rollout",
        _ => "unknown",
    }
}

/// A template: `{"text": ...}` or `{"chat": [{"role", "content"}, ...]}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum TemplateJson<'a> {
    Text(&'a str),
    Chat(Vec<MessageJson<'a>>),
}

#[derive(Serialize)]
pub(super) struct MessageJson<'a> {
    role: &'a str,
    content: &'a str,
}

impl<'a> TemplateJson<'a> {
    /// `None` for a template with no content.
    pub(super) fn of(template: &'a Option<pb::Template>) -> Option<TemplateJson<'a>> {
        Some(match template.as_ref()?.kind.as_ref()? {
            pb::template::Kind::Text(text) => TemplateJson::Text(text),
            pb::template::Kind::Chat(chat) => TemplateJson::Chat(
                chat.messages
                    .iter()
                    .map(|m| MessageJson {
                        role: &m.role,
                        content: &m.content,
                    })
                    .collect(),
            ),
        })
    }
}

/// A version with its content (`get`, `resolve`'s `content`).
#[derive(Serialize)]
pub(super) struct VersionJson<'a> {
    name: &'a str,
    version: u64,
    digest: &'a str,
    revision: u64,
    published_revision: u64,
    template: Option<TemplateJson<'a>>,
    variables: &'a [String],
    model_config: Value,
    author: &'a str,
    description: &'a str,
    tags: &'a HashMap<String, String>,
    created_at: String,
}

impl<'a> From<&'a pb::Version> for VersionJson<'a> {
    fn from(v: &'a pb::Version) -> VersionJson<'a> {
        VersionJson {
            name: &v.name,
            version: v.version,
            digest: &v.digest,
            revision: v.revision,
            published_revision: v.revision,
            template: TemplateJson::of(&v.template),
            variables: &v.variables,
            model_config: serde_json::from_str(&v.model_config_json).unwrap_or(Value::Null),
            author: &v.author,
            description: &v.description,
            tags: &v.tags,
            created_at: time_text(&v.created_at),
        }
    }
}

/// A move of a label's history (`history`, `resolve`'s `move`).
#[derive(Serialize)]
pub(super) struct MoveJson<'a> {
    name: &'a str,
    label: &'a str,
    revision: u64,
    kind: &'static str,
    from_version: Option<u64>,
    to_version: Option<u64>,
    digest: &'a str,
    actor: &'a str,
    reason: &'a str,
    time: String,
    trace_id: &'a str,
    /// Only on a move that completed a promotion request.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    approvers: &'a [String],
    /// Only on an emergency rollback.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    emergency: bool,
}

impl<'a> From<&'a pb::LabelMove> for MoveJson<'a> {
    fn from(m: &'a pb::LabelMove) -> MoveJson<'a> {
        MoveJson {
            name: &m.name,
            label: &m.label,
            revision: m.revision,
            kind: kind_name(m.kind),
            from_version: version_or_null(m.from_version),
            to_version: version_or_null(m.to_version),
            digest: &m.digest,
            actor: &m.actor,
            reason: &m.reason,
            time: time_text(&m.time),
            trace_id: &m.trace_id,
            request_id: (m.request_id != 0).then_some(m.request_id),
            approvers: &m.approvers,
            emergency: m.emergency,
        }
    }
}

/// An agent as `--wait` reports a lagging one.
#[derive(Serialize)]
pub(super) struct AgentJson<'a> {
    agent_id: &'a str,
    applied_version: Option<u64>,
    applied_digest: &'a str,
    target_version: Option<u64>,
    last_seen: String,
    host: &'a str,
    rejected_version: Option<u64>,
    rejected_reason: &'a str,
}

impl<'a> From<&'a pb::AgentStatus> for AgentJson<'a> {
    fn from(a: &'a pb::AgentStatus) -> AgentJson<'a> {
        AgentJson {
            agent_id: &a.agent_id,
            applied_version: version_or_null(a.applied_version),
            applied_digest: &a.applied_digest,
            target_version: version_or_null(a.target_version),
            last_seen: time_text(&a.last_seen),
            host: a.agent.as_ref().map_or("", |i| &i.host),
            rejected_version: version_or_null(a.rejected_version),
            rejected_reason: &a.rejected_reason,
        }
    }
}

/// An agent as `fleet` lists it: `AgentJson` and its state, SDK and arm
/// (`stable`, `candidate`; `null` when no rollout runs on the label).
#[derive(Serialize)]
pub(super) struct FleetAgentJson<'a> {
    #[serde(flatten)]
    agent: AgentJson<'a>,
    connected: bool,
    in_sync: bool,
    sdk: &'a str,
    arm: Option<&'static str>,
}

impl<'a> From<&'a pb::AgentStatus> for FleetAgentJson<'a> {
    fn from(a: &'a pb::AgentStatus) -> FleetAgentJson<'a> {
        FleetAgentJson {
            agent: AgentJson::from(a),
            connected: a.connected,
            in_sync: a.in_sync,
            sdk: a.agent.as_ref().map_or("", |i| &i.sdk),
            arm: arm_of(a.arm).map(Arm::as_str),
        }
    }
}

/// A period during which a label pointed to a version (`whois`); `until`
/// is `null` while it still does.
#[derive(Serialize)]
pub(super) struct LabelPeriodJson<'a> {
    label: &'a str,
    from: String,
    from_revision: u64,
    until: Option<String>,
    until_revision: Option<u64>,
    actor: &'a str,
    reason: &'a str,
    trace_id: &'a str,
}

impl<'a> From<&'a pb::LabelPeriod> for LabelPeriodJson<'a> {
    fn from(p: &'a pb::LabelPeriod) -> LabelPeriodJson<'a> {
        LabelPeriodJson {
            label: &p.label,
            from: time_text(&p.from),
            from_revision: p.from_revision,
            until: (p.until_revision != 0).then(|| time_text(&p.until)),
            until_revision: version_or_null(p.until_revision),
            actor: &p.actor,
            reason: &p.reason,
            trace_id: &p.trace_id,
        }
    }
}

/// An entry of the audit ledger (`audit`).
#[derive(Serialize)]
pub(super) struct AuditEntryJson<'a> {
    sequence: u64,
    revision: u64,
    time: String,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    detail: &'a str,
    reason: &'a str,
    trace_id: &'a str,
    previous_hash: &'a str,
    hash: &'a str,
}

impl<'a> From<&'a pb::AuditEntry> for AuditEntryJson<'a> {
    fn from(e: &'a pb::AuditEntry) -> AuditEntryJson<'a> {
        AuditEntryJson {
            sequence: e.sequence,
            revision: e.revision,
            time: time_text(&e.time),
            actor: &e.actor,
            action: &e.action,
            target: &e.target,
            detail: &e.detail,
            reason: &e.reason,
            trace_id: &e.trace_id,
            previous_hash: &e.previous_hash,
            hash: &e.hash,
        }
    }
}

/// A signed audit checkpoint, as `audit checkpoint` prints it and
/// `audit verify --checkpoint` reads it back (`parse_checkpoint`).
#[derive(Serialize)]
pub(super) struct CheckpointJson<'a> {
    sequence: u64,
    head_hash: &'a str,
    time: String,
    key_id: &'a str,
    signature: String,
}

impl<'a> From<&'a pb::Checkpoint> for CheckpointJson<'a> {
    fn from(c: &'a pb::Checkpoint) -> CheckpointJson<'a> {
        CheckpointJson {
            sequence: c.sequence,
            head_hash: &c.head_hash,
            time: time_text(&c.time),
            key_id: &c.key_id,
            signature: hex::encode(&c.signature),
        }
    }
}

/// A checkpoint printed by `CheckpointJson`, read back.
pub(super) fn parse_checkpoint(raw: &str) -> Result<pb::Checkpoint, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let text = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("\"{field}\" must be a string"))
    };
    let time = crate::time::parse_rfc3339(&text("time")?)?;
    Ok(pb::Checkpoint {
        sequence: value
            .get("sequence")
            .and_then(Value::as_u64)
            .ok_or("\"sequence\" must be a number")?,
        head_hash: text("head_hash")?,
        time: Some(crate::grpc::timestamp::to_timestamp(time)),
        key_id: text("key_id")?,
        signature: hex::decode(text("signature")?)
            .map_err(|e| format!("\"signature\" is not hex: {e}"))?,
    })
}

pub(super) fn metric_name(raw: i32) -> &'static str {
    match pb::GuardrailMetric::try_from(raw) {
        Ok(pb::GuardrailMetric::ErrorRate) => Metric::ErrorRate.as_str(),
        Ok(pb::GuardrailMetric::SafetyRate) => Metric::SafetyRate.as_str(),
        Ok(pb::GuardrailMetric::PolicyRate) => Metric::PolicyRate.as_str(),
        Ok(pb::GuardrailMetric::LatencyP95Ms) => Metric::LatencyP95Ms.as_str(),
        _ => "unknown",
    }
}

pub(super) fn state_of(raw: i32) -> Option<RolloutState> {
    match pb::RolloutState::try_from(raw) {
        Ok(pb::RolloutState::Running) => Some(RolloutState::Running),
        Ok(pb::RolloutState::Paused) => Some(RolloutState::Paused),
        Ok(pb::RolloutState::Aborted) => Some(RolloutState::Aborted),
        Ok(pb::RolloutState::Completed) => Some(RolloutState::Completed),
        _ => None,
    }
}

/// An agent's arm (`None`: no rollout, or counted apart).
pub(super) fn arm_of(raw: i32) -> Option<Arm> {
    match pb::Arm::try_from(raw) {
        Ok(pb::Arm::Stable) => Some(Arm::Stable),
        Ok(pb::Arm::Candidate) => Some(Arm::Candidate),
        _ => None,
    }
}

/// A figure, `None` (JSON `null`) when it is NaN or infinite.
pub(super) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
/// A rollout as JSON. `step` counts from 1 as the text does (the API's
/// index + 1), of `steps`.
#[derive(Serialize)]
pub(super) struct RolloutJson<'a> {
    id: u64,
    name: &'a str,
    label: &'a str,
    state: &'static str,
    step: u32,
    steps: usize,
    weight_bp: u32,
    weight: String,
    previous_weight_bp: u32,
    stable: SideJson<'a>,
    candidate: SideJson<'a>,
    spec: SpecJson<'a>,
    extensions: u32,
    step_started: String,
    started_by: &'a str,
    started_at: String,
    request_id: Option<u64>,
}

#[derive(Serialize)]
struct SideJson<'a> {
    version: u64,
    digest: &'a str,
}

#[derive(Serialize)]
struct SpecJson<'a> {
    steps_bp: &'a [u32],
    bake_seconds: u64,
    guardrails: Vec<GuardrailJson>,
    max_error_rate_increase: Option<f64>,
    min_samples: u64,
    max_extensions: u32,
    pause_when_inconclusive: bool,
    salt: &'a str,
    sticky_by: Option<&'a str>,
}

#[derive(Serialize)]
struct GuardrailJson {
    metric: &'static str,
    max: f64,
}

impl<'a> RolloutJson<'a> {
    pub(super) fn of(r: &'a pb::Rollout) -> RolloutJson<'a> {
        let spec = r.spec.as_ref();
        RolloutJson {
            id: r.id,
            name: &r.name,
            label: &r.label,
            state: state_of(r.state).map_or("unknown", RolloutState::as_str),
            step: r.step + 1,
            steps: spec.map_or(0, |s| s.steps_bp.len()),
            weight_bp: r.weight_bp,
            weight: percent(r.weight_bp),
            previous_weight_bp: r.previous_weight_bp,
            stable: SideJson {
                version: r.stable_version,
                digest: &r.stable_digest,
            },
            candidate: SideJson {
                version: r.candidate_version,
                digest: &r.candidate_digest,
            },
            spec: SpecJson {
                steps_bp: spec.map_or(&[], |s| &s.steps_bp),
                bake_seconds: spec.map_or(0, |s| s.bake_seconds),
                guardrails: spec.map_or_else(Vec::new, |s| {
                    s.guardrails
                        .iter()
                        .map(|g| GuardrailJson {
                            metric: metric_name(g.metric),
                            max: g.max,
                        })
                        .collect()
                }),
                max_error_rate_increase: spec.and_then(|s| s.max_error_rate_increase),
                min_samples: spec.map_or(0, |s| s.min_samples),
                max_extensions: spec.map_or(0, |s| s.max_extensions),
                pause_when_inconclusive: spec.is_some_and(|s| s.pause_when_inconclusive),
                salt: spec.map_or("", |s| &s.salt),
                sticky_by: spec.map(|s| s.sticky_by.as_str()).filter(|k| !k.is_empty()),
            },
            extensions: r.extensions,
            step_started: time_text(&r.step_started),
            started_by: &r.started_by,
            started_at: time_text(&r.started_at),
            request_id: (r.request_id != 0).then_some(r.request_id),
        }
    }
}

/// One arm of `rollout status`; rates are `null` without requests.
#[derive(Serialize)]
pub(super) struct ArmJson {
    arm: &'static str,
    version: u64,
    agents_assigned: u32,
    agents_acknowledged: u32,
    requests: u64,
    errors: u64,
    safety_violations: u64,
    policy_violations: u64,
    error_rate: Option<f64>,
    error_rate_low: Option<f64>,
    error_rate_high: Option<f64>,
    safety_rate: Option<f64>,
    latency_p95_ms: Option<f64>,
}

impl ArmJson {
    pub(super) fn of(a: &pb::ArmStatus) -> ArmJson {
        ArmJson {
            arm: arm_of(a.arm).map_or("-", Arm::as_str),
            version: a.version,
            agents_assigned: a.agents_assigned,
            agents_acknowledged: a.agents_acknowledged,
            requests: a.requests,
            errors: a.errors,
            safety_violations: a.safety_violations,
            policy_violations: a.policy_violations,
            error_rate: finite(a.error_rate),
            error_rate_low: finite(a.error_rate).and(finite(a.error_rate_low)),
            error_rate_high: finite(a.error_rate).and(finite(a.error_rate_high)),
            safety_rate: finite(a.safety_rate),
            latency_p95_ms: finite(a.latency_p95_ms),
        }
    }
}

/// A move of the decision log: the move, and the rollout's state and
/// weight after it.
#[derive(Serialize)]
pub(super) struct LogJson<'a> {
    #[serde(flatten)]
    recorded: MoveJson<'a>,
    state: Option<&'static str>,
    weight_bp: Option<u32>,
}

impl<'a> LogJson<'a> {
    pub(super) fn of(m: &'a pb::LabelMove) -> LogJson<'a> {
        let r = m.rollout.as_ref();
        LogJson {
            recorded: MoveJson::from(m),
            state: r.and_then(|r| state_of(r.state)).map(RolloutState::as_str),
            weight_bp: r.map(|r| r.weight_bp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_print_with_sorted_keys_and_null_for_no_version() {
        let m = pb::LabelMove {
            name: "p".into(),
            label: "prod".into(),
            revision: 7,
            kind: pb::MoveKind::Remove as i32,
            from_version: 2,
            to_version: 0,
            ..Default::default()
        };
        assert_eq!(
            to_json(MoveJson::from(&m)).to_string(),
            r#"{"actor":"","digest":"","from_version":2,"kind":"remove","label":"prod","name":"p","reason":"","revision":7,"time":"","to_version":null,"trace_id":""}"#
        );
    }

    #[test]
    fn templates_are_text_or_chat_and_null_without_content() {
        let chat = Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: vec![pb::ChatMessage {
                    role: "user".into(),
                    content: "{{q}}".into(),
                }],
            })),
        });
        assert_eq!(
            to_json(TemplateJson::of(&chat)).to_string(),
            r#"{"chat":[{"content":"{{q}}","role":"user"}]}"#
        );
        let text = Some(pb::Template {
            kind: Some(pb::template::Kind::Text("hi".into())),
        });
        assert_eq!(
            to_json(TemplateJson::of(&text)).to_string(),
            r#"{"text":"hi"}"#
        );
        assert_eq!(to_json(TemplateJson::of(&None)).to_string(), "null");
    }

    #[test]
    fn a_fleet_agent_is_the_agent_shape_and_its_state() {
        let a = pb::AgentStatus {
            agent_id: "a1".into(),
            connected: true,
            applied_version: 3,
            ..Default::default()
        };
        assert_eq!(
            to_json(FleetAgentJson::from(&a)).to_string(),
            r#"{"agent_id":"a1","applied_digest":"","applied_version":3,"arm":null,"connected":true,"host":"","in_sync":false,"last_seen":"","rejected_reason":"","rejected_version":null,"sdk":"","target_version":null}"#
        );
    }
}
