//! Promotion requests: made by a move of a protected label, reviewed by
//! approvers (four eyes), void when what they are bound to changes,
//! expired after their time; the last approval moves the label in the
//! same batch that marks the request approved.

use super::super::write::{Approved, MoveRequest, MoveStep, Moved};
use super::super::{Registry, RegistryError, Result, WriterState};
use crate::domain::release::{Approval, Gate, PromotionRequest, RequestState};
use crate::domain::{validate, Clearance, ContentDigest, LabelName, MoveKind, PromptName};
use crate::provenance::AuditEntry;

/// Most requests one listing returns.
const MAX_LISTED: usize = 1000;

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub name: Option<PromptName>,
    pub label: Option<LabelName>,
    pub pending_only: bool,
}

/// The outcome of a review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    pub request: PromotionRequest,
    /// Set when this approval was the last one: the move it made.
    pub moved: Option<Moved>,
}

impl Registry {
    /// Makes a promotion request for a move of a protected label, under the
    /// writer lock, with its ledger entry (`request`).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::registry) fn open_request(
        &self,
        writer: &WriterState,
        request: MoveRequest,
        kind: MoveKind,
        (version, digest): (u64, ContentDigest),
        base_version: Option<u64>,
        approvals: u32,
        ttl_secs: Option<u64>,
        rollout: Option<crate::domain::rollout::RolloutSpec>,
    ) -> Result<PromotionRequest> {
        let store = self.store();
        let (_, time) = writer.next();
        let ttl = ttl_secs.unwrap_or(self.inner.request_ttl_secs);
        let opened = PromotionRequest {
            id: store.next_request_id()?,
            name: request.name,
            label: request.label,
            version,
            digest,
            base_version,
            kind,
            requester: request.actor,
            reason: request.reason,
            trace_id: request.trace_id,
            created: time,
            expires: time.saturating_add(
                i64::try_from(ttl)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            ),
            approvals_required: approvals,
            approvals: Vec::new(),
            state: RequestState::Pending,
            closed_by: String::new(),
            closed_reason: String::new(),
            move_revision: 0,
            rollout,
        };
        let detail = format!(
            "{}:{} {} -> v{version}; needs {approvals} approval(s); expires {}",
            opened.name,
            opened.label,
            side(base_version),
            crate::time::format_micros(opened.expires)
        );
        let entry = self.request_entry(
            writer,
            &opened,
            "request",
            &opened.requester,
            &opened.reason,
            detail,
        )?;
        store.put_request(&opened, &entry)?;
        Ok(opened)
    }

    /// Requests, newest first, each with its state now: a pending request
    /// whose label moved since shows as void, one past its time as
    /// expired.
    pub fn list_requests(&self, filter: &RequestFilter) -> Result<Vec<PromotionRequest>> {
        let now = crate::time::now_micros();
        let mut out = Vec::new();
        for mut request in self.store().requests()?.into_iter().rev() {
            if filter.name.as_ref().is_some_and(|n| *n != request.name)
                || filter.label.as_ref().is_some_and(|l| *l != request.label)
            {
                continue;
            }
            request.state = request.state_at(now);
            if request.state == RequestState::Pending {
                if let Some(why) = self.voided(&request)? {
                    request.state = RequestState::Void;
                    request.closed_reason = why;
                }
            }
            if filter.pending_only && request.state != RequestState::Pending {
                continue;
            }
            out.push(request);
            if out.len() == MAX_LISTED {
                break;
            }
        }
        Ok(out)
    }

    /// One request, as stored (for authorizing a review on its label).
    pub fn promotion_request(&self, id: u64) -> Result<PromotionRequest> {
        self.store()
            .request(id)?
            .ok_or_else(|| RegistryError::NotFound(format!("no promotion request has id {id}")))
    }

    /// Why a pending request no longer holds, if it does not: the label
    /// moved, the version was pruned, or the policy stopped asking for
    /// approvals.
    fn voided(&self, request: &PromotionRequest) -> Result<Option<String>> {
        let store = self.store();
        let now_at = store
            .label(&request.name, &request.label)?
            .map(|t| t.version);
        if now_at != request.base_version {
            return Ok(Some(format!(
                "label {} of {} moved since the request ({} then, {} now)",
                request.label,
                request.name,
                target_text(request.base_version),
                target_text(now_at)
            )));
        }
        if store
            .version(&request.name, request.version)?
            .is_none_or(|v| v.pruned)
        {
            return Ok(Some(format!(
                "{} v{} was pruned since the request",
                request.name, request.version
            )));
        }
        let policies = store.policies()?;
        let protected = crate::domain::release::governing(&policies, &request.name, &request.label)
            .is_some_and(|p| p.approvals > 0);
        if !protected {
            return Ok(Some(format!(
                "label {} of {} is no longer protected (its policy was deleted or asks for no approval): promote it directly",
                request.label, request.name
            )));
        }
        Ok(None)
    }

    /// Approves a request as `approver` (whose approver role on the label
    /// the caller checked). The approval that completes it moves the label,
    /// in one batch with the request's new state.
    pub async fn approve(&self, approver: &str, id: u64, reason: String) -> Result<Reviewed> {
        validate::required_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let approver = approver.to_string();
        let reviewed = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let mut request = this.reviewable(&writer, id)?;
                let author = this
                    .existing_version(&request.name, request.version)?
                    .author;
                if let Some(why) = request.refuses_approver(&approver, &author) {
                    return Err(RegistryError::FailedPrecondition(why));
                }
                let (_, time) = writer.next();
                request.approvals.push(Approval {
                    approver: approver.clone(),
                    reason: reason.clone(),
                    time,
                });
                let given = request.approvals.len() as u32;
                if given < request.approvals_required {
                    let detail = format!("{} of {} approvals", given, request.approvals_required);
                    let entry = this
                        .request_entry(&writer, &request, "approve", &approver, &reason, detail)?;
                    this.store().put_request(&request, &entry)?;
                    return Ok(Reviewed {
                        request,
                        moved: None,
                    });
                }
                this.complete(&mut writer, request, &approver, &reason)
            })
            .await?;
        match &reviewed.moved {
            Some(moved) => self.wait_durable(moved.revision).await?,
            None => self.store().flush().await?,
        }
        Ok(reviewed)
    }

    /// The last approval: the gate again (freezes and checks may have
    /// changed), then the move and the approved request in one batch. The
    /// approval's own ledger entry comes first, then the move's.
    fn complete(
        &self,
        writer: &mut WriterState,
        mut request: PromotionRequest,
        approver: &str,
        reason: &str,
    ) -> Result<Reviewed> {
        // A rollout's start passes the gate as the promote it leads to.
        let gate_kind = match request.kind {
            MoveKind::Rollout => MoveKind::Promote,
            kind => kind,
        };
        let (gate, _) = self.gate_move(
            &request.name,
            &request.label,
            gate_kind,
            Some(request.version),
            true,
        )?;
        if let Gate::Refuse(why) = gate {
            return Err(RegistryError::FailedPrecondition(format!(
                "request {} cannot complete now: {}",
                request.id,
                why.describe(&request.name, &request.label, crate::time::format_micros)
            )));
        }
        let detail = format!(
            "{} of {} approvals; the label moves",
            request.approvals.len(),
            request.approvals_required
        );
        let mv = MoveRequest {
            name: request.name.clone(),
            label: request.label.clone(),
            actor: request.requester.clone(),
            reason: request.reason.clone(),
            trace_id: request.trace_id.clone(),
        };
        self.refuse_under_rollout(&mv).map_err(|e| match e {
            RegistryError::FailedPrecondition(why) => RegistryError::FailedPrecondition(format!(
                "request {} cannot complete now: {why}",
                request.id
            )),
            other => other,
        })?;
        let step = MoveStep {
            kind: request.kind,
            from_version: request.base_version,
            to_version: Some(request.version),
            digest: Some(request.digest),
            clearance: Clearance {
                request: Some(request.id),
                approvers: request
                    .approvals
                    .iter()
                    .map(|a| a.approver.clone())
                    .collect(),
                emergency: false,
            },
            rollout: None,
        };
        let (move_revision, time) = writer.next();
        request.state = RequestState::Approved;
        request.move_revision = move_revision;
        // Part of the move's batch: the approval's entry, then the move's.
        let entry = AuditEntry::after(
            &self.store().ledger_head()?,
            move_revision,
            time,
            approver,
            "approve",
            request.target(),
            reason,
            detail,
        );
        let approved = Approved {
            request: &request,
            entry,
        };
        if let Some(spec) = request.rollout.clone() {
            return self.complete_rollout_request(writer, &request, mv, spec, approved);
        }
        let revision = self.commit_move(writer, mv, step, Some(approved))?;
        let moved = Moved {
            changed: true,
            revision,
            from_version: request.base_version,
            to_version: Some(request.version),
            digest: Some(request.digest),
            request: Some(request.clone()),
            emergency: false,
            rollout_aborted: None,
        };
        Ok(Reviewed {
            request,
            moved: Some(moved),
        })
    }

    /// The last approval of a rollout's request: the rollout starts from
    /// the label's target (the request's base, or it would be void).
    fn complete_rollout_request(
        &self,
        writer: &mut WriterState,
        request: &PromotionRequest,
        mv: MoveRequest,
        spec: crate::domain::rollout::RolloutSpec,
        approved: Approved<'_>,
    ) -> Result<Reviewed> {
        use crate::domain::rollout::Side;
        let current = self
            .store()
            .label(&request.name, &request.label)?
            .ok_or_else(|| {
                RegistryError::FailedPrecondition(format!(
                    "request {}: label {} of {} is not set",
                    request.id, request.label, request.name
                ))
            })?;
        let stable = Side {
            version: current.version,
            digest: current.digest,
        };
        let candidate = Side {
            version: request.version,
            digest: request.digest,
        };
        let (_, revision) =
            self.begin_rollout(writer, mv, stable, candidate, spec, Some(approved))?;
        let mut request = request.clone();
        request.state = RequestState::Approved;
        request.move_revision = revision;
        let moved = Moved {
            changed: true,
            revision,
            from_version: Some(current.version),
            to_version: Some(current.version),
            digest: Some(current.digest),
            request: Some(request.clone()),
            emergency: false,
            rollout_aborted: None,
        };
        Ok(Reviewed {
            request,
            moved: Some(moved),
        })
    }

    /// Rejects a request: it can no longer be approved.
    pub async fn reject(&self, reviewer: &str, id: u64, reason: String) -> Result<Reviewed> {
        validate::required_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let reviewer = reviewer.to_string();
        let reviewed = self
            .write(move |this| {
                let writer = this.lock_writer();
                let mut request = this.reviewable(&writer, id)?;
                request.state = RequestState::Rejected;
                request.closed_by = reviewer.clone();
                request.closed_reason = reason.clone();
                let entry = this.request_entry(
                    &writer,
                    &request,
                    "reject",
                    &reviewer,
                    &reason,
                    String::new(),
                )?;
                this.store().put_request(&request, &entry)?;
                Ok(Reviewed {
                    request,
                    moved: None,
                })
            })
            .await?;
        self.store().flush().await?;
        Ok(reviewed)
    }

    /// A request that can still be reviewed, under the writer lock; one
    /// found void or expired is recorded so (with its ledger entry) and
    /// refused, saying why.
    fn reviewable(&self, writer: &WriterState, id: u64) -> Result<PromotionRequest> {
        let mut request = self.promotion_request(id)?;
        let now = crate::time::now_micros();
        if request.state == RequestState::Pending {
            let (state, why) = if request.state_at(now) == RequestState::Expired {
                (
                    RequestState::Expired,
                    Some(format!(
                        "it expired at {}",
                        crate::time::format_micros(request.expires)
                    )),
                )
            } else {
                (RequestState::Void, self.voided(&request)?)
            };
            let Some(why) = why else {
                return Ok(request);
            };
            request.state = state;
            request.closed_by = "promptreg".to_string();
            request.closed_reason = why;
            let entry = self.request_entry(
                writer,
                &request,
                state.as_str(),
                "promptreg",
                &request.closed_reason,
                String::new(),
            )?;
            self.store().put_request(&request, &entry)?;
            self.store().flush_blocking()?;
        }
        let mut why = format!("request {id} is {}", request.state.as_str());
        if !request.closed_reason.is_empty() {
            why.push_str(&format!(": {}", request.closed_reason));
        }
        if !request.closed_by.is_empty() && request.state == RequestState::Rejected {
            why.push_str(&format!(" (by {})", request.closed_by));
        }
        Err(RegistryError::FailedPrecondition(format!(
            "{why}; make a new request (promote again)"
        )))
    }

    fn request_entry(
        &self,
        writer: &WriterState,
        request: &PromotionRequest,
        action: &str,
        actor: &str,
        reason: &str,
        detail: String,
    ) -> Result<AuditEntry> {
        let (_, time) = writer.next();
        Ok(AuditEntry::after(
            &self.store().ledger_head()?,
            writer.head,
            time,
            actor,
            action,
            request.target(),
            reason,
            detail,
        ))
    }
}

/// A label's target in a sentence.
fn target_text(version: Option<u64>) -> String {
    version.map_or("unset".to_string(), |v| format!("v{v}"))
}

fn side(version: Option<u64>) -> String {
    version.map_or("-".to_string(), |v| format!("v{v}"))
}
