//! Release policy from the command line: `attest`, `checks`, `attesters`,
//! `policy`, `freeze`, `unfreeze`, `freezes`, `requests`, `approve`,
//! `reject`; and the text and JSON shapes of check results and promotion
//! requests that `versions`, `get` and `promote` print too.

use super::client::{connect, Failure};
use super::json::{emit, time_text};
use super::text::{ago, short_digest, Listing};
use super::{
    AttestArgs, AttestersAction, AttestersArgs, ChecksArgs, FreezeArgs, FreezesArgs, Outcome,
    PolicyAction, PolicyArgs, RequestsArgs, ReviewArgs, UnfreezeArgs,
};
use crate::grpc::pb;
use crate::grpc::timestamp::to_timestamp;
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

/// An Ed25519 public key from a file: PEM `PUBLIC KEY` (SPKI), 32 raw
/// bytes, or 64 hex digits.
fn public_key_of(path: &Path) -> Result<Vec<u8>, Failure> {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let raw = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read --public-key {}: {e}", path.display())))?;
    let bad = |why: &str| {
        Failure::usage(format!(
            "--public-key {}: {why}; give a PEM `PUBLIC KEY` of an Ed25519 key (openssl pkey -pubout), 32 raw bytes or 64 hex digits",
            path.display()
        ))
    };
    if raw.len() == 32 {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&raw);
    let trimmed = text.trim();
    if trimmed.len() == 64 {
        if let Ok(bytes) = hex::decode(trimmed) {
            return Ok(bytes);
        }
    }
    if !trimmed.starts_with("-----BEGIN PUBLIC KEY-----") {
        return Err(bad("not a key"));
    }
    let body: String = trimmed
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad("its PEM body is not base64"))?;
    match der.strip_prefix(&SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.to_vec()),
        _ => Err(bad("not an Ed25519 public key")),
    }
}

pub(super) async fn attesters(args: AttestersArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let one = |a: &pb::Attester| {
        let state = if a.removed.is_some() {
            format!("removed {}", ago(&a.removed))
        } else {
            "active".into()
        };
        (
            vec![
                a.name.clone(),
                hex::encode(&a.public_key),
                a.added_by.clone(),
                ago(&a.added),
                state,
            ],
            AttesterJson {
                name: a.name.clone(),
                public_key: hex::encode(&a.public_key),
                added_by: a.added_by.clone(),
                added: time_text(&a.added),
                removed: time_text(&a.removed),
            },
        )
    };
    let attesters = match args.action {
        AttestersAction::Add { name, public_key } => {
            let public_key = public_key_of(&public_key)?;
            let request = pb::AddAttesterRequest { name, public_key };
            vec![client.add_attester(request).await?.into_inner()]
        }
        AttestersAction::Remove { name, reason } => {
            let request = pb::RemoveAttesterRequest { name, reason };
            vec![client.remove_attester(request).await?.into_inner()]
        }
        AttestersAction::List => {
            client
                .list_attesters(pb::ListAttestersRequest {})
                .await?
                .into_inner()
                .attesters
        }
    };
    let mut listing = Listing::new(
        &args.client,
        &["NAME", "PUBLIC KEY", "ADDED BY", "ADDED", "STATE"],
        "no attesters",
    );
    for a in &attesters {
        let (cells, json) = one(a);
        listing.row(|| cells, json);
    }
    listing.finish();
    Ok(())
}

#[derive(Serialize)]
struct AttesterJson {
    name: String,
    public_key: String,
    added_by: String,
    added: String,
    removed: String,
}

pub(super) async fn policy(args: PolicyArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let (policies, freezes) = match args.action {
        PolicyAction::Set {
            prefix,
            label,
            approvals,
            require,
            allow_emergency_rollback,
            request_ttl,
            reason,
        } => {
            let request = pb::SetPolicyRequest {
                prefix,
                label,
                approvals,
                require,
                allow_emergency_rollback: Some(allow_emergency_rollback),
                request_ttl_seconds: request_ttl.map_or(0, |d| d.as_secs().max(1)),
                reason,
            };
            (vec![client.set_policy(request).await?.into_inner()], vec![])
        }
        PolicyAction::Get { name, label } => {
            let got = client
                .get_policy(pb::GetPolicyRequest {
                    name: name.clone(),
                    label: label.clone(),
                })
                .await?
                .into_inner();
            if got.policy.is_none() && got.freezes.is_empty() {
                emit(
                    &args.client,
                    || {
                        format!("no policy or freeze governs label {label} of {name}: any deployer moves it")
                    },
                    serde_json::json!({"name": name, "label": label, "policy": null, "freezes": []}),
                );
                return Ok(());
            }
            (got.policy.into_iter().collect(), got.freezes)
        }
        PolicyAction::List => (
            client
                .list_policies(pb::ListPoliciesRequest {})
                .await?
                .into_inner()
                .policies,
            vec![],
        ),
        PolicyAction::Delete {
            prefix,
            label,
            reason,
        } => {
            let request = pb::DeletePolicyRequest {
                prefix,
                label,
                reason,
            };
            let deleted = client.delete_policy(request).await?.into_inner();
            (deleted.policy.into_iter().collect(), vec![])
        }
    };
    let mut listing = Listing::new(
        &args.client,
        &[
            "PREFIX",
            "LABEL",
            "APPROVALS",
            "REQUIRE",
            "EMERGENCY ROLLBACK",
            "SET BY",
            "SET",
        ],
        "no policies",
    );
    for p in &policies {
        listing.row(
            || {
                vec![
                    prefix_text(&p.prefix),
                    p.label.clone(),
                    p.approvals.to_string(),
                    if p.require.is_empty() {
                        "-".into()
                    } else {
                        p.require.join(", ")
                    },
                    if p.allow_emergency_rollback {
                        "allowed".into()
                    } else {
                        "not allowed".into()
                    },
                    p.set_by.clone(),
                    ago(&p.set_at),
                ]
            },
            serde_json::json!({
                "prefix": p.prefix,
                "label": p.label,
                "approvals": p.approvals,
                "require": p.require,
                "allow_emergency_rollback": p.allow_emergency_rollback,
                "request_ttl_seconds": p.request_ttl_seconds,
                "set_by": p.set_by,
                "set_at": time_text(&p.set_at),
            }),
        );
    }
    listing.finish();
    if !freezes.is_empty() {
        print_freezes(&args.client, &freezes);
    }
    Ok(())
}

fn prefix_text(prefix: &str) -> String {
    if prefix.is_empty() {
        "(every prompt)".into()
    } else {
        prefix.to_string()
    }
}

/// `--until`: RFC 3339, or a duration from now.
fn until_of(raw: &str) -> Result<prost_types::Timestamp, Failure> {
    if let Ok(at) = crate::time::parse_rfc3339(raw) {
        return Ok(to_timestamp(at));
    }
    match crate::time::parse_duration(raw) {
        Ok(after) => {
            let micros = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
            Ok(to_timestamp(
                crate::time::now_micros().saturating_add(micros),
            ))
        }
        Err(_) => Err(Failure::usage(format!(
            "--until {raw:?} is neither an RFC 3339 time (2026-12-27T00:00:00Z) nor a duration (48h)"
        ))),
    }
}

pub(super) async fn freeze(args: FreezeArgs) -> Result<(), Failure> {
    let until = until_of(&args.until)?;
    let mut client = connect(&args.client).await?;
    let request = pb::FreezeLabelRequest {
        prefix: args.prefix.clone(),
        label: args.label.clone(),
        until: Some(until),
        reason: args.reason.clone(),
    };
    let freeze = client.freeze_label(request).await?.into_inner();
    print_freezes(&args.client, &[freeze]);
    Ok(())
}

pub(super) async fn unfreeze(args: UnfreezeArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::UnfreezeLabelRequest {
        prefix: args.prefix.clone(),
        label: args.label.clone(),
        reason: args.reason.clone(),
    };
    let ended = client.unfreeze_label(request).await?.into_inner().freeze;
    emit(
        &args.client,
        || match &ended {
            Some(_) => format!(
                "label {} under {} is no longer frozen",
                args.label,
                prefix_text(&args.prefix)
            ),
            None => format!(
                "no freeze of label {} under {} was in force: nothing changed",
                args.label,
                prefix_text(&args.prefix)
            ),
        },
        serde_json::json!({"prefix": args.prefix, "label": args.label, "ended": ended.is_some()}),
    );
    Ok(())
}

pub(super) async fn freezes(args: FreezesArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let freezes = client
        .list_freezes(pb::ListFreezesRequest {})
        .await?
        .into_inner()
        .freezes;
    print_freezes(&args.client, &freezes);
    Ok(())
}

fn print_freezes(options: &super::ClientOptions, freezes: &[pb::Freeze]) {
    let mut listing = Listing::new(
        options,
        &["PREFIX", "LABEL", "UNTIL", "SET BY", "REASON"],
        "no freezes in force",
    );
    for f in freezes {
        listing.row(
            || {
                vec![
                    prefix_text(&f.prefix),
                    f.label.clone(),
                    time_text(&f.until),
                    f.set_by.clone(),
                    f.reason.clone(),
                ]
            },
            serde_json::json!({
                "prefix": f.prefix,
                "label": f.label,
                "until": time_text(&f.until),
                "reason": f.reason,
                "set_by": f.set_by,
                "set_at": time_text(&f.set_at),
            }),
        );
    }
    listing.finish();
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
