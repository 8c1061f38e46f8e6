//! What the audit ledger says about each write: one entry per change of a
//! revision, per key rotation, per prune, per token created or revoked,
//! and for enabling encryption (release policy's entries are written in
//! `release/`, with the same `AuditEntry::after`). The store appends the entries it is given, chained to its ledger head; the
//! words are decided here. `AuditEntry.target` in the proto lists every
//! target form written below.

use crate::domain::access::Token;
use crate::domain::{Change, KeyRotation, PromptName, Revision, Version};
use crate::provenance::{AuditEntry, LedgerHead};

/// The actor the registry records for what it does itself.
const SELF_ACTOR: &str = "promptreg";

/// The ledger entries recording one revision, one per change, chained after
/// `head`.
pub(super) fn revision_entries(
    head: &LedgerHead,
    revision: &Revision,
    published: Option<&Version>,
) -> Vec<AuditEntry> {
    let mut head = head.clone();
    let mut entries = Vec::with_capacity(revision.changes.len());
    for change in &revision.changes {
        let entry = change_entry(&head, revision, change, published);
        head = entry.head();
        entries.push(entry);
    }
    entries
}

/// The ledger entry recording one change.
fn change_entry(
    head: &LedgerHead,
    revision: &Revision,
    change: &Change,
    published: Option<&Version>,
) -> AuditEntry {
    let side = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("v{v}"));
    let (actor, action, target, reason, detail) = match change {
        Change::VersionPublished {
            name,
            version,
            digest,
            author,
        } => (
            author.as_str(),
            "publish",
            format!("{name}@v{version}"),
            published.map_or("", |v| v.description.as_str()),
            digest.to_string(),
        ),
        Change::LabelMoved(mv) => (
            mv.actor.as_str(),
            mv.kind.as_str(),
            format!("{}:{}", mv.name, mv.label),
            mv.reason.as_str(),
            move_detail(mv, side(mv.from_version), side(mv.to_version)),
        ),
    };
    let mut entry = AuditEntry::after(
        head,
        revision.revision,
        revision.time,
        actor,
        action,
        target,
        reason,
        detail,
    );
    if let Some(trace_id) = &revision.trace_id {
        entry.trace_id = trace_id.clone();
        entry.hash = entry.compute_hash();
    }
    entry
}

/// `vA -> vB`, and how release policy cleared the move.
fn move_detail(mv: &crate::domain::LabelMove, from: String, to: String) -> String {
    let mut detail = format!("{from} -> {to}");
    if mv.clearance.emergency {
        detail.push_str("; emergency rollback");
    }
    if let Some(id) = mv.clearance.request {
        detail.push_str(&format!(
            "; request {id} approved by {}",
            mv.clearance.approvers.join(", ")
        ));
    }
    if let Some(r) = &mv.rollout {
        detail.push_str(&format!(
            "; rollout {} {} at {} (v{} -> v{}, step {} of {})",
            r.id,
            r.state.as_str(),
            crate::domain::rollout::percent(r.weight_bp),
            r.stable.version,
            r.candidate.version,
            r.step + 1,
            r.spec.steps_bp.len()
        ));
    }
    detail
}

/// A new active signing key.
pub(super) fn key_rotation(head: &LedgerHead, rotation: &KeyRotation) -> AuditEntry {
    AuditEntry::after(
        head,
        rotation.revision,
        rotation.time,
        &rotation.actor,
        "rotate_key",
        format!("key:{}", rotation.key_id),
        &rotation.reason,
        hex::encode(&rotation.public_key),
    )
}

/// A bearer token created (`token_create`) or revoked (`token_revoke`):
/// its name and bindings, never its secret or hash.
pub(super) fn token_change(
    head: &LedgerHead,
    revision: u64,
    time: crate::domain::Micros,
    actor: &str,
    action: &str,
    token: &Token,
    reason: &str,
) -> AuditEntry {
    let bindings: Vec<String> = token.bindings.iter().map(|b| b.to_string()).collect();
    let mut detail = bindings.join("; ");
    if let Some(subject) = &token.subject {
        detail.push_str(&format!("; for certificate {subject}"));
    }
    if let Some(expires) = token.expires {
        detail.push_str(&format!(
            "; expires {}",
            crate::time::format_micros(expires)
        ));
    }
    AuditEntry::after(
        head,
        revision,
        time,
        actor,
        action,
        format!("token:{}", token.name),
        reason,
        detail,
    )
}

/// The content of `versions` of `name` removed.
pub(super) fn prune(
    head: &LedgerHead,
    name: &PromptName,
    versions: &[u64],
    revision: u64,
    time: crate::domain::Micros,
    actor: &str,
    reason: &str,
) -> AuditEntry {
    let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
    AuditEntry::after(
        head,
        revision,
        time,
        actor,
        "prune",
        name.to_string(),
        reason,
        list.join(", "),
    )
}

/// Version content sealed with a data key from now on.
pub(super) fn enable_encryption(
    head: &LedgerHead,
    revision: u64,
    key_id: &str,
    sealed: usize,
) -> AuditEntry {
    AuditEntry::after(
        head,
        revision,
        crate::time::now_micros(),
        SELF_ACTOR,
        "enable_encryption",
        "store".to_string(),
        "started with --encryption-key-file",
        format!("data key {key_id}; {sealed} versions sealed"),
    )
}
