//! `attesters`, `policy`, `freeze`, `unfreeze` and `freezes`: the
//! admin side of release policy (see `release.rs` for checks and requests).

use super::client::{connect, Failure};
use super::json::{emit, time_text};
use super::text::{ago, Listing};
use super::{
    AttestersAction, AttestersArgs, FreezeArgs, FreezesArgs, PolicyAction, PolicyArgs, UnfreezeArgs,
};
use crate::grpc::pb;
use crate::grpc::timestamp::to_timestamp;
use serde::Serialize;
use std::path::Path;

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
