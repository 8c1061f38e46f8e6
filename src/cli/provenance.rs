//! `promptreg keys`, `verify` and `audit`: provenance from the command line.
//! `verify` checks everything locally: the server's word is not taken for
//! the digest or the signature.

use super::client::{connect, Failure};
use super::json::{emit, parse_checkpoint, time_text, AuditEntryJson, CheckpointJson};
use super::text::{counted, counted_as, short_digest, short_digests_in, Listing};
use super::{
    exit, local_user, AuditAction, AuditArgs, KeysAction, KeysArgs, PruneArgs, VerifyArgs,
};
use crate::domain::{ContentDigest, PromptName};
use crate::grpc::pb;
use crate::provenance::{key_id_of, verify_signature, version_message};
use serde::Serialize;

pub(super) async fn keys(args: KeysArgs) -> Result<(), Failure> {
    match args.action {
        None => {
            let mut client = connect(&args.client).await?;
            let keys = client
                .list_signing_keys(pb::ListSigningKeysRequest {})
                .await?
                .into_inner()
                .keys;
            let mut listing = Listing::new(
                &args.client,
                &["KEY", "STATE", "CREATED", "PUBLIC KEY"],
                "no signing keys",
            );
            #[derive(Serialize)]
            struct Key<'a> {
                key_id: &'a str,
                active: bool,
                created_at: &'a str,
                public_key: &'a str,
            }
            for k in &keys {
                let public_key = hex::encode(&k.public_key);
                let created = time_text(&k.created_at);
                listing.row(
                    || {
                        let state = if k.active { "active" } else { "retired" };
                        vec![
                            k.key_id.clone(),
                            state.to_string(),
                            created.clone(),
                            public_key.clone(),
                        ]
                    },
                    Key {
                        key_id: &k.key_id,
                        active: k.active,
                        created_at: &created,
                        public_key: &public_key,
                    },
                );
            }
            listing.finish();
        }
        Some(KeysAction::GenDataKey { file }) => {
            #[derive(Serialize)]
            struct DataKey<'a> {
                key_id: &'a str,
                file: String,
            }
            let key_id = crate::store::DataKey::generate_file(&file)
                .map_err(|e| Failure::usage(e.to_string()))?;
            emit(
                &args.client,
                || {
                    format!("wrote data key {key_id} to {}; keep a copy somewhere safe: without it the store cannot be read", file.display())
                },
                DataKey {
                    key_id: &key_id,
                    file: file.display().to_string(),
                },
            );
        }
        Some(KeysAction::Rotate {
            reason,
            actor,
            client: options,
        }) => {
            let mut client = connect(&options).await?;
            let request = pb::RotateSigningKeyRequest {
                actor: actor.unwrap_or_else(local_user),
                reason,
            };
            let answer = client.rotate_signing_key(request).await?.into_inner();
            let key = answer.key.unwrap_or_default();
            let public_key = hex::encode(&key.public_key);
            #[derive(Serialize)]
            struct Rotated<'a> {
                key_id: &'a str,
                active: bool,
                public_key: &'a str,
                revision: u64,
            }
            emit(
                &options,
                || format!("new signing key {} is active ({public_key})", key.key_id),
                Rotated {
                    key_id: &key.key_id,
                    active: true,
                    public_key: &public_key,
                    revision: answer.revision,
                },
            );
        }
    }
    Ok(())
}

pub(super) async fn verify(args: VerifyArgs) -> Result<(), Failure> {
    use pb::get_version_request::Selector;
    let mut client = connect(&args.client).await?;
    let selector = match (args.version, &args.label) {
        (Some(v), _) => Some(Selector::Version(v)),
        (_, Some(l)) => Some(Selector::Label(l.clone())),
        _ => None,
    };
    let request = pb::GetVersionRequest {
        name: args.name.clone(),
        selector,
        ..Default::default()
    };
    let version = super::client::get_version(&mut client, request).await?;
    let keys = client
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await?
        .into_inner()
        .keys;
    let check = check_version(&version, &keys);
    let checks = verify_checks(&mut client, &version, &keys).await?;
    #[derive(Serialize)]
    struct Verified<'a> {
        name: &'a str,
        version: u64,
        digest: &'a str,
        revision: u64,
        digest_ok: bool,
        signature_ok: bool,
        key_id: &'a str,
        checks: usize,
        checks_ok: bool,
        check_problems: &'a [String],
        verified: bool,
    }
    emit(
        &args.client,
        || {
            let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
            let mut text = format!(
                "{} v{} {}\ndigest: {} ({})\nsignature: {} ({})\nchecks: {} ({})",
                version.name,
                version.version,
                short_digest(&version.digest),
                mark(check.digest_ok),
                check.digest_note,
                mark(check.signature_ok),
                check.signature_note,
                mark(checks.problems.is_empty()),
                counted(checks.count as u64, "check result")
            );
            for problem in &checks.problems {
                text.push_str(&format!("\n  {problem}"));
            }
            text
        },
        Verified {
            name: &version.name,
            version: version.version,
            digest: &version.digest,
            revision: version.revision,
            digest_ok: check.digest_ok,
            signature_ok: check.signature_ok,
            key_id: &version.signing_key_id,
            checks: checks.count,
            checks_ok: checks.problems.is_empty(),
            check_problems: &checks.problems,
            verified: check.digest_ok && check.signature_ok && checks.problems.is_empty(),
        },
    );
    if check.digest_ok && check.signature_ok && checks.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: exit::REFUSED,
            message: format!(
                "{} v{} did not verify: {}; {}; {}",
                version.name,
                version.version,
                check.digest_note,
                check.signature_note,
                counted(checks.problems.len() as u64, "check result problem")
            ),
        })
    }
}

/// The check results of a version, verified here: the server's signature
/// over the documented message, the digest, and an envelope again.
struct CheckResults {
    count: usize,
    problems: Vec<String>,
}

async fn verify_checks(
    client: &mut crate::grpc::access::Client,
    version: &pb::Version,
    keys: &[pb::SigningKey],
) -> Result<CheckResults, Failure> {
    let results = client
        .list_checks(pb::ListChecksRequest {
            name: version.name.clone(),
            version: version.version,
            history: true,
        })
        .await?
        .into_inner()
        .results;
    let attesters: Vec<(String, Vec<u8>)> = if results.iter().any(|r| !r.envelope.is_empty()) {
        client
            .list_attesters(pb::ListAttestersRequest {})
            .await?
            .into_inner()
            .attesters
            .into_iter()
            .map(|a| (a.name, a.public_key))
            .collect()
    } else {
        Vec::new()
    };
    let mut problems = Vec::new();
    for r in &results {
        let what = format!("{} (entry {})", r.check, r.sequence);
        let Some(result) = crate::grpc::check_result_from_pb(r) else {
            problems.push(format!("{what}: not well formed"));
            continue;
        };
        if r.digest != version.digest {
            problems.push(format!(
                "{what}: names digest {}, not the version's",
                r.digest
            ));
        }
        match keys.iter().find(|k| k.key_id == r.signing_key_id) {
            None => problems.push(format!("{what}: key {} is not published", r.signing_key_id)),
            Some(key) => {
                let message = crate::provenance::check_message(&result);
                if !verify_signature(&key.public_key, &message, &r.signature) {
                    problems.push(format!(
                        "{what}: the signature does not verify with key {}",
                        key.key_id
                    ));
                }
            }
        }
        if !r.envelope.is_empty() {
            if let Err(e) =
                crate::provenance::verify_envelope(&r.envelope, &result.digest, &attesters)
            {
                problems.push(format!("{what}: its envelope does not verify: {e}"));
            }
        }
    }
    Ok(CheckResults {
        count: results.len(),
        problems,
    })
}

pub(super) struct Check {
    pub(super) digest_ok: bool,
    pub(super) digest_note: String,
    pub(super) signature_ok: bool,
    pub(super) signature_note: String,
}

/// Recomputes the digest from the content and checks the signature against
/// the published key with the matching id.
pub(super) fn check_version(v: &pb::Version, keys: &[pb::SigningKey]) -> Check {
    let computed = crate::grpc::content_of(v).map(|content| content.digest());
    let (digest_ok, digest_note) = match computed {
        Some(d) if d.to_string() == v.digest => (true, "the content hashes to it".to_string()),
        Some(d) => (false, format!("the content hashes to {d}")),
        None => (false, "no content to hash".to_string()),
    };
    let signature_ok;
    let signature_note;
    match keys.iter().find(|k| k.key_id == v.signing_key_id) {
        _ if v.signature.is_empty() => {
            signature_ok = false;
            signature_note = "unsigned".to_string();
        }
        None => {
            signature_ok = false;
            signature_note = format!("key {} is not published by the server", v.signing_key_id);
        }
        Some(key) if key_id_of(&key.public_key) != key.key_id => {
            signature_ok = false;
            signature_note = format!("published key {} does not match its id", key.key_id);
        }
        Some(key) => {
            let name = PromptName::parse("name", &v.name, usize::MAX);
            let digest = ContentDigest::parse("digest", &v.digest);
            let created_at = v
                .created_at
                .as_ref()
                .map_or(0, crate::grpc::timestamp::from_timestamp);
            signature_ok = match (name, digest) {
                (Ok(name), Ok(digest)) => verify_signature(
                    &key.public_key,
                    &version_message(&name, v.version, &digest, created_at),
                    &v.signature,
                ),
                _ => false,
            };
            signature_note = if signature_ok {
                format!("valid Ed25519 signature by key {}", key.key_id)
            } else {
                format!("the signature does not verify with key {}", key.key_id)
            };
        }
    }
    Check {
        digest_ok,
        digest_note,
        signature_ok,
        signature_note,
    }
}

pub(super) async fn audit(args: AuditArgs) -> Result<(), Failure> {
    match args.action {
        None => list(&args).await,
        Some(AuditAction::Checkpoint { client: options }) => {
            let mut client = connect(&options).await?;
            let c = client
                .create_checkpoint(pb::CreateCheckpointRequest {})
                .await?
                .into_inner();
            emit(
                &options,
                || {
                    format!(
                        "checkpoint: entry {} head {} at {} signed by {}\nsave it with --output json and check it later with `promptreg audit verify --checkpoint FILE`",
                        c.sequence,
                        c.head_hash,
                        time_text(&c.time),
                        c.key_id
                    )
                },
                CheckpointJson::from(&c),
            );
            Ok(())
        }
        Some(AuditAction::Verify {
            checkpoint,
            client: options,
        }) => {
            let checkpoint = match checkpoint {
                None => None,
                Some(path) => {
                    let raw = std::fs::read_to_string(&path).map_err(|e| {
                        Failure::usage(format!("--checkpoint {}: {e}", path.display()))
                    })?;
                    Some(parse_checkpoint(&raw).map_err(|e| {
                        Failure::usage(format!("--checkpoint {}: {e}", path.display()))
                    })?)
                }
            };
            let mut client = connect(&options).await?;
            let report = client
                .verify_audit(pb::VerifyAuditRequest { checkpoint })
                .await?
                .into_inner();
            #[derive(Serialize)]
            struct Report<'a> {
                intact: bool,
                entries: u64,
                versions: u64,
                first_broken_sequence: u64,
                problems: &'a [String],
                head_hash: &'a str,
            }
            emit(
                &options,
                || {
                    let mut text = format!(
                        "{}: {}, {} checked; head {}",
                        if report.intact { "intact" } else { "BROKEN" },
                        counted_as(report.entries, "ledger entry", "ledger entries"),
                        counted(report.versions, "version"),
                        report.head_hash
                    );
                    for problem in &report.problems {
                        text.push_str(&format!("\n- {problem}"));
                    }
                    text
                },
                Report {
                    intact: report.intact,
                    entries: report.entries,
                    versions: report.versions,
                    first_broken_sequence: report.first_broken_sequence,
                    problems: &report.problems,
                    head_hash: &report.head_hash,
                },
            );
            if report.intact {
                Ok(())
            } else {
                Err(Failure {
                    code: exit::REFUSED,
                    message: format!(
                        "the audit found {}",
                        counted(report.problems.len() as u64, "problem")
                    ),
                })
            }
        }
    }
}

async fn list(args: &AuditArgs) -> Result<(), Failure> {
    let time =
        |flag: &str, raw: &Option<String>| -> Result<Option<prost_types::Timestamp>, Failure> {
            raw.as_deref()
                .map(|raw| {
                    super::filters::parse_when(raw, crate::time::now_micros())
                        .map(crate::grpc::timestamp::to_timestamp)
                        .map_err(|e| Failure::usage(format!("{flag}: {e}")))
                })
                .transpose()
        };
    let since = time("--since", &args.since)?;
    let until = time("--until", &args.until)?;
    let mut client = connect(&args.client).await?;
    let mut listing = Listing::new(
        &args.client,
        &[
            "SEQ", "REVISION", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL", "TRACE", "REASON",
        ],
        "no audit entries",
    );
    let mut token = String::new();
    loop {
        let request = pb::ListAuditRequest {
            name: args.prompt.clone().unwrap_or_default(),
            actor: args.actor.clone().unwrap_or_default(),
            action: args.action_name.clone().unwrap_or_default(),
            since,
            until,
            page_size: 1000,
            page_token: token,
        };
        let page = client.list_audit(request).await?.into_inner();
        for e in &page.entries {
            let time = time_text(&e.time);
            listing.row(
                || {
                    vec![
                        format!("#{}", e.sequence),
                        e.revision.to_string(),
                        time.clone(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        short_digests_in(&e.detail),
                        e.trace_id.clone(),
                        e.reason.clone(),
                    ]
                },
                AuditEntryJson::from(e),
            );
        }
        if page.next_page_token.is_empty() {
            listing.finish();
            return Ok(());
        }
        token = page.next_page_token;
    }
}

pub(super) async fn prune(args: PruneArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::PruneVersionsRequest {
        name: args.name.clone(),
        keep_last: args.keep_last,
        older_than_seconds: args.older_than.map_or(0, |d| d.as_secs().max(1)),
        dry_run: args.dry_run,
        actor: args.actor.clone().unwrap_or_else(local_user),
        reason: args.reason.clone().unwrap_or_default(),
    };
    let answer = client.prune_versions(request).await?.into_inner();
    #[derive(Serialize)]
    struct Pruned<'a> {
        name: &'a str,
        dry_run: bool,
        pruned: &'a [u64],
        kept_labelled: &'a [u64],
    }
    let list = |v: &[u64]| {
        v.iter()
            .map(|n| format!("v{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    emit(
        &args.client,
        || {
            let verb = if args.dry_run {
                "would prune"
            } else {
                "pruned"
            };
            let mut text = match answer.pruned.as_slice() {
                [] => format!("{}: nothing to prune", args.name),
                pruned => format!("{} {verb} {}", args.name, list(pruned)),
            };
            if !answer.kept_labelled.is_empty() {
                text.push_str(&format!(
                    "\nkept (a label pointed to them): {}",
                    list(&answer.kept_labelled)
                ));
            }
            text
        },
        Pruned {
            name: &args.name,
            dry_run: args.dry_run,
            pruned: &answer.pruned,
            kept_labelled: &answer.kept_labelled,
        },
    );
    Ok(())
}
