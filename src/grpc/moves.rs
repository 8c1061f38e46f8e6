//! The three label-move RPCs (SetLabel, Rollback, RemoveLabel): each
//! authorizes the label through [`move_request`] and goes through the
//! registry's one label-move path, where the release gate stands. A move of
//! a protected label answers with the promotion request it made instead.

use super::access::{authorize, take_principal};
use super::convert::{self, movable_label, prompt_name};
use super::pb;
use crate::domain::access::{Action, Principal, Scope};
use crate::domain::validate::version_number;
use crate::registry::{MoveRequest, Moved, Registry};
use tonic::{Request, Status};

/// A label move by `principal`, who is recorded as its actor, once it may
/// move that label.
pub(super) fn move_request(
    registry: &Registry,
    principal: Principal,
    name: &str,
    label: &str,
    reason: String,
    trace_id: Option<String>,
) -> Result<MoveRequest, Status> {
    let name = prompt_name(name, registry.limits())?;
    let label = movable_label(label)?;
    authorize(&principal, Action::MoveLabel, Scope::Label(&name, &label))?;
    Ok(MoveRequest {
        trace_id,
        name,
        label,
        actor: principal.name,
        reason,
    })
}

/// Annotates a label move and adds a span event (and a log line) with the
/// versions and the reason.
fn annotate_move(name: &str, label: &str, reason: &str, moved: &Moved) {
    super::service::annotate(
        name,
        moved.to_version.unwrap_or(0),
        moved.digest.as_ref(),
        Some(label),
        Some(moved.revision),
    );
    match &moved.request {
        Some(request) => tracing::info!(
            prompt = name,
            label,
            to_version = request.version,
            request = request.id,
            reason,
            "label is protected: promotion request made"
        ),
        None => tracing::info!(
            prompt = name,
            label,
            from_version = moved.from_version.unwrap_or(0),
            to_version = moved.to_version.unwrap_or(0),
            changed = moved.changed,
            emergency = moved.emergency,
            reason,
            "label moved"
        ),
    }
}

pub async fn set_label(
    registry: &Registry,
    mut request: Request<pb::SetLabelRequest>,
) -> Result<pb::LabelMoveResponse, Status> {
    let principal = take_principal(&mut request)?;
    let trace_id = convert::trace_id(&request);
    let req = request.into_inner();
    let version = version_number("version", req.version)?;
    let (name, label, reason) = (req.name.clone(), req.label.clone(), req.reason.clone());
    let mv = move_request(
        registry, principal, &req.name, &req.label, req.reason, trace_id,
    )?;
    let moved = registry
        .set_label(mv, version, req.expected_version)
        .await?;
    annotate_move(&name, &label, &reason, &moved);
    Ok(convert::moved(moved))
}

pub async fn rollback(
    registry: &Registry,
    mut request: Request<pb::RollbackRequest>,
) -> Result<pb::LabelMoveResponse, Status> {
    let principal = take_principal(&mut request)?;
    let trace_id = convert::trace_id(&request);
    let req = request.into_inner();
    let to = req.to_version.filter(|v| *v != 0);
    let (name, label, reason) = (req.name.clone(), req.label.clone(), req.reason.clone());
    let mv = move_request(
        registry, principal, &req.name, &req.label, req.reason, trace_id,
    )?;
    let moved = if req.emergency {
        registry
            .emergency_rollback(mv, to, req.expected_version)
            .await?
    } else {
        registry.rollback(mv, to, req.expected_version).await?
    };
    annotate_move(&name, &label, &reason, &moved);
    Ok(convert::moved(moved))
}

pub async fn remove_label(
    registry: &Registry,
    mut request: Request<pb::RemoveLabelRequest>,
) -> Result<pb::LabelMoveResponse, Status> {
    let principal = take_principal(&mut request)?;
    let trace_id = convert::trace_id(&request);
    let req = request.into_inner();
    let (name, label, reason) = (req.name.clone(), req.label.clone(), req.reason.clone());
    let mv = move_request(
        registry, principal, &req.name, &req.label, req.reason, trace_id,
    )?;
    let moved = registry.remove_label(mv).await?;
    annotate_move(&name, &label, &reason, &moved);
    Ok(convert::moved(moved))
}
