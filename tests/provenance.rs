//! Provenance: signed versions, key rotation, the audit ledger, tampering
//! found by VerifyAudit, checkpoints, and the CLI's local `verify`.

mod support;

use promptreg::grpc::pb;
use promptreg::registry::provenance::KeySource;
use std::process::Command;
use support::*;
use tonic::Code;

async fn keys(client: &mut Client) -> Vec<pb::SigningKey> {
    client
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
}

async fn get(client: &mut Client, name: &str, version: u64) -> pb::Version {
    client
        .get_version(pb::GetVersionRequest {
            name: name.into(),
            selector: Some(pb::get_version_request::Selector::Version(version)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
}

async fn audit(client: &mut Client, request: pb::ListAuditRequest) -> Vec<pb::AuditEntry> {
    client
        .list_audit(request)
        .await
        .unwrap()
        .into_inner()
        .entries
}

async fn verify_audit(
    client: &mut Client,
    checkpoint: Option<pb::Checkpoint>,
) -> pb::VerifyAuditResponse {
    client
        .verify_audit(pb::VerifyAuditRequest { checkpoint })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn versions_are_signed_and_keys_rotate() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await;
    let v1 = get(&mut client, "p", 1).await;
    let first_keys = keys(&mut client).await;
    assert_eq!(first_keys.len(), 1);
    assert!(first_keys[0].active);
    assert_eq!(v1.signing_key_id, first_keys[0].key_id);
    assert_eq!(v1.signature.len(), 64);

    // The key file is private to the server.
    let key_file = server
        .data_dir()
        .join("keys")
        .join(format!("{}.pk8", first_keys[0].key_id));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // `promptreg verify` checks the digest and signature locally.
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&url, &["verify", "p", "--version", "1", "--output", "json"])
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["digest_ok"].as_bool(), json["signature_ok"].as_bool()),
        (Some(true), Some(true))
    );

    // Rotate: new versions use the new key; the old key stays published, so
    // old versions still verify.
    let rotated = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: "sec".into(),
            reason: "quarterly rotation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_key = rotated.key.unwrap();
    assert_ne!(new_key.key_id, first_keys[0].key_id);
    publish(&mut client, "p", "two").await;
    assert_eq!(
        get(&mut client, "p", 2).await.signing_key_id,
        new_key.key_id
    );
    let all_keys = keys(&mut client).await;
    assert_eq!(all_keys.len(), 2);
    let active: Vec<&str> = all_keys
        .iter()
        .filter(|k| k.active)
        .map(|k| k.key_id.as_str())
        .collect();
    assert_eq!(active, [new_key.key_id.as_str()]);
    for version in ["1", "2"] {
        let url = server.url.clone();
        let out = tokio::task::spawn_blocking(move || {
            run_cli(&url, &["verify", "p", "--version", version])
        })
        .await
        .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "v{version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_status(
        client
            .rotate_signing_key(pb::RotateSigningKeyRequest {
                actor: "sec".into(),
                reason: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "reason: is required",
    );

    // The rotation survives a restart: the new key is still the active one.
    drop(client);
    let server = server.restart().await;
    let mut client = server.client().await;
    let after = keys(&mut client).await;
    assert_eq!(
        after.iter().find(|k| k.active).unwrap().key_id,
        new_key.key_id
    );
    publish(&mut client, "p", "three").await;
    assert_eq!(
        get(&mut client, "p", 3).await.signing_key_id,
        new_key.key_id
    );
    assert!(verify_audit(&mut client, None).await.intact);
}

/// A rotation is not a revision of its own: its `revision` is the head at
/// the rotation, the one its audit entry records, and the first version
/// signed with the new key has the next revision.
#[tokio::test]
async fn a_rotation_reports_the_head_revision_its_audit_entry_records() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await;
    let moved = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    let rotated = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: "sec".into(),
            reason: "rotation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.revision, moved.revision, "the head at the rotation");
    let entries = audit(
        &mut client,
        pb::ListAuditRequest {
            action: "rotate_key".into(),
            ..Default::default()
        },
    )
    .await;
    // The first is the key generated on first start.
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1].revision, rotated.revision);
    let key_id = rotated.key.unwrap().key_id;
    assert_eq!(entries[1].target, format!("key:{key_id}"));
    publish(&mut client, "p", "two").await;
    let two = get(&mut client, "p", 2).await;
    assert_eq!(two.revision, rotated.revision + 1);
    assert_eq!(two.signing_key_id, key_id);
    assert_ne!(get(&mut client, "p", 1).await.signing_key_id, key_id);
}

#[tokio::test]
async fn the_ledger_records_every_mutation_in_a_chain() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = publish_text("p", "one", &[]);
    request.description = "first cut".into();
    client.publish_version(request).await.unwrap();
    publish(&mut client, "p", "two").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();
    client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap();
    client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap();
    client
        .remove_label(pb::RemoveLabelRequest {
            name: "p".into(),
            label: "production".into(),
            actor: "sre".into(),
            reason: "pause".into(),
        })
        .await
        .unwrap();
    publish(&mut client, "other", "x").await;

    let entries = audit(&mut client, pb::ListAuditRequest::default()).await;
    let actions: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        actions[0].0, "rotate_key",
        "the first key is recorded at first start"
    );
    // The admin token made on first start is the second entry.
    assert_eq!(
        actions[1],
        ("token_create", "token:admin", "admin on every prompt")
    );
    let entries = &entries[1..];
    let actions = &actions[1..];
    assert_eq!(actions[1], ("publish", "p@v1", actions[1].2));
    assert!(actions[1].2.starts_with("sha256:"));
    assert_eq!(actions[2], ("promote", "p:latest", "- -> v1"));
    assert_eq!(entries[1].reason, "first cut");
    assert_eq!(
        entries[1].actor, "admin",
        "the principal, not the claimed author"
    );
    let moves: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.target == "p:production")
        .map(|e| (e.action.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        moves,
        [
            ("promote", "- -> v1"),
            ("promote", "v1 -> v2"),
            ("rollback", "v2 -> v1"),
            ("remove", "v1 -> -")
        ]
    );
    for pair in entries.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
        assert_eq!(pair[1].previous_hash, pair[0].hash);
        assert!(pair[1].revision >= pair[0].revision);
    }

    // Filters.
    let only_p = audit(
        &mut client,
        pb::ListAuditRequest {
            name: "p".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(only_p
        .iter()
        .all(|e| e.target.starts_with("p@") || e.target.starts_with("p:")));
    assert_eq!(
        only_p.len(),
        entries.len() - 3,
        "everything but the key and `other`'s publish + latest"
    );
    let by_sre = audit(
        &mut client,
        pb::ListAuditRequest {
            actor: "admin".into(),
            action: "rollback".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_sre.len(), 1);
    let since = entries[5].time;
    let recent = audit(
        &mut client,
        pb::ListAuditRequest {
            since,
            ..Default::default()
        },
    )
    .await;
    assert!(recent.len() <= entries.len() - 5 + 1 && recent.iter().all(|e| e.sequence >= 5));
    let paged = client
        .list_audit(pb::ListAuditRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.entries.len(), 3);
    let rest = audit(
        &mut client,
        pb::ListAuditRequest {
            page_token: paged.next_page_token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rest[0].sequence, 4);

    // A request carrying W3C trace context leaves its trace id in the ledger.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut traced = tonic::Request::new(set_label("p", "staging", 1, None));
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.set_label(traced).await.unwrap();
    let staged = audit(
        &mut client,
        pb::ListAuditRequest {
            name: "p".into(),
            ..Default::default()
        },
    )
    .await;
    let last = staged.last().unwrap();
    assert_eq!(
        (last.target.as_str(), last.trace_id.as_str()),
        ("p:staging", trace_id)
    );
    assert!(
        entries.iter().all(|e| e.trace_id.is_empty()),
        "no trace context, no trace id"
    );
    let entries = audit(&mut client, pb::ListAuditRequest::default()).await;

    let report = verify_audit(&mut client, None).await;
    assert!(report.intact, "{:?}", report.problems);
    assert_eq!(report.entries, entries.len() as u64);
    assert_eq!(report.versions, 3);
    assert_eq!(report.head_hash, entries.last().unwrap().hash);
}

/// Rewrites one stored record in place, the way an attacker with disk
/// access would: `edit` gets the JSON text of the record.
fn tamper(data_dir: &std::path::Path, key: &[u8], edit: impl FnOnce(String) -> String) {
    let db = open_store_directly(data_dir);
    let raw = db.get(key).unwrap().expect("record exists");
    assert_eq!(raw[0], 1, "JSON record format");
    let json = String::from_utf8(raw[1..].to_vec()).unwrap();
    let edited = edit(json.clone());
    assert_ne!(edited, json, "the edit changed something");
    let mut value = vec![1u8];
    value.extend_from_slice(edited.as_bytes());
    db.insert(key, value).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn verify_audit_names_exactly_what_was_altered() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "the original template").await;
    publish(&mut client, "q", "another").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();
    let checkpoint = client
        .create_checkpoint(pb::CreateCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        verify_audit(&mut client, Some(checkpoint.clone()))
            .await
            .intact
    );
    let entries = audit(&mut client, pb::ListAuditRequest::default()).await;
    let target = entries
        .iter()
        .find(|e| e.target == "p:production")
        .unwrap()
        .sequence;
    drop(client);

    let mut server = server;
    server.stop().await;
    // A ledger entry: the reason of the production promote.
    let mut key = b"a/".to_vec();
    key.extend_from_slice(&target.to_be_bytes());
    tamper(&server.data_dir, &key, |json| {
        json.replace("promote v1", "nothing to see")
    });
    // A stored template.
    let mut key = b"v/p\0".to_vec();
    key.extend_from_slice(&1u64.to_be_bytes());
    tamper(&server.data_dir, &key, |json| {
        json.replace("the original template", "an injected template")
    });

    let server = server.restart().await;
    let mut client = server.client().await;
    let report = verify_audit(&mut client, None).await;
    assert!(!report.intact);
    assert_eq!(report.first_broken_sequence, target);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with(&format!("ledger entry {target} was altered")),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems[1].starts_with("p v1: stored content was altered"),
        "{:?}",
        report.problems
    );

    // The checkpoint taken before proves the rewrite.
    let with_checkpoint = verify_audit(&mut client, Some(checkpoint.clone())).await;
    assert!(
        with_checkpoint
            .problems
            .iter()
            .all(|p| !p.contains("the ledger was rewritten")),
        "the head entry itself is intact"
    );
    let mut forged = checkpoint.clone();
    forged.head_hash = "0".repeat(64);
    let report = verify_audit(&mut client, Some(forged)).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("checkpoint at entry") && p.contains("signature does not verify")),
        "{:?}",
        report.problems
    );

    // The CLI: audit verify and verify both fail, exit 1.
    let url = server.url.clone();
    let (audit_out, verify_out) = tokio::task::spawn_blocking(move || {
        (
            run_cli(&url, &["audit", "verify"]),
            run_cli(&url, &["verify", "p", "--version", "1"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(audit_out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&audit_out.stdout)
        .contains(&format!("ledger entry {target} was altered")));
    assert_eq!(verify_out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify_out.stderr).contains("the content hashes to"),
        "{}",
        String::from_utf8_lossy(&verify_out.stderr)
    );
}

/// Rewrites the ledger from entry `from` on, re-hashing and re-linking every
/// later entry and the head: a consistent forgery that only a checkpoint kept
/// elsewhere can expose.
fn forge_ledger(data_dir: &std::path::Path, from: u64, edit: impl Fn(&mut serde_json::Value)) {
    use promptreg::provenance::AuditEntry;
    let db = open_store_directly(data_dir);
    let text = |v: &serde_json::Value, f: &str| v[f].as_str().unwrap().to_string();
    let mut previous_hash: Option<String> = None;
    let mut last = (0u64, String::new());
    for item in db.scan_prefix(b"a/") {
        let (key, raw) = item.unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&raw[1..]).unwrap();
        let sequence = value["sequence"].as_u64().unwrap();
        if sequence < from {
            continue;
        }
        if sequence == from {
            edit(&mut value);
        }
        if let Some(previous) = &previous_hash {
            value["previous_hash"] = previous.clone().into();
        }
        let entry = AuditEntry {
            sequence,
            revision: value["revision"].as_u64().unwrap(),
            time: value["time"].as_i64().unwrap(),
            actor: text(&value, "actor"),
            action: text(&value, "action"),
            target: text(&value, "target"),
            reason: text(&value, "reason"),
            trace_id: text(&value, "trace_id"),
            detail: text(&value, "detail"),
            previous_hash: text(&value, "previous_hash"),
            hash: String::new(),
        };
        let hash = entry.compute_hash();
        value["hash"] = hash.clone().into();
        previous_hash = Some(hash.clone());
        last = (sequence, hash);
        let mut out = vec![1u8];
        out.extend_from_slice(value.to_string().as_bytes());
        db.insert(key, out).unwrap();
    }
    let head = serde_json::json!({"sequence": last.0, "hash": last.1});
    let mut out = vec![1u8];
    out.extend_from_slice(head.to_string().as_bytes());
    db.insert(b"meta/ledger", out).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn a_checkpoint_exposes_a_consistently_rewritten_ledger() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    let checkpoint = client
        .create_checkpoint(pb::CreateCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    publish(&mut client, "p", "b").await;
    drop(client);
    let mut server = server;
    server.stop().await;
    forge_ledger(&server.data_dir, checkpoint.sequence, |entry| {
        entry["actor"] = "mallory".into()
    });
    // The durable-head file records the ledger head's hash, so start-up
    // would refuse the forged chain; a forger with write access to the data
    // directory removes that file too. Only the checkpoint, kept elsewhere,
    // is beyond their reach.
    std::fs::remove_file(server.data_dir.join("DURABLE_HEAD")).unwrap();

    let server = server.restart().await;
    let mut client = server.client().await;
    // Without the checkpoint the forged chain is self-consistent...
    let report = verify_audit(&mut client, None).await;
    assert!(report.intact, "{:?}", report.problems);
    // ...with it, the rewrite is exposed.
    let report = verify_audit(&mut client, Some(checkpoint.clone())).await;
    assert!(!report.intact);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with(&format!(
            "the ledger was rewritten: entry {}",
            checkpoint.sequence
        )),
        "{:?}",
        report.problems
    );

    // The same through the CLI, with the checkpoint saved as JSON.
    let url = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.json");
    let saved = serde_json::json!({
        "sequence": checkpoint.sequence,
        "head_hash": checkpoint.head_hash,
        "time": promptreg::time::format_micros(promptreg::grpc::timestamp::from_timestamp(checkpoint.time.as_ref().unwrap())),
        "key_id": checkpoint.key_id,
        "signature": hex::encode(&checkpoint.signature),
    });
    std::fs::write(&file, saved.to_string()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(
            &url,
            &["audit", "verify", "--checkpoint", file.to_str().unwrap()],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the ledger was rewritten"));
}

#[tokio::test]
async fn a_configured_key_file_is_used_and_not_rotated_by_the_server() {
    let temp = tempfile::tempdir().unwrap();
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key_file = temp.path().join("signing.pk8");
    std::fs::write(&key_file, pkcs8.as_ref()).unwrap();
    #[cfg(unix)]
    set_mode(&key_file, 0o600);
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    use ring::signature::KeyPair as _;
    let expected_id = promptreg::provenance::key_id_of(pair.public_key().as_ref());

    let file = key_file.clone();
    let server =
        TestServer::start_with(move |config| config.signing_key = KeySource::File(file)).await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    assert_eq!(get(&mut client, "p", 1).await.signing_key_id, expected_id);
    assert_status(
        client
            .rotate_signing_key(pb::RotateSigningKeyRequest {
                actor: "sec".into(),
                reason: "try".into(),
            })
            .await,
        Code::FailedPrecondition,
        "--signing-key",
    );

    // A missing or broken key file stops the server from starting, naming it.
    let bad = temp.path().join("broken.pk8");
    std::fs::write(&bad, b"nonsense").unwrap();
    #[cfg(unix)]
    set_mode(&bad, 0o600);
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp.path().join("other"))
        .arg("--signing-key")
        .arg(&bad)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.pk8 is not an Ed25519 PKCS#8 key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_lost_data_dir_key_is_a_clear_start_up_error() {
    let server = TestServer::start().await;
    let dir = server.data_dir().to_path_buf();
    let mut server = server;
    server.stop().await;
    std::fs::remove_dir_all(dir.join("keys")).unwrap();
    let error = promptreg::registry::Registry::open(promptreg::registry::RegistryConfig::new(&dir))
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("the active signing key")
            && error.to_string().contains("is missing"),
        "{error}"
    );
}

fn prune(name: &str, keep_last: u32, dry_run: bool) -> pb::PruneVersionsRequest {
    pb::PruneVersionsRequest {
        name: name.into(),
        keep_last,
        older_than_seconds: 0,
        dry_run,
        actor: "ops".into(),
        reason: "retention".into(),
    }
}

#[tokio::test]
async fn pruning_keeps_labelled_versions_and_tombstones_the_rest() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 1..=6 {
        publish(&mut client, "p", &format!("text {i}")).await;
    }
    client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap();
    client
        .set_label(set_label("p", "staging", 4, None))
        .await
        .unwrap();
    client
        .set_label(set_label("p", "staging", 5, None))
        .await
        .unwrap();
    let v1_before = get(&mut client, "p", 1).await;

    let dry = client
        .prune_versions(prune("p", 2, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dry.pruned.as_slice(), dry.kept_labelled.as_slice()),
        (&[1, 3][..], &[2, 4][..])
    );
    assert!(
        !get(&mut client, "p", 1).await.pruned,
        "a dry run changes nothing"
    );

    let done = client
        .prune_versions(prune("p", 2, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.pruned, [1, 3]);
    let v1 = get(&mut client, "p", 1).await;
    assert!(v1.pruned && v1.template.is_none());
    assert_eq!(
        (v1.digest.as_str(), v1.signature.as_slice()),
        (v1_before.digest.as_str(), v1_before.signature.as_slice())
    );
    assert!(!get(&mut client, "p", 2).await.pruned);

    // History and resolve-at still answer, with the tombstone.
    let at = client
        .resolve_at(pb::ResolveAtRequest {
            name: "p".into(),
            label: "latest".into(),
            at: Some(pb::resolve_at_request::At::Revision(1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(at.version.unwrap().pruned);
    let entries = audit(
        &mut client,
        pb::ListAuditRequest {
            action: "prune".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].detail.as_str(), entries[0].actor.as_str()),
        ("v1, v3", "admin")
    );
    let report = verify_audit(&mut client, None).await;
    assert!(report.intact, "{:?}", report.problems);

    // Nothing left to prune; republishing pruned content makes a new version.
    assert!(client
        .prune_versions(prune("p", 2, false))
        .await
        .unwrap()
        .into_inner()
        .pruned
        .is_empty());
    let again = publish(&mut client, "p", "text 1").await;
    assert_eq!((again.version, again.created), (7, true));

    assert_status(
        client.prune_versions(prune("p", 0, true)).await,
        Code::InvalidArgument,
        "keep_last: must be at least 1",
    );
    let mut no_reason = prune("p", 1, false);
    no_reason.reason.clear();
    assert_status(
        client.prune_versions(no_reason).await,
        Code::InvalidArgument,
        "reason: is required",
    );

    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(
            &url,
            &[
                "prune",
                "p",
                "--keep-last",
                "1",
                "--dry-run",
                "--output",
                "json",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pruned"], serde_json::json!([6]));
}

/// Publishes `p` v1..v3 ("text 1".."text 3") and prunes all but the newest.
async fn three_versions_pruned_to_one(client: &mut Client) {
    for i in 1..=3 {
        publish(client, "p", &format!("text {i}")).await;
    }
    let done = client
        .prune_versions(prune("p", 1, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.pruned, [1, 2]);
}

#[tokio::test]
async fn audit_filtered_by_prompt_returns_every_entry_about_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    three_versions_pruned_to_one(&mut client).await;
    // A prompt named like the other target forms collects none of them.
    publish(&mut client, "key", "k").await;
    client
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: "sec".into(),
            reason: "yearly".into(),
        })
        .await
        .unwrap();

    let about_p = audit(
        &mut client,
        pb::ListAuditRequest {
            name: "p".into(),
            ..Default::default()
        },
    )
    .await;
    let seen: Vec<(&str, &str)> = about_p
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("publish", "p@v1"),
            ("promote", "p:latest"),
            ("publish", "p@v2"),
            ("promote", "p:latest"),
            ("publish", "p@v3"),
            ("promote", "p:latest"),
            ("prune", "p"),
        ]
    );
    let about_key = audit(
        &mut client,
        pb::ListAuditRequest {
            name: "key".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        about_key
            .iter()
            .all(|e| e.target.starts_with("key@") || e.target.starts_with("key:latest")),
        "{about_key:?}"
    );
    assert_eq!(about_key.len(), 2, "{about_key:?}");
}

#[tokio::test]
async fn find_by_digest_keeps_a_pruned_version_published_again() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let c1 = publish(&mut client, "p", "content one").await;
    publish(&mut client, "p", "content two").await;
    client.prune_versions(prune("p", 1, false)).await.unwrap();
    assert!(get(&mut client, "p", 1).await.pruned);
    let again = publish(&mut client, "p", "content one").await;
    assert_eq!((again.version, again.created), (3, true));
    assert_eq!(again.digest, c1.digest);

    let find = |mut client: Client| {
        let digest = c1.digest.clone();
        async move {
            client
                .find_by_digest(pb::FindByDigestRequest { digest })
                .await
                .unwrap()
                .into_inner()
                .matches
        }
    };
    let check = |matches: Vec<pb::DigestMatch>| {
        let found: Vec<(u64, bool)> = matches
            .iter()
            .map(|m| {
                let v = m.version.as_ref().unwrap();
                (v.version, v.pruned)
            })
            .collect();
        assert_eq!(found, [(1, true), (3, false)], "{matches:?}");
        // v1 was `latest` from its publish until v2's; v3 still is.
        let periods = |i: usize| -> Vec<(String, u64, u64)> {
            matches[i]
                .labels
                .iter()
                .map(|p| (p.label.clone(), p.from_revision, p.until_revision))
                .collect()
        };
        assert_eq!(periods(0), [("latest".to_string(), 1, 2)]);
        assert_eq!(periods(1), [("latest".to_string(), 3, 0)]);
    };
    check(find(client.clone()).await);
    // The index is on disk, not rebuilt in memory.
    let server = server.restart().await;
    check(find(server.client().await).await);
}

#[tokio::test]
async fn diff_against_a_pruned_version_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    three_versions_pruned_to_one(&mut client).await;
    let diff = |from, to| pb::DiffVersionsRequest {
        name: "p".into(),
        from_version: from,
        to_version: to,
    };
    assert_status(
        client.diff_versions(diff(1, 3)).await,
        Code::FailedPrecondition,
        "p v1 was pruned",
    );
    assert_status(
        client.diff_versions(diff(3, 2)).await,
        Code::FailedPrecondition,
        "p v2 was pruned",
    );
    assert_status(
        client.diff_versions(diff(1, 1)).await,
        Code::FailedPrecondition,
        "p v1 was pruned",
    );
    publish(&mut client, "p", "text 4").await;
    let fine = client.diff_versions(diff(3, 4)).await.unwrap().into_inner();
    assert!(fine.template_diff.contains("+text 4"), "{fine:?}");
}

#[tokio::test]
async fn a_label_cannot_move_to_a_pruned_version() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    three_versions_pruned_to_one(&mut client).await;
    assert_status(
        client
            .set_label(set_label("p", "production", 2, None))
            .await,
        Code::FailedPrecondition,
        "to version 2: p v2 was pruned",
    );
    client
        .set_label(set_label("p", "production", 3, None))
        .await
        .unwrap();
    assert_status(
        client.rollback(rollback("p", "production", Some(1))).await,
        Code::FailedPrecondition,
        "roll back label production of p to version 1: p v1 was pruned",
    );
    // Nothing moved.
    assert_eq!(
        resolve(&mut client, "p", "production")
            .await
            .unwrap()
            .version,
        3
    );
    let history = client
        .label_history(pb::LabelHistoryRequest {
            name: "p".into(),
            label: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.moves.len(), 1, "{history:?}");
}

#[tokio::test]
async fn find_by_digest_finds_every_version_in_a_store_with_the_old_index() {
    // Stores written before the index kept every version hold one
    // `x/{digest}{name}` key per prompt, pointing at the newest version
    // published with the digest.
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let c1 = publish(&mut client, "p", "content one").await;
    publish(&mut client, "p", "content two").await;
    client.prune_versions(prune("p", 1, false)).await.unwrap();
    publish(&mut client, "p", "content one").await;
    let mut server = server;
    server.stop().await;
    {
        let db = open_store_directly(server.data_dir());
        let digest = hex::decode(c1.digest.trim_start_matches("sha256:")).unwrap();
        let prefix = [b"x/".as_slice(), &digest].concat();
        for key in db.scan_prefix(&prefix).keys() {
            db.remove(key.unwrap()).unwrap();
        }
        db.insert([prefix.as_slice(), b"p"].concat(), &3u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let server = server.restart().await;
    let matches = server
        .client()
        .await
        .find_by_digest(pb::FindByDigestRequest {
            digest: c1.digest.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .matches;
    let found: Vec<u64> = matches
        .iter()
        .map(|m| m.version.as_ref().unwrap().version)
        .collect();
    assert_eq!(found, [1, 3]);
}

/// The mode bits of a file or directory.
#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The server's refusal to start, with its stderr.
fn refused_start(data_dir: &std::path::Path, extra: &[&str]) -> String {
    match ServerProcess::start_at(data_dir, "127.0.0.1:0", extra) {
        Ok(server) => {
            server.kill();
            panic!("the server started")
        }
        Err(log) => log,
    }
}

#[tokio::test]
async fn a_pem_signing_key_as_openssl_writes_it_is_used() {
    let temp = tempfile::tempdir().unwrap();
    let pem = temp.path().join("signing.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&pem)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        // No openssl here: a key it wrote, kept as text.
        std::fs::write(
            &pem,
            "-----BEGIN PRIVATE KEY-----\n\
             MC4CAQAwBQYDK2VwBCIEIFi+h2Tvz69rUG8oTzMqqxnTgtoHA3Qn6Fz3w911XdlC\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap();
    }
    #[cfg(unix)]
    set_mode(&pem, 0o600);
    let expected = promptreg::provenance::SigningKey::load(&pem)
        .unwrap()
        .key_id;
    let data = temp.path().join("data");
    let server = ServerProcess::start(&data, &["--signing-key", pem.to_str().unwrap()]);
    let mut client = connect(&server.url).await;
    publish(&mut client, "p", "a").await;
    let version = get(&mut client, "p", 1).await;
    assert_eq!(version.signing_key_id, expected);
    assert!(keys(&mut client).await.iter().any(|k| k.key_id == expected));
    server.terminate();
}

#[cfg(unix)]
#[tokio::test]
async fn key_files_and_backups_are_private_whatever_the_umask() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = ServerProcess::start_with_umask(&data, "000", &[])
        .unwrap_or_else(|log| panic!("server did not start:\n{log}"));
    let keys_dir = data.join("keys");
    assert_eq!(mode_of(&keys_dir), 0o700, "DATA_DIR/keys/");
    let key_files: Vec<_> = std::fs::read_dir(&keys_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(key_files.len(), 1);
    assert_eq!(mode_of(&key_files[0]), 0o600);

    let backup = temp.path().join("b.prb");
    let url = server.url.clone();
    let file = backup.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(binary())
            .args(["backup"])
            .arg(&file)
            .env("PROMPTREG_SERVER", &url)
            .env("PROMPTREG_TOKEN", token_for(&url).unwrap_or_default())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode_of(&backup), 0o600, "the backup file");
    server.terminate();
}

#[cfg(unix)]
#[tokio::test]
async fn a_signing_key_others_can_read_is_refused_naming_the_fix() {
    let temp = tempfile::tempdir().unwrap();
    // --signing-key
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key_file = temp.path().join("signing.pk8");
    std::fs::write(&key_file, pkcs8.as_ref()).unwrap();
    set_mode(&key_file, 0o644);
    let log = refused_start(
        &temp.path().join("a"),
        &["--signing-key", key_file.to_str().unwrap()],
    );
    let fix = format!("chmod 600 {}", key_file.display());
    assert!(log.contains(&fix) && log.contains("mode 0644"), "{log}");

    // The key generated into DATA_DIR/keys/, made readable later.
    let data = temp.path().join("b");
    ServerProcess::start(&data, &[]).terminate();
    let generated = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    set_mode(&generated, 0o640);
    let log = refused_start(&data, &[]);
    assert!(
        log.contains(&format!("chmod 600 {}", generated.display())),
        "{log}"
    );
    set_mode(&generated, 0o600);
    ServerProcess::start(&data, &[]).terminate();
}

#[cfg(unix)]
#[tokio::test]
async fn another_stores_key_under_the_active_keys_name_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let (mine, theirs) = (temp.path().join("mine"), temp.path().join("theirs"));
    ServerProcess::start(&mine, &[]).terminate();
    ServerProcess::start(&theirs, &[]).terminate();
    let only_key = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("keys"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    };
    let (my_key, their_key) = (only_key(&mine), only_key(&theirs));
    let my_id = my_key.file_stem().unwrap().to_str().unwrap().to_string();
    let their_id = their_key.file_stem().unwrap().to_str().unwrap().to_string();
    let original = std::fs::read(&my_key).unwrap();
    std::fs::remove_file(&my_key).unwrap();
    std::fs::copy(&their_key, &my_key).unwrap();

    let log = refused_start(&mine, &[]);
    assert!(
        log.contains(&format!(
            "{} holds signing key {their_id}, not the active key {my_id}",
            my_key.display()
        )),
        "{log}"
    );
    // Nothing was adopted: with its own key back, the store starts on it.
    std::fs::remove_file(&my_key).unwrap();
    std::fs::write(&my_key, &original).unwrap();
    set_mode(&my_key, 0o600);
    let server = ServerProcess::start(&mine, &[]);
    let mut client = connect(&server.url).await;
    let ids: Vec<String> = keys(&mut client)
        .await
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(ids, [my_id]);
    server.terminate();
}
