//! Conversions between wire types (`pb`) and domain types. A request is
//! checked by the domain's field rules, with the field's proto name; the
//! errors are [`ValidationError`]s, which `status` maps to
//! INVALID_ARGUMENT. Only the shape of a message (a oneof that must be set,
//! an enum value this server knows) is checked here.

use super::pb;
use super::status::bounded;
use super::timestamp::to_timestamp;
use crate::domain::validate;
use crate::domain::{
    ChatMessage, Content, LabelMove, LabelName, LabelTarget, Limits, MoveKind, NewVersion,
    PromptName, PromptSummary, TemplateBody, ValidationError, Version,
};
use crate::registry::Moved;
use tonic::{Code, Status};

/// A time from a request, held to the domain's rule (`instant_micros`).
pub fn instant(
    field: &str,
    time: &prost_types::Timestamp,
) -> Result<crate::domain::Micros, ValidationError> {
    crate::domain::instant_micros(field, time.seconds, time.nanos)
}

pub fn prompt_name(raw: &str, limits: &Limits) -> Result<PromptName, ValidationError> {
    PromptName::parse("name", raw, limits.max_name_bytes)
}

pub fn label_name(raw: &str) -> Result<LabelName, ValidationError> {
    LabelName::parse("label", raw)
}

pub fn movable_label(raw: &str) -> Result<LabelName, ValidationError> {
    LabelName::parse_movable("label", raw)
}

/// The W3C trace id of a request's `traceparent` metadata
/// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`), when it has a
/// valid one.
pub fn trace_id<T>(request: &tonic::Request<T>) -> Option<String> {
    let header = request.metadata().get("traceparent")?.to_str().ok()?;
    let mut parts = header.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_string())
}

/// Validates a publish request into a [`NewVersion`].
pub fn new_version(
    req: pb::PublishVersionRequest,
    limits: &Limits,
    trace_id: Option<String>,
) -> Result<NewVersion, ValidationError> {
    let name = prompt_name(&req.name, limits)?;
    let template = match req.template.and_then(|t| t.kind) {
        None => {
            return Err(ValidationError::new(
                "template",
                "is required: set text or chat",
            ))
        }
        Some(pb::template::Kind::Text(text)) => TemplateBody::Text(text),
        Some(pb::template::Kind::Chat(chat)) => TemplateBody::Chat(
            chat.messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        ),
    };
    let content = Content::validate(template, &req.variables, &req.model_config_json, limits)?;
    validate::required_text("author", &req.author, limits.max_actor_bytes)?;
    validate::optional_text("description", &req.description, limits.max_text_bytes)?;
    let tags = req.tags.into_iter().collect();
    validate::tags(&tags, limits)?;
    Ok(NewVersion {
        trace_id,
        name,
        content,
        author: req.author,
        description: req.description,
        tags,
    })
}

pub fn version(v: Version, with_content: bool) -> pb::Version {
    let template = (with_content && !v.pruned).then(|| pb::Template {
        kind: Some(match v.content.template {
            TemplateBody::Text(text) => pb::template::Kind::Text(text),
            TemplateBody::Chat(messages) => pb::template::Kind::Chat(pb::ChatTemplate {
                messages: messages
                    .into_iter()
                    .map(|m| pb::ChatMessage {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
            }),
        }),
    });
    pb::Version {
        name: v.name.to_string(),
        version: v.number,
        digest: v.digest.to_string(),
        template,
        variables: v.content.variables,
        model_config_json: v.content.model_config_json,
        author: v.author,
        description: v.description,
        tags: v.tags.into_iter().collect(),
        created_at: Some(to_timestamp(v.created_at)),
        revision: v.revision,
        signature: v
            .signature
            .as_ref()
            .map(|s| s.bytes.clone())
            .unwrap_or_default(),
        signing_key_id: v.signature.map(|s| s.key_id).unwrap_or_default(),
        pruned: v.pruned,
    }
}

pub fn prompt_summary(p: PromptSummary) -> pb::PromptSummary {
    pb::PromptSummary {
        name: p.name.to_string(),
        latest_version: p.latest_version,
        latest_digest: p.latest_digest.to_string(),
        updated_at: Some(to_timestamp(p.updated_at)),
    }
}

pub fn label(l: LabelTarget) -> pb::Label {
    pb::Label {
        label: l.label.to_string(),
        version: l.version,
        digest: l.digest.to_string(),
        revision: l.revision,
        updated_at: Some(to_timestamp(l.updated_at)),
    }
}

pub fn move_kind(kind: MoveKind) -> pb::MoveKind {
    match kind {
        MoveKind::Promote => pb::MoveKind::Promote,
        MoveKind::Rollback => pb::MoveKind::Rollback,
        MoveKind::Remove => pb::MoveKind::Remove,
        MoveKind::Rollout => pb::MoveKind::Rollout,
    }
}

pub fn label_move(m: LabelMove) -> pb::LabelMove {
    pb::LabelMove {
        name: m.name.to_string(),
        label: m.label.to_string(),
        revision: m.revision,
        time: Some(to_timestamp(m.time)),
        kind: move_kind(m.kind).into(),
        from_version: m.from_version.unwrap_or(0),
        to_version: m.to_version.unwrap_or(0),
        digest: m.digest.map(|d| d.to_string()).unwrap_or_default(),
        actor: m.actor,
        reason: m.reason,
        trace_id: m.trace_id.unwrap_or_default(),
        request_id: m.clearance.request.unwrap_or(0),
        approvers: m.clearance.approvers,
        emergency: m.clearance.emergency,
        rollout: m.rollout.map(|r| super::rollout::rollout(*r)),
    }
}

pub fn moved(m: Moved) -> pb::LabelMoveResponse {
    pb::LabelMoveResponse {
        changed: m.changed,
        revision: m.revision,
        from_version: m.from_version.unwrap_or(0),
        to_version: m.to_version.unwrap_or(0),
        digest: m.digest.map(|d| d.to_string()).unwrap_or_default(),
        request: m.request.map(super::release::promotion_request),
        emergency: m.emergency,
        rollout_aborted: m.rollout_aborted.unwrap_or(0),
    }
}

// --- watch and fleet ------------------------------------------------------------

use super::wire::WatchFrame;
use crate::domain::{Change, Selector};
use crate::registry::fleet::{AgentHello, AgentLabelStatus, FleetCounts};
use crate::registry::watch::{LabelState, WatchEnd, WatchEvent, WatchRequest};
use prost::Message as _;

pub fn watch_request(
    req: pb::WatchRequest,
    limits: &Limits,
) -> Result<WatchRequest, ValidationError> {
    let mut selector = Selector {
        include_versions: req.include_versions,
        ..Selector::default()
    };
    for (i, name) in req.names.iter().enumerate() {
        let name = PromptName::parse(&format!("names[{i}]"), name, limits.max_name_bytes)?;
        selector.names.insert(name);
    }
    for (i, prefix) in req.prefixes.iter().enumerate() {
        PromptName::check_prefix(&format!("prefixes[{i}]"), prefix, limits.max_name_bytes)?;
        selector.prefixes.push(prefix.clone());
    }
    for (i, label) in req.labels.iter().enumerate() {
        selector
            .labels
            .insert(LabelName::parse(&format!("labels[{i}]"), label)?);
    }
    let agent = if req.agent_id.is_empty() {
        None
    } else {
        validate::agent_field("agent_id", &req.agent_id)?;
        let info = req.agent.unwrap_or_default();
        for (field, value) in [
            ("agent.host", &info.host),
            ("agent.sdk", &info.sdk),
            ("agent.version", &info.version),
        ] {
            validate::agent_field(field, value)?;
        }
        validate::agent_attributes("agent.attributes", &info.attributes)?;
        Some(AgentHello {
            agent_id: req.agent_id,
            host: info.host,
            sdk: info.sdk,
            version: info.version,
            attributes: info.attributes.into_iter().collect(),
        })
    };
    Ok(WatchRequest {
        selector,
        start_revision: req.start_revision,
        agent,
    })
}

fn label_state(state: LabelState) -> pb::LabelState {
    pb::LabelState {
        name: state.name.to_string(),
        label: state.target.label.to_string(),
        version: state.target.version,
        digest: state.target.digest.to_string(),
        revision: state.target.revision,
        rollout: state.rollout.map(|r| super::rollout::rollout((*r).clone())),
        arm: state
            .arm
            .map_or(pb::Arm::Unspecified, super::rollout::arm_pb)
            .into(),
    }
}

fn change(change: Change) -> pb::Change {
    let kind = match change {
        Change::VersionPublished {
            name,
            version,
            digest,
            author,
        } => pb::change::Kind::VersionPublished(pb::VersionPublished {
            name: name.to_string(),
            version,
            digest: digest.to_string(),
            author,
        }),
        Change::LabelMoved(mv) => pb::change::Kind::LabelMoved(label_move(mv)),
    };
    pb::Change { kind: Some(kind) }
}

/// A watch event as the server sends it. A revision's changes are encoded
/// once, by the first stream that sends them, and shared.
pub fn watch_frame(event: WatchEvent) -> WatchFrame {
    use pb::watch_response::Event;
    let response = |event| pb::WatchResponse { event: Some(event) };
    let event = match event {
        WatchEvent::Changes(shared) => {
            return WatchFrame::new(shared.encoded_with(|revision| {
                let batch = pb::ChangeBatch {
                    revision: revision.revision,
                    time: Some(to_timestamp(revision.time)),
                    changes: revision.changes.iter().cloned().map(change).collect(),
                };
                response(Event::Changes(batch)).encode_to_vec().into()
            }))
        }
        WatchEvent::Created {
            revision,
            compact_revision,
        } => Event::Created(pb::WatchCreated {
            revision,
            compact_revision,
        }),
        WatchEvent::Snapshot {
            revision,
            labels,
            complete,
        } => Event::Snapshot(pb::Snapshot {
            revision,
            labels: labels.into_iter().map(label_state).collect(),
            complete,
        }),
        WatchEvent::Progress { revision } => Event::Progress(pb::Progress { revision }),
    };
    WatchFrame::of(&response(event))
}

/// Trailer names that carry revisions machine-readably.
pub const COMPACT_REVISION_TRAILER: &str = "promptreg-compact-revision";
pub const RESUME_REVISION_TRAILER: &str = "promptreg-resume-revision";

/// How a watch ended: the `WatchEnded` of a `WatchMany` watch, and the
/// source of a `Watch` stream's final status (see `watch_end`).
pub fn watch_ended(end: WatchEnd) -> pb::WatchEnded {
    match end {
        WatchEnd::Busy { message } => ended(Code::ResourceExhausted, message),
        WatchEnd::Compacted {
            requested,
            compact_revision,
        } => pb::WatchEnded {
            compact_revision,
            ..ended(
                Code::OutOfRange,
                format!(
                    "revision {requested} has been compacted (compact revision \
                     {compact_revision}); take a fresh snapshot with start_revision 0"
                ),
            )
        },
        WatchEnd::ShuttingDown { resume_revision } => pb::WatchEnded {
            resume_revision,
            ..ended(
                Code::Unavailable,
                format!("the server is shutting down; resume from revision {resume_revision}"),
            )
        },
        WatchEnd::Storage {
            message,
            resume_revision,
        } => pb::WatchEnded {
            resume_revision,
            ..ended(
                Code::Unavailable,
                format!(
                    "reading the change log failed ({message}); resume from revision \
                     {resume_revision}"
                ),
            )
        },
    }
}

/// A `Watch` stream's final status: the `WatchEnded`, with its revision in
/// a trailer (revisions start at 1, so 0 means none).
pub fn watch_end(end: WatchEnd) -> Status {
    let ended = watch_ended(end);
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (trailer, revision) in [
        (COMPACT_REVISION_TRAILER, ended.compact_revision),
        (RESUME_REVISION_TRAILER, ended.resume_revision),
    ] {
        if revision != 0 {
            if let Ok(value) = revision.to_string().parse() {
                metadata.insert(trailer, value);
            }
        }
    }
    Status::with_metadata(Code::from(ended.code), ended.message, metadata)
}

/// A `WatchEnded` with only a code and a message.
pub fn ended(code: Code, message: impl Into<String>) -> pb::WatchEnded {
    pb::WatchEnded {
        code: code as i32,
        message: bounded(message.into()),
        ..Default::default()
    }
}

pub fn fleet_summary(counts: FleetCounts) -> pb::FleetSummary {
    pb::FleetSummary {
        in_sync: counts.in_sync,
        stale: counts.stale,
        disconnected: counts.disconnected,
    }
}

pub fn agent_status(row: AgentLabelStatus) -> pb::AgentStatus {
    let in_sync = row.in_sync();
    pb::AgentStatus {
        agent_id: row.hello.agent_id.clone(),
        agent: Some(pb::AgentInfo {
            host: row.hello.host,
            sdk: row.hello.sdk,
            version: row.hello.version,
            attributes: row.hello.attributes.into_iter().collect(),
        }),
        name: row.name.to_string(),
        label: row.label.to_string(),
        connected: row.connected,
        last_seen: Some(to_timestamp(row.last_seen)),
        applied_version: row.applied.map_or(0, |(v, _)| v),
        applied_digest: row.applied.map(|(_, d)| d.to_string()).unwrap_or_default(),
        target_version: row.target_version.unwrap_or(0),
        in_sync,
        rejected_version: row.rejected.as_ref().map_or(0, |(v, _)| *v),
        rejected_reason: row.rejected.map(|(_, r)| r).unwrap_or_default(),
        arm: row
            .arm
            .map_or(pb::Arm::Unspecified, super::rollout::arm_pb)
            .into(),
    }
}

// --- provenance -----------------------------------------------------------------

use crate::registry::provenance::{AuditReport, Checkpoint};
use crate::store::PublicKey;

pub fn signing_key(key: PublicKey, active: &str) -> pb::SigningKey {
    pb::SigningKey {
        active: key.key_id == active,
        key_id: key.key_id,
        public_key: key.public_key,
        created_at: Some(to_timestamp(key.created_at)),
    }
}

pub fn audit_entry(e: crate::provenance::AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        sequence: e.sequence,
        revision: e.revision,
        time: Some(to_timestamp(e.time)),
        actor: e.actor,
        action: e.action,
        target: e.target,
        reason: e.reason,
        trace_id: e.trace_id,
        detail: e.detail,
        previous_hash: e.previous_hash,
        hash: e.hash,
    }
}

pub fn checkpoint_to_pb(c: Checkpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        sequence: c.sequence,
        head_hash: c.head_hash,
        time: Some(to_timestamp(c.time)),
        key_id: c.key_id,
        signature: c.signature,
    }
}

pub fn checkpoint_from_pb(c: pb::Checkpoint) -> Result<Checkpoint, ValidationError> {
    Ok(Checkpoint {
        sequence: c.sequence,
        head_hash: c.head_hash,
        time: match &c.time {
            Some(time) => instant("checkpoint.time", time)?,
            None => 0,
        },
        key_id: c.key_id,
        signature: c.signature,
    })
}

pub fn audit_report(r: AuditReport) -> pb::VerifyAuditResponse {
    pb::VerifyAuditResponse {
        intact: r.intact(),
        entries: r.entries,
        versions: r.versions,
        checks: r.checks,
        first_broken_sequence: r.first_broken_sequence,
        problems: r.problems,
        head_hash: r.head_hash,
    }
}

pub fn label_period(period: crate::registry::provenance::LabelPeriod) -> pb::LabelPeriod {
    let set = period.set_by;
    pb::LabelPeriod {
        label: set.label.to_string(),
        from: Some(to_timestamp(set.time)),
        from_revision: set.revision,
        until: period.until.as_ref().map(|m| to_timestamp(m.time)),
        until_revision: period.until.as_ref().map_or(0, |m| m.revision),
        actor: set.actor,
        reason: set.reason,
        trace_id: set.trace_id.unwrap_or_default(),
    }
}

/// The content of a fetched version, for recomputing its digest on the
/// client side (`verify`, `watch --ack`); `None` when it carries no template.
pub fn content_of(v: &pb::Version) -> Option<Content> {
    let template = match v.template.as_ref()?.kind.as_ref()? {
        pb::template::Kind::Text(text) => TemplateBody::Text(text.clone()),
        pb::template::Kind::Chat(chat) => TemplateBody::Chat(
            chat.messages
                .iter()
                .map(|m| ChatMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect(),
        ),
    };
    Some(Content {
        template,
        variables: v.variables.clone(),
        model_config_json: v.model_config_json.clone(),
    })
}
