//! The `promptreg.v1.Registry` service: thin handlers over the registry core.

use super::access::{self, authorize, take_principal};
use super::convert::{self, label_name, prompt_name};
use super::pb;
use super::pb_server::registry_server::Registry as RegistryApi;
use super::provenance;
use super::release;
use crate::domain::access::{Action, Scope};
use crate::domain::validate::{self, version_number};
use crate::domain::{ContentDigest, PromptName, ValidationError};
use crate::registry::fleet::{Ack, AgentLabelStatus, ApplyOutcome, FleetCounts};
use crate::registry::{PointInTime, Registry};
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

pub struct RegistryService {
    registry: Registry,
}

impl RegistryService {
    pub fn new(registry: Registry) -> RegistryService {
        RegistryService { registry }
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// Adds the prompt's attributes (OpenTelemetry GenAI conventions plus ours)
/// to the RPC's span, opened by `telemetry::RpcLayer`.
pub(super) fn annotate(
    name: &str,
    version: u64,
    digest: Option<&ContentDigest>,
    label: Option<&str>,
    revision: Option<u64>,
) {
    let span = tracing::Span::current();
    // Without a trace exporter the span records nothing: skip the work
    // (formatting the digest) on the resolve path.
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.prompt.name", name);
    if version != 0 {
        span.record("gen_ai.prompt.version", version);
    }
    if let Some(digest) = digest {
        span.record("promptreg.prompt.digest", digest.to_string().as_str());
    }
    if let Some(label) = label {
        span.record("promptreg.label", label);
    }
    if let Some(revision) = revision {
        span.record("promptreg.revision", revision);
    }
}

type WatchResponseStream =
    Pin<Box<dyn Stream<Item = Result<super::wire::WatchFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    type WatchStream = WatchResponseStream;
    type WatchManyStream =
        Pin<Box<dyn Stream<Item = Result<super::wire::WatchManyFrame, Status>> + Send>>;
    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(&self, mut request: Request<pb::BackupRequest>) -> Answer<Self::BackupStream> {
        let principal = take_principal(&mut request)?;
        authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
        const CHUNK: usize = 1024 * 1024;
        let (revision, bytes) = self.registry.backup().await?;
        tracing::Span::current().record("promptreg.revision", revision);
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|data| {
                Ok(pb::BackupChunk {
                    data: data.to_vec(),
                    revision,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn watch(&self, mut request: Request<pb::WatchRequest>) -> Answer<Self::WatchStream> {
        let principal = take_principal(&mut request)?;
        let mut request = convert::watch_request(request.into_inner(), self.registry.limits())?;
        access::narrow_selector(&principal, &mut request.selector)?;
        let stream = self
            .registry
            .watch(request)?
            .map(|item| item.map(convert::watch_frame).map_err(convert::watch_end));
        let stream = access::until_revoked(stream, self.registry.revoked(&principal));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_many(
        &self,
        mut request: Request<tonic::Streaming<pb::WatchManyRequest>>,
    ) -> Answer<Self::WatchManyStream> {
        let principal = take_principal(&mut request)?;
        authorize(&principal, Action::Watch, Scope::Service)?;
        let revoked = self.registry.revoked(&principal);
        let inbound = Box::pin(request.into_inner());
        let stream = super::watch_many::WatchMany::new(self.registry.clone(), inbound, principal);
        Ok(Response::new(Box::pin(access::until_revoked(
            stream, revoked,
        ))))
    }

    async fn ack_applied(
        &self,
        mut request: Request<pb::AckAppliedRequest>,
    ) -> Answer<pb::AckAppliedResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        // The same bound as a Watch's agent_id; the fleet view keeps both.
        validate::agent_id("agent_id", &req.agent_id)?;
        validate::optional_text("reason", &req.reason, self.registry.limits().max_text_bytes)?;
        let outcome = match pb::ApplyOutcome::try_from(req.outcome) {
            Ok(pb::ApplyOutcome::Applied) => ApplyOutcome::Applied,
            Ok(pb::ApplyOutcome::Rejected) => {
                validate::rejection_reason("reason", &req.reason)?;
                ApplyOutcome::Rejected { reason: req.reason }
            }
            _ => return Err(ValidationError::new("outcome", "must be APPLIED or REJECTED").into()),
        };
        let ack = Ack {
            agent_id: req.agent_id,
            name: prompt_name(&req.name, self.registry.limits())?,
            label: label_name(&req.label)?,
            version: version_number("version", req.version)?,
            digest: ContentDigest::parse("digest", &req.digest)?,
            revision: req.revision,
            outcome,
        };
        authorize(&principal, Action::Ack, Scope::Label(&ack.name, &ack.label))?;
        let applied = matches!(ack.outcome, ApplyOutcome::Applied).then_some(ack.version);
        annotate(
            ack.name.as_str(),
            ack.version,
            Some(&ack.digest),
            Some(ack.label.as_str()),
            None,
        );
        let target = match self.registry.ack_from_memory(&ack) {
            Some(target) => target,
            None => self.registry.off_runtime(move |r| r.ack(ack)).await?,
        };
        Ok(Response::new(pb::AckAppliedResponse {
            target_version: target.unwrap_or(0),
            in_sync: crate::domain::in_sync(applied, target),
        }))
    }

    async fn list_signing_keys(
        &self,
        request: Request<pb::ListSigningKeysRequest>,
    ) -> Answer<pb::ListSigningKeysResponse> {
        provenance::list_signing_keys(&self.registry, request).await
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Answer<pb::RotateSigningKeyResponse> {
        provenance::rotate_signing_key(&self.registry, request).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Answer<pb::ListAuditResponse> {
        provenance::list_audit(&self.registry, request).await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Answer<pb::VerifyAuditResponse> {
        provenance::verify_audit(&self.registry, request).await
    }

    async fn create_checkpoint(
        &self,
        request: Request<pb::CreateCheckpointRequest>,
    ) -> Answer<pb::Checkpoint> {
        provenance::create_checkpoint(&self.registry, request).await
    }

    async fn prune_versions(
        &self,
        request: Request<pb::PruneVersionsRequest>,
    ) -> Answer<pb::PruneVersionsResponse> {
        provenance::prune_versions(&self.registry, request).await
    }

    async fn find_by_digest(
        &self,
        request: Request<pb::FindByDigestRequest>,
    ) -> Answer<pb::FindByDigestResponse> {
        provenance::find_by_digest(&self.registry, request).await
    }

    async fn fleet_status(
        &self,
        mut request: Request<pb::FleetStatusRequest>,
    ) -> Answer<pb::FleetStatusResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        let name = match req.name.as_str() {
            "" => None,
            raw => Some(prompt_name(raw, self.registry.limits())?),
        };
        let label = match req.label.as_str() {
            "" => None,
            raw => Some(label_name(raw)?),
        };
        let scope = match &name {
            Some(name) => Scope::Prompt(name),
            None => Scope::EveryPrompt,
        };
        authorize(&principal, Action::Inspect, scope)?;
        if let (true, Some(name), Some(label)) = (req.summary_only, &name, &label) {
            let (name, label) = (name.clone(), label.clone());
            let counts = self
                .registry
                .off_runtime(move |r| r.fleet_summary(&name, &label))
                .await?;
            return Ok(Response::new(pb::FleetStatusResponse {
                agents: Vec::new(),
                summary: Some(convert::fleet_summary(counts)),
            }));
        }
        let rows = self
            .registry
            .off_runtime(move |r| r.fleet_status(name.as_ref(), label.as_ref()))
            .await?;
        let counts: FleetCounts = rows.iter().map(AgentLabelStatus::state).collect();
        let summary = convert::fleet_summary(counts);
        let agents = if req.summary_only {
            Vec::new()
        } else {
            rows.into_iter().map(convert::agent_status).collect()
        };
        Ok(Response::new(pb::FleetStatusResponse {
            agents,
            summary: Some(summary),
        }))
    }

    async fn publish_version(
        &self,
        mut request: Request<pb::PublishVersionRequest>,
    ) -> Answer<pb::PublishVersionResponse> {
        let principal = take_principal(&mut request)?;
        let trace_id = convert::trace_id(&request);
        let mut req = request.into_inner();
        // The principal publishes, whatever the request claims.
        req.author = principal.name.clone();
        let new = convert::new_version(req, self.registry.limits(), trace_id)?;
        authorize(&principal, Action::Publish, Scope::Prompt(&new.name))?;
        let name = new.name.to_string();
        let published = self.registry.publish(new).await?;
        annotate(
            &name,
            published.version,
            Some(&published.digest),
            None,
            Some(published.revision),
        );
        Ok(Response::new(pb::PublishVersionResponse {
            version: published.version,
            digest: published.digest.to_string(),
            revision: published.revision,
            created: published.created,
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Answer<super::wire::GetVersionFrame> {
        super::resolve::get_version(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_prompts(
        &self,
        mut request: Request<pb::ListPromptsRequest>,
    ) -> Answer<pb::ListPromptsResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        if !req.prefix.is_empty() {
            PromptName::check_prefix("prefix", &req.prefix, self.registry.limits().max_name_bytes)?;
        }
        access::may_list(&principal, Action::ReadContent, &req.prefix)?;
        let page = self
            .registry
            .off_runtime(move |r| r.list_prompts(&req.prefix, req.page_size, &req.page_token))
            .await?;
        Ok(Response::new(pb::ListPromptsResponse {
            prompts: page
                .items
                .into_iter()
                .filter(|p| principal.may(Action::ReadContent, Scope::Prompt(&p.name)))
                .map(convert::prompt_summary)
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_versions(
        &self,
        mut request: Request<pb::ListVersionsRequest>,
    ) -> Answer<pb::ListVersionsResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        let name = prompt_name(&req.name, self.registry.limits())?;
        authorize(&principal, Action::ReadContent, Scope::Prompt(&name))?;
        let filter = crate::registry::release::VersionFilter {
            tags: req.tags.into_iter().collect(),
            passing: req.passing,
            eligible_for: match req.eligible_for.as_str() {
                "" => None,
                raw => Some(crate::domain::LabelName::parse("eligible_for", raw)?),
            },
        };
        let (page, checks) = self
            .registry
            .off_runtime(move |r| {
                r.list_versions_filtered(&name, &filter, req.page_size, &req.page_token)
            })
            .await?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: page
                .items
                .into_iter()
                .map(|v| convert::version(v, false))
                .collect(),
            next_page_token: page.next_page_token,
            checks: checks.into_iter().map(release::check_result).collect(),
        }))
    }

    async fn set_label(
        &self,
        request: Request<pb::SetLabelRequest>,
    ) -> Answer<pb::LabelMoveResponse> {
        super::moves::set_label(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Answer<pb::LabelMoveResponse> {
        super::moves::rollback(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn remove_label(
        &self,
        request: Request<pb::RemoveLabelRequest>,
    ) -> Answer<pb::LabelMoveResponse> {
        super::moves::remove_label(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_labels(
        &self,
        mut request: Request<pb::ListLabelsRequest>,
    ) -> Answer<pb::ListLabelsResponse> {
        let principal = take_principal(&mut request)?;
        let name = prompt_name(&request.into_inner().name, self.registry.limits())?;
        authorize(&principal, Action::ReadContent, Scope::Prompt(&name))?;
        let labels = self
            .registry
            .off_runtime(move |r| r.list_labels(&name))
            .await?;
        Ok(Response::new(pb::ListLabelsResponse {
            labels: labels.into_iter().map(convert::label).collect(),
        }))
    }

    async fn label_history(
        &self,
        mut request: Request<pb::LabelHistoryRequest>,
    ) -> Answer<pb::LabelHistoryResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        let name = prompt_name(&req.name, self.registry.limits())?;
        authorize(&principal, Action::Inspect, Scope::Prompt(&name))?;
        let label = label_name(&req.label)?;
        let page = self
            .registry
            .off_runtime(move |r| r.label_history(&name, &label, req.page_size, &req.page_token))
            .await?;
        Ok(Response::new(pb::LabelHistoryResponse {
            moves: page.items.into_iter().map(convert::label_move).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn resolve_at(
        &self,
        mut request: Request<pb::ResolveAtRequest>,
    ) -> Answer<pb::ResolveAtResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        let name = prompt_name(&req.name, self.registry.limits())?;
        authorize(&principal, Action::ReadContent, Scope::Prompt(&name))?;
        let label = label_name(&req.label)?;
        use pb::resolve_at_request::At;
        let at = match req.at {
            None => {
                return Err(ValidationError::new("at", "is required: set time or revision").into())
            }
            Some(At::Revision(r)) => PointInTime::Revision(r),
            Some(At::Time(t)) => PointInTime::Time(convert::instant("time", &t)?),
        };
        let (version, mv) = {
            let (name, label) = (name.clone(), label.clone());
            self.registry
                .off_runtime(move |r| r.resolve_at(&name, &label, at))
                .await?
        };
        annotate(
            name.as_str(),
            version.number,
            Some(&version.digest),
            Some(label.as_str()),
            Some(mv.revision),
        );
        Ok(Response::new(pb::ResolveAtResponse {
            version: Some(convert::version(version, true)),
            r#move: Some(convert::label_move(mv)),
        }))
    }

    async fn diff_versions(
        &self,
        mut request: Request<pb::DiffVersionsRequest>,
    ) -> Answer<pb::DiffVersionsResponse> {
        let principal = take_principal(&mut request)?;
        let req = request.into_inner();
        let name = prompt_name(&req.name, self.registry.limits())?;
        authorize(&principal, Action::Inspect, Scope::Prompt(&name))?;
        let from = version_number("from_version", req.from_version)?;
        let to = version_number("to_version", req.to_version)?;
        let (old, new, diff) = self
            .registry
            .off_runtime(move |r| r.diff(&name, from, to))
            .await?;
        Ok(Response::new(pb::DiffVersionsResponse {
            template_diff: diff.template_diff,
            variables_added: diff.variables_added,
            variables_removed: diff.variables_removed,
            model_config_diff: diff.model_config_diff,
            tags_changed: diff.tags_changed,
            from_digest: old.digest.to_string(),
            to_digest: new.digest.to_string(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Answer<pb::CreateTokenResponse> {
        Ok(Response::new(
            access::create_token(&self.registry, request).await?,
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Answer<pb::ListTokensResponse> {
        Ok(Response::new(access::list_tokens(&self.registry, request)?))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Answer<pb::RevokeTokenResponse> {
        Ok(Response::new(
            access::revoke_token(&self.registry, request).await?,
        ))
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Answer<pb::WhoAmIResponse> {
        Ok(Response::new(access::who_am_i(request)?))
    }

    async fn attest_version(
        &self,
        request: Request<pb::AttestVersionRequest>,
    ) -> Answer<pb::AttestVersionResponse> {
        release::attest_version(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_checks(
        &self,
        request: Request<pb::ListChecksRequest>,
    ) -> Answer<pb::ListChecksResponse> {
        release::list_checks(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn add_attester(&self, request: Request<pb::AddAttesterRequest>) -> Answer<pb::Attester> {
        release::add_attester(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_attesters(
        &self,
        request: Request<pb::ListAttestersRequest>,
    ) -> Answer<pb::ListAttestersResponse> {
        release::list_attesters(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn remove_attester(
        &self,
        request: Request<pb::RemoveAttesterRequest>,
    ) -> Answer<pb::Attester> {
        release::remove_attester(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn set_policy(&self, request: Request<pb::SetPolicyRequest>) -> Answer<pb::Policy> {
        release::set_policy(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Answer<pb::GetPolicyResponse> {
        release::get_policy(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Answer<pb::ListPoliciesResponse> {
        release::list_policies(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Answer<pb::DeletePolicyResponse> {
        release::delete_policy(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn freeze_label(&self, request: Request<pb::FreezeLabelRequest>) -> Answer<pb::Freeze> {
        release::freeze_label(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn unfreeze_label(
        &self,
        request: Request<pb::UnfreezeLabelRequest>,
    ) -> Answer<pb::UnfreezeLabelResponse> {
        release::unfreeze_label(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_freezes(
        &self,
        request: Request<pb::ListFreezesRequest>,
    ) -> Answer<pb::ListFreezesResponse> {
        release::list_freezes(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Answer<pb::ListRequestsResponse> {
        release::list_requests(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn approve_request(
        &self,
        request: Request<pb::ApproveRequestRequest>,
    ) -> Answer<pb::ReviewResponse> {
        release::approve_request(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn reject_request(
        &self,
        request: Request<pb::RejectRequestRequest>,
    ) -> Answer<pb::ReviewResponse> {
        release::reject_request(&self.registry, request)
            .await
            .map(Response::new)
    }

    async fn start_rollout(
        &self,
        r: Request<pb::StartRolloutRequest>,
    ) -> Answer<pb::RolloutResponse> {
        super::rollout::start_rollout(&self.registry, r)
            .await
            .map(Response::new)
    }

    async fn get_rollout(&self, r: Request<pb::GetRolloutRequest>) -> Answer<pb::RolloutStatus> {
        super::rollout::get_rollout(&self.registry, r)
            .await
            .map(Response::new)
    }

    async fn control_rollout(
        &self,
        r: Request<pb::ControlRolloutRequest>,
    ) -> Answer<pb::RolloutResponse> {
        super::rollout::control_rollout(&self.registry, r)
            .await
            .map(Response::new)
    }

    async fn report_outcome(
        &self,
        r: Request<pb::ReportOutcomeRequest>,
    ) -> Answer<pb::ReportOutcomeResponse> {
        super::rollout::report_outcome(&self.registry, r)
            .await
            .map(Response::new)
    }
}
