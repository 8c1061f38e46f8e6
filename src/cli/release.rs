//! Release policy from the command line: `attest`, `checks`, `requests`,
//! `approve`, `reject` (the admin side is `policy.rs`); and the text and JSON shapes of check results and promotion
//! requests that `versions`, `get` and `promote` print too.

use super::client::{connect, Failure};
use super::json::{emit, time_text};
use super::text::{ago, short_digest, Listing};
use super::{AttestArgs, ChecksArgs, Outcome, RequestsArgs, ReviewArgs};
use crate::grpc::pb;
use serde::Serialize;
use std::path::Path;

fn read_text(path: &Path, flag: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {flag} {}: {e}", path.display())))
}

pub(super) async fn attest(args: AttestArgs) -> Result<(), Failure> {
    let envelope = match &args.envelope_file {
        Some(path) => read_text(path, "--envelope-file")?,
        None => String::new(),
    };
    if envelope.is_empty() && (args.check.is_none() || args.result.is_none()) {
        return Err(Failure::usage(
            "--check and --result are required (or --envelope-file with a signed result)",
        ));
    }
    let details = match &args.details_file {
        Some(path) => read_text(path, "--details-file")?,
        None => String::new(),
    };
    let mut client = connect(&args.client).await?;
    let request = pb::AttestVersionRequest {
        name: args.name.clone(),
        version: args.version,
        check: args.check.clone().unwrap_or_default(),
        result: match args.result {
            None => pb::CheckOutcome::Unspecified,
            Some(Outcome::Pass) => pb::CheckOutcome::Pass,
            Some(Outcome::Fail) => pb::CheckOutcome::Fail,
        }
        .into(),
        score: args.score,
        url: args.url.clone().unwrap_or_default(),
        details,
        envelope,
    };
    let result = client
        .attest_version(request)
        .await?
        .into_inner()
        .result
        .unwrap_or_default();
    emit(
        &args.client,
        || {
            let mut text = format!(
                "recorded {} {} for {} v{} (entry {})",
                result.check,
                outcome_name(result.result),
                result.name,
                result.version,
                result.sequence
            );
            if !result.envelope_key.is_empty() {
                text.push_str(&format!("; envelope signed by {}", result.envelope_key));
            }
            text
        },
        CheckJson::of(&result),
    );
    Ok(())
}

pub(super) async fn checks(args: ChecksArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let results = client
        .list_checks(pb::ListChecksRequest {
            name: args.name.clone(),
            version: args.version,
            history: args.history,
        })
        .await?
        .into_inner()
        .results;
    print_checks(&args.client, &results);
    Ok(())
}

/// A table of check results (or one JSON object per line).
pub(super) fn print_checks(options: &super::ClientOptions, results: &[pb::CheckResult]) {
    let mut listing = Listing::new(
        options,
        &["VERSION", "CHECK", "RESULT", "SCORE", "BY", "WHEN", "URL"],
        "no check results",
    );
    for r in results {
        listing.row(
            || {
                vec![
                    format!("v{}", r.version),
                    r.check.clone(),
                    outcome_name(r.result).to_string(),
                    r.score.map_or("-".into(), |s| s.to_string()),
                    if r.envelope_key.is_empty() {
                        r.attester.clone()
                    } else {
                        format!("{} (signed by {})", r.attester, r.envelope_key)
                    },
                    ago(&r.time),
                    r.url.clone(),
                ]
            },
            CheckJson::of(r),
        );
    }
    listing.finish();
}

/// `eval:pass safety:fail`, the newest result of each check of `version`.
pub(super) fn checks_summary(results: &[pb::CheckResult], version: u64) -> String {
    let cells: Vec<String> = results
        .iter()
        .filter(|r| r.version == version)
        .map(|r| format!("{}:{}", r.check, outcome_name(r.result)))
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(" ")
    }
}

pub(super) fn outcome_name(raw: i32) -> &'static str {
    match pb::CheckOutcome::try_from(raw) {
        Ok(pb::CheckOutcome::Pass) => "pass",
        Ok(pb::CheckOutcome::Fail) => "fail",
        _ => "unknown",
    }
}

/// A check result as JSON.
#[derive(Serialize)]
pub(super) struct CheckJson<'a> {
    name: &'a str,
    version: u64,
    digest: &'a str,
    check: &'a str,
    result: &'static str,
    score: Option<f64>,
    url: &'a str,
    details: &'a str,
    attester: &'a str,
    time: String,
    sequence: u64,
    signing_key_id: &'a str,
    signature: String,
    envelope_key: &'a str,
}

impl<'a> CheckJson<'a> {
    pub(super) fn of(r: &'a pb::CheckResult) -> CheckJson<'a> {
        CheckJson {
            name: &r.name,
            version: r.version,
            digest: &r.digest,
            check: &r.check,
            result: outcome_name(r.result),
            score: r.score,
            url: &r.url,
            details: &r.details,
            attester: &r.attester,
            time: time_text(&r.time),
            sequence: r.sequence,
            signing_key_id: &r.signing_key_id,
            signature: hex::encode(&r.signature),
            envelope_key: &r.envelope_key,
        }
    }
}

pub(super) async fn requests(args: RequestsArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let requests = client
        .list_requests(pb::ListRequestsRequest {
            name: args.name.clone().unwrap_or_default(),
            label: args.label.clone().unwrap_or_default(),
            pending: args.pending,
        })
        .await?
        .into_inner()
        .requests;
    let mut listing = Listing::new(
        &args.client,
        &[
            "ID",
            "PROMPT",
            "LABEL",
            "MOVE",
            "STATE",
            "APPROVALS",
            "REQUESTER",
            "EXPIRES",
            "REASON",
        ],
        "no promotion requests",
    );
    for q in &requests {
        listing.row(
            || {
                vec![
                    q.id.to_string(),
                    q.name.clone(),
                    q.label.clone(),
                    format!(
                        "{} -> v{} ({})",
                        side(q.base_version),
                        q.version,
                        short_digest(&q.digest)
                    ),
                    state_text(q),
                    format!("{}/{}", q.approvals.len(), q.approvals_required),
                    q.requester.clone(),
                    time_text(&q.expires),
                    q.reason.clone(),
                ]
            },
            RequestJson::of(q),
        );
    }
    listing.finish();
    Ok(())
}

pub(super) async fn review(args: ReviewArgs, approve: bool) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let reviewed = if approve {
        let request = pb::ApproveRequestRequest {
            id: args.id,
            reason: args.reason.clone(),
        };
        client.approve_request(request).await?.into_inner()
    } else {
        let request = pb::RejectRequestRequest {
            id: args.id,
            reason: args.reason.clone(),
        };
        client.reject_request(request).await?.into_inner()
    };
    let q = reviewed.request.unwrap_or_default();
    emit(
        &args.client,
        || match &reviewed.r#move {
            Some(moved) => format!(
                "request {} approved: {} {} -> v{} at revision {} (approved by {})",
                q.id,
                q.name,
                q.label,
                moved.to_version,
                moved.revision,
                q.approvals
                    .iter()
                    .map(|a| a.approver.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None if approve => format!(
                "request {} approved: {} of {} approvals; the label moves at the last one",
                q.id,
                q.approvals.len(),
                q.approvals_required
            ),
            None => format!("request {} rejected", q.id),
        },
        serde_json::json!({
            "request": RequestJson::of(&q),
            "moved": reviewed.r#move.as_ref().map(|m| m.revision),
        }),
    );
    Ok(())
}

fn side(version: u64) -> String {
    if version == 0 {
        "unset".into()
    } else {
        format!("v{version}")
    }
}

fn state_name(raw: i32) -> &'static str {
    match pb::RequestState::try_from(raw) {
        Ok(pb::RequestState::Pending) => "pending",
        Ok(pb::RequestState::Approved) => "approved",
        Ok(pb::RequestState::Rejected) => "rejected",
        Ok(pb::RequestState::Void) => "void",
        Ok(pb::RequestState::Expired) => "expired",
        _ => "unknown",
    }
}

fn state_text(q: &pb::PromotionRequest) -> String {
    let state = state_name(q.state);
    if q.closed_reason.is_empty() {
        state.to_string()
    } else {
        format!("{state}: {}", q.closed_reason)
    }
}

/// What `promote` says when the label is protected: the request it made.
pub(super) fn request_made_text(q: &pb::PromotionRequest) -> String {
    format!(
        "{} {} is protected: promotion request {} to v{} awaits {} approval(s) (until {}); \
         an approver runs `promptreg approve {} --reason ...`",
        q.name,
        q.label,
        q.id,
        q.version,
        q.approvals_required,
        time_text(&q.expires),
        q.id
    )
}

/// A promotion request as JSON.
#[derive(Serialize)]
pub(super) struct RequestJson<'a> {
    id: u64,
    name: &'a str,
    label: &'a str,
    version: u64,
    digest: &'a str,
    base_version: Option<u64>,
    requester: &'a str,
    reason: &'a str,
    state: &'static str,
    closed_by: &'a str,
    closed_reason: &'a str,
    approvals_required: u32,
    approvers: Vec<&'a str>,
    created: String,
    expires: String,
    move_revision: u64,
}

impl<'a> RequestJson<'a> {
    pub(super) fn of(q: &'a pb::PromotionRequest) -> RequestJson<'a> {
        RequestJson {
            id: q.id,
            name: &q.name,
            label: &q.label,
            version: q.version,
            digest: &q.digest,
            base_version: super::json::version_or_null(q.base_version),
            requester: &q.requester,
            reason: &q.reason,
            state: state_name(q.state),
            closed_by: &q.closed_by,
            closed_reason: &q.closed_reason,
            approvals_required: q.approvals_required,
            approvers: q.approvals.iter().map(|a| a.approver.as_str()).collect(),
            created: time_text(&q.created),
            expires: time_text(&q.expires),
            move_revision: q.move_revision,
        }
    }
}
