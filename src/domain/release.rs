//! Release policy as plain values: check results attached to versions,
//! attester keys, the policy of a label under a prefix, freezes, promotion
//! requests, and [`gate`], the one decision every label move passes
//! (SetLabel, Rollback, RemoveLabel and the approval that completes a
//! request). The registry reads the inputs under the writer lock and acts
//! on the decision; nothing here touches storage or the clock.

use super::{ContentDigest, LabelName, Micros, MoveKind, PromptName, ValidationError};
use super::{VersionSignature, LATEST_LABEL};
use std::collections::BTreeMap;

/// Longest check name, in bytes.
pub const MAX_CHECK_NAME_BYTES: usize = 63;
/// Most approvals a policy may ask for.
pub const MAX_APPROVALS: u32 = 10;
/// Most checks a policy may require.
pub const MAX_REQUIRED_CHECKS: usize = 32;
/// Longest check URL, in bytes.
pub const MAX_CHECK_URL_BYTES: usize = 2048;
/// Longest check details, in bytes.
pub const MAX_CHECK_DETAILS_BYTES: usize = 64 * 1024;
/// How long a promotion request waits for approvals by default.
pub const DEFAULT_REQUEST_TTL_SECS: u64 = 24 * 3600;

/// A check's name: `[a-z0-9][a-z0-9._-]{0,62}` (`eval`, `safety-suite`).
pub fn check_name(field: &str, raw: &str) -> Result<(), ValidationError> {
    let mut bytes = raw.bytes();
    let first = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if first && rest && raw.len() <= MAX_CHECK_NAME_BYTES {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("{raw:?} is not a check name; check names match [a-z0-9][a-z0-9._-]{{0,62}}"),
    ))
}

/// A policy's required checks: check names, at most
/// [`MAX_REQUIRED_CHECKS`], no duplicates.
pub fn required_checks(field: &str, checks: &[String]) -> Result<(), ValidationError> {
    if checks.len() > MAX_REQUIRED_CHECKS {
        return Err(ValidationError::new(
            field,
            format!("{} checks; at most {MAX_REQUIRED_CHECKS}", checks.len()),
        ));
    }
    for (i, check) in checks.iter().enumerate() {
        check_name(&format!("{field}[{i}]"), check)?;
        if checks[..i].contains(check) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("{check:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A policy's approval count: 0 (not protected) to [`MAX_APPROVALS`].
pub fn approvals(field: &str, approvals: u32) -> Result<(), ValidationError> {
    if approvals > MAX_APPROVALS {
        return Err(ValidationError::new(
            field,
            format!("is {approvals}; at most {MAX_APPROVALS}"),
        ));
    }
    Ok(())
}

/// Longest a promotion request may wait for its approvals (90 days).
pub const MAX_REQUEST_TTL_SECS: u64 = 90 * 24 * 3600;

/// A policy's request expiry, in seconds: 0 (the server's default) to
/// [`MAX_REQUEST_TTL_SECS`].
pub fn request_ttl(field: &str, seconds: u64) -> Result<(), ValidationError> {
    if seconds > MAX_REQUEST_TTL_SECS {
        return Err(ValidationError::new(
            field,
            format!("is {seconds}; at most {MAX_REQUEST_TTL_SECS} (90 days)"),
        ));
    }
    Ok(())
}

/// A check's score: a finite number.
pub fn score(field: &str, score: Option<f64>) -> Result<(), ValidationError> {
    match score {
        Some(s) if !s.is_finite() => Err(ValidationError::new(
            field,
            format!("is {s}; a score must be a finite number"),
        )),
        _ => Ok(()),
    }
}

/// One recorded result of a check on a version. Immutable.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub name: PromptName,
    pub version: u64,
    pub digest: ContentDigest,
    pub check: String,
    pub passed: bool,
    pub score: Option<f64>,
    pub url: String,
    pub details: String,
    /// The principal that recorded it.
    pub attester: String,
    pub time: Micros,
    /// Its ledger entry's sequence: unique and increasing, so the newest
    /// result per check is the one with the highest sequence.
    pub sequence: u64,
    /// The server's signature over [`crate::provenance::check_message`].
    pub signature: VersionSignature,
    /// The registered attester key whose DSSE envelope was verified, and
    /// the envelope; both empty without one.
    pub envelope_key: String,
    pub envelope: String,
}

impl CheckResult {
    pub fn outcome(&self) -> &'static str {
        if self.passed {
            "pass"
        } else {
            "fail"
        }
    }
}

/// The newest result of each check, by check name, of one version's
/// results (in any order).
pub fn newest_results(results: &[CheckResult]) -> BTreeMap<&str, &CheckResult> {
    let mut newest: BTreeMap<&str, &CheckResult> = BTreeMap::new();
    for result in results {
        let slot = newest.entry(result.check.as_str()).or_insert(result);
        if result.sequence > slot.sequence {
            *slot = result;
        }
    }
    newest
}

/// The required checks a version does not meet, each with why: `eval (no
/// result)`, `safety (failed)`. Empty: every one passed.
pub fn unmet_checks(required: &[String], results: &[CheckResult]) -> Vec<String> {
    let newest = newest_results(results);
    required
        .iter()
        .filter_map(|check| match newest.get(check.as_str()) {
            Some(result) if result.passed => None,
            Some(_) => Some(format!("{check} (failed)")),
            None => Some(format!("{check} (no result)")),
        })
        .collect()
}

/// An attester's registered Ed25519 key, for DSSE envelopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attester {
    pub name: String,
    pub public_key: Vec<u8>,
    pub added_by: String,
    pub added: Micros,
    pub removed: Option<Micros>,
}

/// The rules for one label under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A name prefix; empty: every prompt.
    pub prefix: String,
    pub label: LabelName,
    /// 0: the label is not protected.
    pub approvals: u32,
    pub require: Vec<String>,
    pub allow_emergency_rollback: bool,
    /// How long a request waits; `None`: the server's default.
    pub request_ttl_secs: Option<u64>,
    pub set_by: String,
    pub set_at: Micros,
}

impl Policy {
    /// Whether it asks anything of a move.
    fn gates(&self) -> bool {
        self.approvals > 0 || !self.require.is_empty()
    }

    /// `policy:PREFIX:label`, as the ledger names it.
    pub fn target(&self) -> String {
        format!("policy:{}:{}", self.prefix, self.label)
    }
}

/// A name prefix for a policy or a freeze: empty (every prompt) or the start
/// of a valid name.
pub fn policy_prefix(field: &str, raw: &str, max_name_bytes: usize) -> Result<(), ValidationError> {
    if raw.is_empty() {
        return Ok(());
    }
    PromptName::check_prefix(field, raw, max_name_bytes)
}

/// The policy that governs `label` of `name`: of the policies for that
/// label, the one with the longest prefix the name starts with.
pub fn governing<'a>(
    policies: &'a [Policy],
    name: &PromptName,
    label: &LabelName,
) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| &p.label == label && name.as_str().starts_with(p.prefix.as_str()))
        .max_by_key(|p| p.prefix.len())
}

/// A freeze of a label under a prefix, until a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub prefix: String,
    pub label: LabelName,
    pub until: Micros,
    pub reason: String,
    pub set_by: String,
    pub set_at: Micros,
}

impl Freeze {
    pub fn in_force(&self, now: Micros) -> bool {
        now < self.until
    }
}

/// Every freeze in force at `now` over `label` of `name` (all of them,
/// not only the longest prefix: a freeze of `support/` also holds
/// `support/triage` frozen).
pub fn freezes_over<'a>(
    freezes: &'a [Freeze],
    name: &PromptName,
    label: &LabelName,
    now: Micros,
) -> Vec<&'a Freeze> {
    freezes
        .iter()
        .filter(|f| {
            &f.label == label && name.as_str().starts_with(f.prefix.as_str()) && f.in_force(now)
        })
        .collect()
}

/// Where a promotion request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved,
    Rejected,
    Void,
    Expired,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Void => "void",
            RequestState::Expired => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<RequestState> {
        [
            RequestState::Pending,
            RequestState::Approved,
            RequestState::Rejected,
            RequestState::Void,
            RequestState::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approver: String,
    pub reason: String,
    pub time: Micros,
}

/// A move of a protected label waiting for approval, bound to the prompt,
/// the label, the version (and its digest) and the label's target when it
/// was made.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionRequest {
    pub id: u64,
    pub name: PromptName,
    pub label: LabelName,
    pub version: u64,
    pub digest: ContentDigest,
    /// What the label pointed to when requested.
    pub base_version: Option<u64>,
    pub kind: MoveKind,
    pub requester: String,
    pub reason: String,
    pub trace_id: Option<String>,
    pub created: Micros,
    pub expires: Micros,
    pub approvals_required: u32,
    pub approvals: Vec<Approval>,
    pub state: RequestState,
    pub closed_by: String,
    pub closed_reason: String,
    pub move_revision: u64,
    /// For a rollout's start (`kind` Rollout): how it goes; `version` is
    /// the candidate.
    pub rollout: Option<super::rollout::RolloutSpec>,
}

impl PromotionRequest {
    /// Its state at `now`: a pending request past its expiry is expired.
    pub fn state_at(&self, now: Micros) -> RequestState {
        if self.state == RequestState::Pending && now >= self.expires {
            RequestState::Expired
        } else {
            self.state
        }
    }

    /// `name:label#request-ID`, as the ledger names it: about its prompt
    /// (a prompt's audit listing finds it) and unambiguous (`#` is in no
    /// label).
    pub fn target(&self) -> String {
        format!("{}:{}#request-{}", self.name, self.label, self.id)
    }

    /// Why `approver` may not approve it (four eyes), if they may not: the
    /// requester, the version's author and an approver already counted do
    /// not count.
    pub fn refuses_approver(&self, approver: &str, author: &str) -> Option<String> {
        if approver == self.requester {
            return Some(format!(
                "{approver} made request {} and cannot approve it: another person must",
                self.id
            ));
        }
        if approver == author {
            return Some(format!(
                "{approver} is the author of {} v{} and cannot approve its promotion: another person must",
                self.name, self.version
            ));
        }
        if self.approvals.iter().any(|a| a.approver == approver) {
            return Some(format!(
                "{approver} has already approved request {}; one principal counts once",
                self.id
            ));
        }
        None
    }
}

/// Why a move's target was chosen, as far as the gate is concerned.
#[derive(Debug, Clone, Copy)]
pub struct MoveFacts<'a> {
    pub label: &'a LabelName,
    pub kind: MoveKind,
    /// The target version (`None`: a removal).
    pub to_version: Option<u64>,
    /// The label pointed to `to_version` at some time before.
    pub earlier_target: bool,
    /// The move completes an approved promotion request.
    pub approved: bool,
}

/// What the gate decides about a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Move it.
    Allow,
    /// Move it as an emergency rollback: the policy or a freeze would have
    /// stopped it otherwise.
    Emergency,
    /// Make a promotion request needing this many approvals instead.
    Request { approvals: u32 },
    /// Refuse it (FAILED_PRECONDITION).
    Refuse(Refusal),
}

/// Why the gate refused a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Frozen(Freeze),
    /// A protected label cannot be removed.
    Protected {
        prefix: String,
        approvals: u32,
    },
    /// The target lacks these passing checks (`eval (no result)`).
    ChecksUnmet {
        version: u64,
        unmet: Vec<String>,
    },
}

impl Refusal {
    /// The refusal's message about `label` of `name`, with times written by
    /// `time` (RFC 3339 at the edges).
    pub fn describe(
        &self,
        name: &PromptName,
        label: &LabelName,
        time: impl Fn(Micros) -> String,
    ) -> String {
        let what = format!("label {label} of {name}");
        match self {
            Refusal::Frozen(freeze) => {
                let scope = if freeze.prefix.is_empty() {
                    "every prompt".to_string()
                } else {
                    freeze.prefix.clone()
                };
                format!(
                    "{what} is frozen (freeze of {} on {scope} by {} until {}: {}); only an emergency rollback to an earlier version may move it",
                    freeze.label,
                    freeze.set_by,
                    time(freeze.until),
                    freeze.reason
                )
            }
            Refusal::Protected { prefix, approvals } => format!(
                "{what} is protected (its policy on {prefix:?} needs {approvals} approval(s)) and cannot be removed; an admin must delete the policy first"
            ),
            Refusal::ChecksUnmet { version, unmet } => format!(
                "the policy of {what} requires passing checks, and version {version} lacks: {}",
                unmet.join(", ")
            ),
        }
    }
}

/// The one decision of every label move: freezes, then required checks
/// (of `results`, the target version's check results), then approvals; an
/// emergency rollback (to an earlier target, when the policy allows it)
/// passes all three.
pub fn gate(
    facts: MoveFacts<'_>,
    policy: Option<&Policy>,
    freezes: &[&Freeze],
    results: &[CheckResult],
) -> Gate {
    let gated = policy.is_some_and(Policy::gates) || !freezes.is_empty();
    if !gated || facts.label.as_str() == LATEST_LABEL {
        return Gate::Allow;
    }
    let emergency_allowed = policy.is_none_or(|p| p.allow_emergency_rollback);
    if facts.kind == MoveKind::Rollback && facts.earlier_target && emergency_allowed {
        return Gate::Emergency;
    }
    if let Some(freeze) = freezes.first() {
        return Gate::Refuse(Refusal::Frozen((*freeze).clone()));
    }
    let Some(policy) = policy else {
        return Gate::Allow;
    };
    let Some(version) = facts.to_version else {
        if policy.approvals > 0 {
            return Gate::Refuse(Refusal::Protected {
                prefix: policy.prefix.clone(),
                approvals: policy.approvals,
            });
        }
        return Gate::Allow;
    };
    let unmet = unmet_checks(&policy.require, results);
    if !unmet.is_empty() {
        return Gate::Refuse(Refusal::ChecksUnmet { version, unmet });
    }
    if policy.approvals > 0 && !facts.approved {
        return Gate::Request {
            approvals: policy.approvals,
        };
    }
    Gate::Allow
}

#[cfg(test)]
mod tests;
