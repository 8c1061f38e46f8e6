//! The release-policy RPCs (checks, attesters, policies, freezes,
//! promotion requests) translated: authorize, convert, call the registry.

use super::access::{authorize, take_principal};
use super::convert::{instant, prompt_name};
use super::pb;
use super::timestamp::to_timestamp;
use crate::domain::access::{Action, Principal, Scope};
use crate::domain::release::{
    Attester, CheckResult, Freeze, Policy, PromotionRequest, RequestState,
};
use crate::domain::validate::version_number;
use crate::domain::{LabelName, ValidationError};
use crate::registry::release::{Attestation, RequestFilter, Reviewed};
use crate::registry::{Registry, RegistryError};
use tonic::{Request, Status};

type Answer<T> = Result<T, Status>;

fn invalid(error: ValidationError) -> Status {
    RegistryError::from(error).into()
}

/// The scope of a policy or freeze on `prefix` (empty: every prompt).
fn prefix_scope(prefix: &str) -> Scope<'_> {
    if prefix.is_empty() {
        Scope::EveryPrompt
    } else {
        Scope::Prefix(prefix)
    }
}

fn label_of(field: &str, raw: &str) -> Answer<LabelName> {
    LabelName::parse_movable(field, raw).map_err(invalid)
}

pub async fn attest_version(
    registry: &Registry,
    mut request: Request<pb::AttestVersionRequest>,
) -> Answer<pb::AttestVersionResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = prompt_name(&r.name, registry.limits()).map_err(invalid)?;
    authorize(&principal, Action::Attest, Scope::Prompt(&name))?;
    let passed = match pb::CheckOutcome::try_from(r.result) {
        Ok(pb::CheckOutcome::Pass) => Some(true),
        Ok(pb::CheckOutcome::Fail) => Some(false),
        Ok(pb::CheckOutcome::Unspecified) => None,
        Err(_) => {
            return Err(invalid(ValidationError::new(
                "result",
                format!(
                    "is {}; one of CHECK_OUTCOME_PASS, CHECK_OUTCOME_FAIL",
                    r.result
                ),
            )))
        }
    };
    let new = Attestation {
        name: Some(name),
        version: r.version,
        check: r.check,
        passed,
        score: r.score,
        url: r.url,
        details: r.details,
        envelope: r.envelope,
    };
    let result = registry.attest(&principal.name, new).await?;
    tracing::info!(prompt = %result.name, version = result.version, check = %result.check, result = result.outcome(), "check recorded");
    Ok(pb::AttestVersionResponse {
        result: Some(check_result(result)),
    })
}

pub async fn list_checks(
    registry: &Registry,
    mut request: Request<pb::ListChecksRequest>,
) -> Answer<pb::ListChecksResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = prompt_name(&r.name, registry.limits()).map_err(invalid)?;
    authorize(&principal, Action::Inspect, Scope::Prompt(&name))?;
    let version = version_number("version", r.version).map_err(invalid)?;
    let results = registry
        .off_runtime(move |reg| reg.list_checks(&name, version, r.history))
        .await?;
    Ok(pb::ListChecksResponse {
        results: results.into_iter().map(check_result).collect(),
    })
}

pub async fn add_attester(
    registry: &Registry,
    mut request: Request<pb::AddAttesterRequest>,
) -> Answer<pb::Attester> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let r = request.into_inner();
    let attester = registry
        .add_attester(&principal.name, r.name, r.public_key)
        .await?;
    Ok(attester_to_pb(attester))
}

pub async fn list_attesters(
    registry: &Registry,
    mut request: Request<pb::ListAttestersRequest>,
) -> Answer<pb::ListAttestersResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Inspect, Scope::Service)?;
    let attesters = registry.off_runtime(|reg| reg.list_attesters()).await?;
    Ok(pb::ListAttestersResponse {
        attesters: attesters.into_iter().map(attester_to_pb).collect(),
    })
}

pub async fn remove_attester(
    registry: &Registry,
    mut request: Request<pb::RemoveAttesterRequest>,
) -> Answer<pb::Attester> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let r = request.into_inner();
    let attester = registry
        .remove_attester(&principal.name, r.name, r.reason)
        .await?;
    Ok(attester_to_pb(attester))
}

pub async fn set_policy(
    registry: &Registry,
    mut request: Request<pb::SetPolicyRequest>,
) -> Answer<pb::Policy> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let label = label_of("label", &r.label)?;
    authorize(&principal, Action::Administer, prefix_scope(&r.prefix))?;
    let new = Policy {
        prefix: r.prefix,
        label,
        approvals: r.approvals,
        require: r.require,
        allow_emergency_rollback: r.allow_emergency_rollback.unwrap_or(true),
        request_ttl_secs: (r.request_ttl_seconds > 0).then_some(r.request_ttl_seconds),
        set_by: String::new(),
        set_at: 0,
    };
    let policy = registry.set_policy(&principal.name, new, r.reason).await?;
    tracing::info!(prefix = %policy.prefix, label = %policy.label, approvals = policy.approvals, "policy set");
    Ok(policy_to_pb(policy))
}

pub async fn get_policy(
    registry: &Registry,
    mut request: Request<pb::GetPolicyRequest>,
) -> Answer<pb::GetPolicyResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = prompt_name(&r.name, registry.limits()).map_err(invalid)?;
    let label = LabelName::parse("label", &r.label).map_err(invalid)?;
    authorize(&principal, Action::Inspect, Scope::Prompt(&name))?;
    let (policy, freezes) = registry
        .off_runtime(move |reg| reg.policy_for(&name, &label))
        .await?;
    Ok(pb::GetPolicyResponse {
        policy: policy.map(policy_to_pb),
        freezes: freezes.into_iter().map(freeze_to_pb).collect(),
    })
}

/// Whether `principal` may see what is set on `prefix`.
fn may_see(principal: &Principal, prefix: &str) -> bool {
    principal.may(Action::Inspect, prefix_scope(prefix))
}

pub async fn list_policies(
    registry: &Registry,
    mut request: Request<pb::ListPoliciesRequest>,
) -> Answer<pb::ListPoliciesResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Inspect, Scope::Service)?;
    let policies = registry.off_runtime(|reg| reg.list_policies()).await?;
    Ok(pb::ListPoliciesResponse {
        policies: policies
            .into_iter()
            .filter(|p| may_see(&principal, &p.prefix))
            .map(policy_to_pb)
            .collect(),
    })
}

pub async fn delete_policy(
    registry: &Registry,
    mut request: Request<pb::DeletePolicyRequest>,
) -> Answer<pb::DeletePolicyResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let label = label_of("label", &r.label)?;
    authorize(&principal, Action::Administer, prefix_scope(&r.prefix))?;
    let policy = registry
        .delete_policy(&principal.name, r.prefix, label, r.reason)
        .await?;
    tracing::warn!(prefix = %policy.prefix, label = %policy.label, "policy deleted");
    Ok(pb::DeletePolicyResponse {
        policy: Some(policy_to_pb(policy)),
    })
}

pub async fn freeze_label(
    registry: &Registry,
    mut request: Request<pb::FreezeLabelRequest>,
) -> Answer<pb::Freeze> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let label = label_of("label", &r.label)?;
    authorize(&principal, Action::Administer, prefix_scope(&r.prefix))?;
    let until = match &r.until {
        Some(ts) => instant("until", ts).map_err(invalid)?,
        None => return Err(invalid(ValidationError::new("until", "is required"))),
    };
    let new = Freeze {
        prefix: r.prefix,
        label,
        until,
        reason: r.reason,
        set_by: String::new(),
        set_at: 0,
    };
    let freeze = registry.freeze(&principal.name, new).await?;
    tracing::warn!(prefix = %freeze.prefix, label = %freeze.label, "label frozen");
    Ok(freeze_to_pb(freeze))
}

pub async fn unfreeze_label(
    registry: &Registry,
    mut request: Request<pb::UnfreezeLabelRequest>,
) -> Answer<pb::UnfreezeLabelResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let label = label_of("label", &r.label)?;
    authorize(&principal, Action::Administer, prefix_scope(&r.prefix))?;
    let freeze = registry
        .unfreeze(&principal.name, r.prefix, label, r.reason)
        .await?;
    Ok(pb::UnfreezeLabelResponse {
        freeze: freeze.map(freeze_to_pb),
    })
}

pub async fn list_freezes(
    registry: &Registry,
    mut request: Request<pb::ListFreezesRequest>,
) -> Answer<pb::ListFreezesResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Inspect, Scope::Service)?;
    let freezes = registry.off_runtime(|reg| reg.list_freezes()).await?;
    Ok(pb::ListFreezesResponse {
        freezes: freezes
            .into_iter()
            .filter(|f| may_see(&principal, &f.prefix))
            .map(freeze_to_pb)
            .collect(),
    })
}

pub async fn list_requests(
    registry: &Registry,
    mut request: Request<pb::ListRequestsRequest>,
) -> Answer<pb::ListRequestsResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    let name = match r.name.as_str() {
        "" => None,
        raw => Some(prompt_name(raw, registry.limits()).map_err(invalid)?),
    };
    match &name {
        Some(name) => authorize(&principal, Action::Inspect, Scope::Prompt(name))?,
        None => authorize(&principal, Action::Inspect, Scope::Service)?,
    }
    let label = match r.label.as_str() {
        "" => None,
        raw => Some(LabelName::parse("label", raw).map_err(invalid)?),
    };
    let filter = RequestFilter {
        name,
        label,
        pending_only: r.pending,
    };
    let requests = registry
        .off_runtime(move |reg| reg.list_requests(&filter))
        .await?;
    Ok(pb::ListRequestsResponse {
        requests: requests
            .into_iter()
            .filter(|q| principal.may(Action::Inspect, Scope::Prompt(&q.name)))
            .map(promotion_request)
            .collect(),
    })
}

/// The request `id`, once `principal` may review moves of its label.
async fn reviewable(registry: &Registry, principal: &Principal, id: u64) -> Answer<()> {
    // Without the role anywhere, denied before the request is looked up.
    authorize(principal, Action::Approve, Scope::Service)?;
    if id == 0 {
        return Err(invalid(ValidationError::new("id", "is required")));
    }
    let request = registry
        .off_runtime(move |reg| reg.promotion_request(id))
        .await?;
    authorize(
        principal,
        Action::Approve,
        Scope::Label(&request.name, &request.label),
    )
}

pub async fn approve_request(
    registry: &Registry,
    mut request: Request<pb::ApproveRequestRequest>,
) -> Answer<pb::ReviewResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    reviewable(registry, &principal, r.id).await?;
    let reviewed = registry.approve(&principal.name, r.id, r.reason).await?;
    tracing::info!(request = r.id, by = %principal.name, moved = reviewed.moved.is_some(), "promotion request approved");
    Ok(review(reviewed))
}

pub async fn reject_request(
    registry: &Registry,
    mut request: Request<pb::RejectRequestRequest>,
) -> Answer<pb::ReviewResponse> {
    let principal = take_principal(&mut request)?;
    let r = request.into_inner();
    reviewable(registry, &principal, r.id).await?;
    let reviewed = registry.reject(&principal.name, r.id, r.reason).await?;
    tracing::info!(request = r.id, by = %principal.name, "promotion request rejected");
    Ok(review(reviewed))
}

// --- conversions --------------------------------------------------------------

fn review(reviewed: Reviewed) -> pb::ReviewResponse {
    pb::ReviewResponse {
        request: Some(promotion_request(reviewed.request)),
        r#move: reviewed.moved.map(super::convert::moved),
    }
}

pub fn check_result(r: CheckResult) -> pb::CheckResult {
    pb::CheckResult {
        name: r.name.to_string(),
        version: r.version,
        digest: r.digest.to_string(),
        check: r.check,
        result: if r.passed {
            pb::CheckOutcome::Pass
        } else {
            pb::CheckOutcome::Fail
        }
        .into(),
        score: r.score,
        url: r.url,
        details: r.details,
        attester: r.attester,
        time: Some(to_timestamp(r.time)),
        sequence: r.sequence,
        signature: r.signature.bytes,
        signing_key_id: r.signature.key_id,
        envelope_key: r.envelope_key,
        envelope: r.envelope,
    }
}

/// A check result as received, back in domain terms, to verify its
/// signature on the client side; `None` when a field is not well formed.
pub fn check_result_from_pb(r: &pb::CheckResult) -> Option<CheckResult> {
    Some(CheckResult {
        name: crate::domain::PromptName::parse("name", &r.name, usize::MAX).ok()?,
        version: r.version,
        digest: crate::domain::ContentDigest::parse("digest", &r.digest).ok()?,
        check: r.check.clone(),
        passed: r.result == pb::CheckOutcome::Pass as i32,
        score: r.score,
        url: r.url.clone(),
        details: r.details.clone(),
        attester: r.attester.clone(),
        time: r.time.as_ref().map_or(0, super::timestamp::from_timestamp),
        sequence: r.sequence,
        signature: crate::domain::VersionSignature {
            key_id: r.signing_key_id.clone(),
            bytes: r.signature.clone(),
        },
        envelope_key: r.envelope_key.clone(),
        envelope: r.envelope.clone(),
    })
}

fn attester_to_pb(a: Attester) -> pb::Attester {
    pb::Attester {
        name: a.name,
        public_key: a.public_key,
        added_by: a.added_by,
        added: Some(to_timestamp(a.added)),
        removed: a.removed.map(to_timestamp),
    }
}

fn policy_to_pb(p: Policy) -> pb::Policy {
    pb::Policy {
        prefix: p.prefix,
        label: p.label.to_string(),
        approvals: p.approvals,
        require: p.require,
        allow_emergency_rollback: p.allow_emergency_rollback,
        set_by: p.set_by,
        set_at: Some(to_timestamp(p.set_at)),
        request_ttl_seconds: p.request_ttl_secs.unwrap_or(0),
    }
}

fn freeze_to_pb(f: Freeze) -> pb::Freeze {
    pb::Freeze {
        prefix: f.prefix,
        label: f.label.to_string(),
        until: Some(to_timestamp(f.until)),
        reason: f.reason,
        set_by: f.set_by,
        set_at: Some(to_timestamp(f.set_at)),
    }
}

pub fn promotion_request(q: PromotionRequest) -> pb::PromotionRequest {
    let state = match q.state {
        RequestState::Pending => pb::RequestState::Pending,
        RequestState::Approved => pb::RequestState::Approved,
        RequestState::Rejected => pb::RequestState::Rejected,
        RequestState::Void => pb::RequestState::Void,
        RequestState::Expired => pb::RequestState::Expired,
    };
    pb::PromotionRequest {
        id: q.id,
        name: q.name.to_string(),
        label: q.label.to_string(),
        version: q.version,
        digest: q.digest.to_string(),
        base_version: q.base_version.unwrap_or(0),
        kind: super::convert::move_kind(q.kind).into(),
        requester: q.requester,
        reason: q.reason,
        created: Some(to_timestamp(q.created)),
        expires: Some(to_timestamp(q.expires)),
        approvals_required: q.approvals_required,
        approvals: q
            .approvals
            .into_iter()
            .map(|a| pb::Approval {
                approver: a.approver,
                reason: a.reason,
                time: Some(to_timestamp(a.time)),
            })
            .collect(),
        state: state.into(),
        closed_by: q.closed_by,
        closed_reason: q.closed_reason,
        move_revision: q.move_revision,
        rollout: q.rollout.map(super::rollout::spec_pb),
    }
}
