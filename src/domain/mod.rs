//! The domain: plain types and the rules they obey. No I/O, no protobuf, no
//! sled; everything here is testable with plain values.

pub mod access;
mod content;
mod fleet;
mod history;
mod instant;
mod limits;
mod model_config;
mod names;
pub mod release;
pub mod rollout;
mod selector;
mod template;
pub mod validate;

pub use content::{ChatMessage, Content, ContentDigest, TemplateBody};
pub use fleet::{in_sync, AgentState, FleetCounts};
pub use history::{rollback_target, NoRollbackTarget};
pub use instant::instant_micros;
pub use limits::Limits;
pub use names::{LabelName, PromptName, LATEST_LABEL};
pub use selector::Selector;
pub use template::placeholders;

use std::collections::BTreeMap;

/// Bad input, naming the field and the rule it broke. Every field rule of
/// the registry lives in this module (the type constructors and
/// [`validate`]) and returns this; the gRPC layer turns it into
/// INVALID_ARGUMENT with the same text, in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    /// The request field, as named in the proto (`name`, `template.chat.messages[2].role`).
    pub field: String,
    /// What was wrong, in a sentence fragment a user can act on.
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same error for a field nested in `parent`: `names[0]` within
    /// `watch` is `watch.names[0]`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Microseconds since the Unix epoch, UTC. The registry's only clock unit.
pub type Micros = i64;

/// A request to publish a version, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    pub name: PromptName,
    pub content: Content,
    pub author: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// The request's W3C trace id, when it carried one.
    pub trace_id: Option<String>,
}

/// One immutable, stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub name: PromptName,
    pub number: u64,
    pub digest: ContentDigest,
    pub content: Content,
    pub author: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: Micros,
    /// The revision that published this version.
    pub revision: u64,
    /// The server's signature; `None` only for versions from before signing.
    pub signature: Option<VersionSignature>,
    /// The content was removed by retention; `content` holds only the
    /// variables, and the digest still names the original content.
    pub pruned: bool,
}

/// An Ed25519 signature over a version's signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSignature {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// How a label moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    Promote,
    Rollback,
    Remove,
    /// A rollout's step, pause, resume, extension or abort: the label's
    /// own target stays the stable version.
    Rollout,
}

impl MoveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveKind::Promote => "promote",
            MoveKind::Rollback => "rollback",
            MoveKind::Remove => "remove",
            MoveKind::Rollout => "rollout",
        }
    }
}

/// One move of one label: an entry of the label's history and, inside a
/// revision, one change of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMove {
    pub name: PromptName,
    pub label: LabelName,
    pub revision: u64,
    pub time: Micros,
    pub kind: MoveKind,
    /// `None` when the label did not exist before the move.
    pub from_version: Option<u64>,
    /// `None` when the move removed the label.
    pub to_version: Option<u64>,
    /// The digest of `to_version`.
    pub digest: Option<ContentDigest>,
    pub actor: String,
    pub reason: String,
    /// The W3C trace id of the request that made the move, when it had one.
    pub trace_id: Option<String>,
    /// How release policy cleared it (approvals, an emergency).
    pub clearance: Clearance,
    /// The rollout the move belongs to, as it stands after the move.
    pub rollout: Option<Box<rollout::Rollout>>,
}

/// How a label move was cleared by release policy: by default, nothing
/// was asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Clearance {
    /// The promotion request it completes (its actor is the requester).
    pub request: Option<u64>,
    /// Who approved it, in order.
    pub approvers: Vec<String>,
    /// An emergency rollback, past the policy or a freeze.
    pub emergency: bool,
}

/// A label's current target.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTarget {
    pub label: LabelName,
    pub version: u64,
    pub digest: ContentDigest,
    pub revision: u64,
    pub updated_at: Micros,
}

/// One change inside a revision of the change log.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    VersionPublished {
        name: PromptName,
        version: u64,
        digest: ContentDigest,
        author: String,
    },
    LabelMoved(LabelMove),
}

/// A new signing key became active. Not a revision of the registry's
/// content (watchers do not see it), but an audit ledger entry like any
/// change; `revision` is the head revision it took effect at.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRotation {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub actor: String,
    pub reason: String,
    pub time: Micros,
    pub revision: u64,
}

/// Everything that happened at one revision: the unit of the change log and
/// of Watch delivery (a watcher receives a revision's changes together).
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub revision: u64,
    pub time: Micros,
    pub changes: Vec<Change>,
    /// The W3C trace id (32 hex digits) of the request that made the
    /// change, when it carried one: the link from the ledger to traces.
    pub trace_id: Option<String>,
}

/// A prompt and its newest version.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSummary {
    pub name: PromptName,
    pub latest_version: u64,
    pub latest_digest: ContentDigest,
    pub updated_at: Micros,
}

/// What two versions differ in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionDiff {
    pub template_diff: String,
    pub variables_added: Vec<String>,
    pub variables_removed: Vec<String>,
    pub model_config_diff: String,
    pub tags_changed: Vec<String>,
}

impl VersionDiff {
    /// Compares two versions: unified line diffs of the rendered templates and
    /// the pretty-printed model configs, and set differences of the rest.
    pub fn between(from: &Version, to: &Version) -> VersionDiff {
        let template_diff = unified_diff(
            &from.content.template.render_for_diff(),
            &to.content.template.render_for_diff(),
            from.number,
            to.number,
        );
        let model_config_diff = unified_diff(
            &pretty_json(&from.content.model_config_json),
            &pretty_json(&to.content.model_config_json),
            from.number,
            to.number,
        );
        let variables_added = to
            .content
            .variables
            .iter()
            .filter(|v| !from.content.variables.contains(v))
            .cloned()
            .collect();
        let variables_removed = from
            .content
            .variables
            .iter()
            .filter(|v| !to.content.variables.contains(v))
            .cloned()
            .collect();
        let mut keys: Vec<&String> = from.tags.keys().chain(to.tags.keys()).collect();
        keys.sort();
        keys.dedup();
        let tags_changed = keys
            .into_iter()
            .filter(|k| from.tags.get(*k) != to.tags.get(*k))
            .map(|k| {
                let side = |v: Option<&String>| v.map_or("(none)".to_string(), |v| v.clone());
                format!(
                    "{k}: {} -> {}",
                    side(from.tags.get(k)),
                    side(to.tags.get(k))
                )
            })
            .collect();
        VersionDiff {
            template_diff,
            variables_added,
            variables_removed,
            model_config_diff,
            tags_changed,
        }
    }
}

fn unified_diff(old: &str, new: &str, from: u64, to: u64) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("v{from}"), &format!("v{to}"))
        .to_string()
}

fn pretty_json(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(value) => {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| json.to_string()) + "\n"
        }
        Err(_) => json.to_string(),
    }
}
