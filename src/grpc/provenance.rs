//! The provenance RPCs (signing keys, the audit ledger, checkpoints,
//! retention, FindByDigest) translated: authorize, convert, call the
//! registry.

use super::access::{authorize, take_principal};
use super::convert::{self, prompt_name};
use super::pb;
use crate::domain::access::{Action, Scope};
use crate::domain::ContentDigest;
use crate::registry::provenance::{AuditFilter, PruneRequest};
use crate::registry::Registry;
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;

pub async fn list_signing_keys(
    registry: &Registry,
    mut request: Request<pb::ListSigningKeysRequest>,
) -> Answer<pb::ListSigningKeysResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::ReadContent, Scope::Service)?;
    let (keys, active) = registry.off_runtime(|r| r.signing_keys()).await?;
    Ok(Response::new(pb::ListSigningKeysResponse {
        keys: keys
            .into_iter()
            .rev()
            .map(|k| convert::signing_key(k, &active))
            .collect(),
    }))
}

pub async fn rotate_signing_key(
    registry: &Registry,
    mut request: Request<pb::RotateSigningKeyRequest>,
) -> Answer<pb::RotateSigningKeyResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let req = request.into_inner();
    let (key, revision) = registry
        .rotate_signing_key(principal.name, req.reason)
        .await?;
    let active = key.key_id.clone();
    Ok(Response::new(pb::RotateSigningKeyResponse {
        key: Some(convert::signing_key(key, &active)),
        revision,
    }))
}

pub async fn list_audit(
    registry: &Registry,
    mut request: Request<pb::ListAuditRequest>,
) -> Answer<pb::ListAuditResponse> {
    let principal = take_principal(&mut request)?;
    let req = request.into_inner();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let filter = AuditFilter {
        name: match req.name.as_str() {
            "" => None,
            raw => Some(prompt_name(raw, registry.limits())?),
        },
        actor: non_empty(req.actor),
        action: non_empty(req.action),
        since: req
            .since
            .as_ref()
            .map(|t| convert::instant("since", t))
            .transpose()?,
        until: req
            .until
            .as_ref()
            .map(|t| convert::instant("until", t))
            .transpose()?,
    };
    let scope = match &filter.name {
        Some(name) => Scope::Prompt(name),
        None => Scope::EveryPrompt,
    };
    authorize(&principal, Action::Inspect, scope)?;
    let page = registry
        .off_runtime(move |r| r.list_audit(&filter, req.page_size, &req.page_token))
        .await?;
    Ok(Response::new(pb::ListAuditResponse {
        entries: page.items.into_iter().map(convert::audit_entry).collect(),
        next_page_token: page.next_page_token,
    }))
}

pub async fn verify_audit(
    registry: &Registry,
    mut request: Request<pb::VerifyAuditRequest>,
) -> Answer<pb::VerifyAuditResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Inspect, Scope::EveryPrompt)?;
    let checkpoint = request
        .into_inner()
        .checkpoint
        .map(convert::checkpoint_from_pb)
        .transpose()?;
    let report = registry
        .off_runtime(move |r| r.verify_audit(checkpoint.as_ref()))
        .await?;
    Ok(Response::new(convert::audit_report(report)))
}

pub async fn create_checkpoint(
    registry: &Registry,
    mut request: Request<pb::CreateCheckpointRequest>,
) -> Answer<pb::Checkpoint> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    Ok(Response::new(convert::checkpoint_to_pb(
        registry.off_runtime(|r| r.create_checkpoint()).await?,
    )))
}

pub async fn prune_versions(
    registry: &Registry,
    mut request: Request<pb::PruneVersionsRequest>,
) -> Answer<pb::PruneVersionsResponse> {
    let principal = take_principal(&mut request)?;
    let req = request.into_inner();
    let name = prompt_name(&req.name, registry.limits())?;
    authorize(&principal, Action::Administer, Scope::Prompt(&name))?;
    let prune = PruneRequest {
        name,
        keep_last: req.keep_last as usize,
        older_than: (req.older_than_seconds > 0)
            .then(|| std::time::Duration::from_secs(req.older_than_seconds)),
        dry_run: req.dry_run,
        actor: principal.name,
        reason: req.reason,
    };
    let outcome = registry.prune_versions(prune).await?;
    Ok(Response::new(pb::PruneVersionsResponse {
        pruned: outcome.pruned,
        kept_labelled: outcome.kept_labelled,
    }))
}

pub async fn find_by_digest(
    registry: &Registry,
    mut request: Request<pb::FindByDigestRequest>,
) -> Answer<pb::FindByDigestResponse> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Inspect, Scope::Service)?;
    let digest = ContentDigest::parse("digest", &request.into_inner().digest)?;
    tracing::Span::current().record("promptreg.prompt.digest", digest.to_string());
    let matches = registry
        .off_runtime(move |r| r.find_by_digest(&digest))
        .await?;
    Ok(Response::new(pb::FindByDigestResponse {
        matches: matches
            .into_iter()
            // Only the prompts the caller may inspect: the others are
            // not even said to exist.
            .filter(|(version, _)| principal.may(Action::Inspect, Scope::Prompt(&version.name)))
            .map(|(version, periods)| pb::DigestMatch {
                version: Some(convert::version(version, false)),
                labels: periods.into_iter().map(convert::label_period).collect(),
            })
            .collect(),
    }))
}
