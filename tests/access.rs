//! Identity and access over the wire: every RPC × every role, scopes by
//! prefix and label, revocation of open watches, the recorded actor, the
//! insecure mode, and the files a first start writes.

mod support;

use promptreg::grpc::pb;
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every RPC of the service, from the descriptor, so a new RPC cannot be
/// left out of the matrix.
fn every_rpc() -> BTreeSet<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(promptreg::grpc::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    set.file
        .iter()
        .filter(|f| f.package() == "promptreg.v1")
        .flat_map(|f| f.service.iter())
        .find(|s| s.name() == "Registry")
        .expect("the Registry service")
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

/// What each role may call, as the proto's `Role` documents it.
fn allowed(role: &str) -> BTreeSet<String> {
    let reader = [
        "GetVersion",
        "ListPrompts",
        "ListVersions",
        "ListLabels",
        "LabelHistory",
        "ResolveAt",
        "DiffVersions",
        "FindByDigest",
        "FleetStatus",
        "ListSigningKeys",
        "ListAudit",
        "VerifyAudit",
        "WhoAmI",
        "ListChecks",
        "ListAttesters",
        "GetPolicy",
        "ListPolicies",
        "ListFreezes",
        "ListRequests",
        "GetRollout",
    ];
    let agent = [
        "GetVersion",
        "ListPrompts",
        "ListVersions",
        "ListLabels",
        "ResolveAt",
        "ListSigningKeys",
        "Watch",
        "WatchMany",
        "AckApplied",
        "WhoAmI",
        "ReportOutcome",
    ];
    let names: Vec<&str> = match role {
        "reader" => reader.to_vec(),
        "agent" => agent.to_vec(),
        "author" => [&reader[..], &["PublishVersion"]].concat(),
        "deployer" => [
            &reader[..],
            &[
                "PublishVersion",
                "SetLabel",
                "Rollback",
                "RemoveLabel",
                "StartRollout",
                "ControlRollout",
            ],
        ]
        .concat(),
        "attester" => [&reader[..], &["AttestVersion"]].concat(),
        "approver" => [&reader[..], &["ApproveRequest", "RejectRequest"]].concat(),
        "admin" => return every_rpc(),
        _ => Vec::new(),
    };
    names.into_iter().map(String::from).collect()
}

/// Calls `rpc` with a request that passes validation; the status code it
/// ends with (OK when it answered). Mutating calls are harmless to repeat.
async fn call(client: &mut Client, rpc: &str, digest: &str, n: usize) -> Code {
    let name = || "support/p".to_string();
    let result: Result<(), tonic::Status> = match rpc {
        "PublishVersion" => client
            .publish_version(publish_text("support/p", &format!("matrix {n}"), &[]))
            .await
            .map(drop),
        "GetVersion" => client
            .get_version(pb::GetVersionRequest {
                name: name(),
                selector: None,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListPrompts" => client
            .list_prompts(pb::ListPromptsRequest::default())
            .await
            .map(drop),
        "ListVersions" => client
            .list_versions(pb::ListVersionsRequest {
                name: name(),
                ..Default::default()
            })
            .await
            .map(drop),
        "SetLabel" => client
            .set_label(set_label("support/p", "staging", 1, None))
            .await
            .map(drop),
        "Rollback" => client
            .rollback(rollback("support/p", "staging", Some(1)))
            .await
            .map(drop),
        "RemoveLabel" => client
            .remove_label(pb::RemoveLabelRequest {
                name: name(),
                label: "canary".into(),
                actor: String::new(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "ListLabels" => client
            .list_labels(pb::ListLabelsRequest { name: name() })
            .await
            .map(drop),
        "LabelHistory" => client
            .label_history(pb::LabelHistoryRequest {
                name: name(),
                label: "production".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ResolveAt" => client
            .resolve_at(pb::ResolveAtRequest {
                name: name(),
                label: "production".into(),
                at: Some(pb::resolve_at_request::At::Revision(1_000_000)),
            })
            .await
            .map(drop),
        "DiffVersions" => client
            .diff_versions(pb::DiffVersionsRequest {
                name: name(),
                from_version: 1,
                to_version: 2,
            })
            .await
            .map(drop),
        "Watch" => client
            .watch(pb::WatchRequest {
                names: vec![name()],
                ..Default::default()
            })
            .await
            .map(drop),
        "WatchMany" => client
            .watch_many(tokio_stream::empty::<pb::WatchManyRequest>())
            .await
            .map(drop),
        "AckApplied" => client
            .ack_applied(pb::AckAppliedRequest {
                agent_id: "matrix".into(),
                name: name(),
                label: "production".into(),
                version: 1,
                digest: digest.to_string(),
                outcome: pb::ApplyOutcome::Applied.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "FleetStatus" => client
            .fleet_status(pb::FleetStatusRequest {
                name: name(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListSigningKeys" => client
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await
            .map(drop),
        "RotateSigningKey" => client
            .rotate_signing_key(pb::RotateSigningKeyRequest {
                actor: String::new(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "ListAudit" => client
            .list_audit(pb::ListAuditRequest {
                name: name(),
                ..Default::default()
            })
            .await
            .map(drop),
        "VerifyAudit" => client
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .map(drop),
        "CreateCheckpoint" => client
            .create_checkpoint(pb::CreateCheckpointRequest {})
            .await
            .map(drop),
        "PruneVersions" => client
            .prune_versions(pb::PruneVersionsRequest {
                name: name(),
                keep_last: 100,
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "FindByDigest" => client
            .find_by_digest(pb::FindByDigestRequest {
                digest: digest.to_string(),
            })
            .await
            .map(drop),
        "Backup" => client.backup(pb::BackupRequest {}).await.map(drop),
        "CreateToken" => client
            .create_token(pb::CreateTokenRequest {
                name: format!("made-by-matrix-{n}"),
                bindings: vec![pb::Binding {
                    role: pb::Role::Reader.into(),
                    ..Default::default()
                }],
                expires: None,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListTokens" => client.list_tokens(pb::ListTokensRequest {}).await.map(drop),
        "RevokeToken" => client
            .revoke_token(pb::RevokeTokenRequest {
                name: "no-such-token".into(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "WhoAmI" => client.who_am_i(pb::WhoAmIRequest {}).await.map(drop),
        "AttestVersion" => client
            .attest_version(pb::AttestVersionRequest {
                name: name(),
                version: 1,
                check: "matrix".into(),
                result: pb::CheckOutcome::Pass.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ListChecks" => client
            .list_checks(pb::ListChecksRequest {
                name: name(),
                version: 1,
                history: true,
            })
            .await
            .map(drop),
        "AddAttester" => client
            .add_attester(pb::AddAttesterRequest {
                name: format!("matrix-{n}"),
                public_key: vec![7; 32],
            })
            .await
            .map(drop),
        "ListAttesters" => client
            .list_attesters(pb::ListAttestersRequest {})
            .await
            .map(drop),
        "RemoveAttester" => client
            .remove_attester(pb::RemoveAttesterRequest {
                name: "no-such-attester".into(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "SetPolicy" => client
            .set_policy(pb::SetPolicyRequest {
                prefix: "matrix/".into(),
                label: "production".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "GetPolicy" => client
            .get_policy(pb::GetPolicyRequest {
                name: name(),
                label: "production".into(),
            })
            .await
            .map(drop),
        "ListPolicies" => client
            .list_policies(pb::ListPoliciesRequest {})
            .await
            .map(drop),
        "DeletePolicy" => client
            .delete_policy(pb::DeletePolicyRequest {
                prefix: "matrix/none/".into(),
                label: "production".into(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "FreezeLabel" => client
            .freeze_label(pb::FreezeLabelRequest {
                prefix: "matrix/".into(),
                label: "production".into(),
                until: Some(promptreg::grpc::timestamp::to_timestamp(
                    promptreg::time::now_micros() + 3_600_000_000,
                )),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "UnfreezeLabel" => client
            .unfreeze_label(pb::UnfreezeLabelRequest {
                prefix: "matrix/".into(),
                label: "production".into(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "ListFreezes" => client
            .list_freezes(pb::ListFreezesRequest {})
            .await
            .map(drop),
        "ListRequests" => client
            .list_requests(pb::ListRequestsRequest::default())
            .await
            .map(drop),
        "ApproveRequest" => client
            .approve_request(pb::ApproveRequestRequest {
                id: 999_999,
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "RejectRequest" => client
            .reject_request(pb::RejectRequestRequest {
                id: 999_999,
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "StartRollout" => client
            .start_rollout(pb::StartRolloutRequest {
                name: name(),
                label: "canary".into(),
                candidate_version: 2,
                spec: Some(pb::RolloutSpec {
                    steps_bp: vec![5000, 10_000],
                    bake_seconds: 3600,
                    ..Default::default()
                }),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "GetRollout" => client
            .get_rollout(pb::GetRolloutRequest {
                name: name(),
                label: "canary".into(),
            })
            .await
            .map(drop),
        "ControlRollout" => client
            .control_rollout(pb::ControlRolloutRequest {
                name: name(),
                label: "canary".into(),
                action: pb::RolloutAction::Pause.into(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "ReportOutcome" => client
            .report_outcome(pb::ReportOutcomeRequest {
                agent_id: "matrix-agent".into(),
                name: name(),
                label: "canary".into(),
                version: 1,
                requests: 10,
                errors: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        other => panic!("the matrix does not know {other}: add it"),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn client_of(server: &TestServer, token: Option<&str>) -> Client {
    let endpoint = tonic::transport::Endpoint::from_shared(server.url.clone()).expect("url");
    client_with(endpoint.connect_lazy(), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_allows_exactly_its_cells() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let v1 = publish(&mut admin, "support/p", "one").await;
    publish(&mut admin, "support/p", "two").await;
    admin
        .set_label(set_label("support/p", "production", 1, None))
        .await
        .unwrap();
    admin
        .set_label(set_label("support/p", "canary", 1, None))
        .await
        .unwrap();

    let mut n = 0;
    let mut wrong = Vec::new();
    for role in [
        pb::Role::Reader,
        pb::Role::Agent,
        pb::Role::Author,
        pb::Role::Deployer,
        pb::Role::Attester,
        pb::Role::Approver,
        pb::Role::Admin,
    ] {
        let role_name = role
            .as_str_name()
            .trim_start_matches("ROLE_")
            .to_lowercase();
        let token = server
            .token_as(&format!("matrix-{role_name}"), role, &[], &[])
            .await;
        let mut client = client_of(&server, Some(&token));
        let may = allowed(&role_name);
        for rpc in every_rpc() {
            n += 1;
            let code = call(&mut client, &rpc, &v1.digest, n).await;
            let denied = matches!(code, Code::PermissionDenied | Code::Unauthenticated);
            if denied == may.contains(&rpc) || (!denied && code == Code::Internal) {
                wrong.push(format!("{role_name} {rpc}: {code:?}"));
            }
        }
    }

    // No credentials, a revoked and an expired token: nothing but
    // UNAUTHENTICATED, on every RPC.
    let revoked = server
        .token_as("matrix-revoked", pb::Role::Admin, &[], &[])
        .await;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            name: "matrix-revoked".into(),
            reason: "matrix".into(),
        })
        .await
        .unwrap();
    let soon = promptreg::time::now_micros() + 1_500_000;
    let expired = admin
        .create_token(pb::CreateTokenRequest {
            name: "matrix-expired".into(),
            bindings: vec![pb::Binding {
                role: pb::Role::Admin.into(),
                ..Default::default()
            }],
            expires: Some(promptreg::grpc::timestamp::to_timestamp(soon)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (who, token) in [
        ("no credentials", None),
        ("revoked", Some(revoked.as_str())),
        ("expired", Some(expired.as_str())),
        ("malformed", Some("prt_not-a-token")),
    ] {
        let mut client = client_of(&server, token);
        for rpc in every_rpc() {
            n += 1;
            let code = call(&mut client, &rpc, &v1.digest, n).await;
            if code != Code::Unauthenticated {
                wrong.push(format!("{who} {rpc}: {code:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong cells:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_all_get_the_same_words() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let revoked = server.token_as("gone", pb::Role::Reader, &[], &[]).await;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            name: "gone".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let unknown = {
        // Well formed, never issued.
        let mut other = TestServer::start().await;
        let token = other.admin_token();
        other.stop().await;
        token
    };
    let message = |token: Option<&str>| {
        let mut client = client_of(&server, token);
        async move {
            client
                .list_prompts(pb::ListPromptsRequest::default())
                .await
                .expect_err("refused")
        }
    };
    let a = message(Some(&revoked)).await;
    let b = message(Some(&unknown)).await;
    assert_eq!(a.code(), Code::Unauthenticated);
    assert_eq!(a.message(), b.message(), "revoked and unknown look alike");
    assert!(!a.message().contains("gone"), "{}", a.message());
    let missing = message(None).await;
    assert!(
        missing.message().contains("Bearer"),
        "{}",
        missing.message()
    );
    let malformed = message(Some("prt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).await;
    assert!(
        malformed.message().contains("well-formed"),
        "{}",
        malformed.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_by_prefix_and_by_label() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    publish(&mut admin, "support/p", "one").await;
    publish(&mut admin, "sales/q", "one").await;

    let mut agent = server
        .client_as("support-fleet", pb::Role::Agent, &["support/"], &[])
        .await;
    agent
        .get_version(pb::GetVersionRequest {
            name: "support/p".into(),
            selector: None,
            ..Default::default()
        })
        .await
        .expect("inside its prefix");
    let denied = agent
        .get_version(pb::GetVersionRequest {
            name: "sales/q".into(),
            selector: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("reading needs reader on sales/q"),
        "{}",
        denied.message()
    );
    // Listing everything lists what it may read, and says nothing of the rest.
    let listed: Vec<String> = agent
        .list_prompts(pb::ListPromptsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .prompts
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(listed, ["support/p"]);
    let outside = agent
        .list_prompts(pb::ListPromptsRequest {
            prefix: "sales/".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    // A watch of everything sees its prefix only; naming another prompt is
    // denied.
    let mut all = agent
        .watch(pb::WatchRequest {
            start_revision: 1,
            include_versions: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let asked = agent
        .watch(pb::WatchRequest {
            names: vec!["sales/q".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(asked.code(), Code::PermissionDenied);
    publish(&mut admin, "sales/q", "two").await;
    let last = publish(&mut admin, "support/p", "two").await;
    let mut names = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    'reading: loop {
        let item = tokio::time::timeout_at(deadline, all.next())
            .await
            .expect("events in time")
            .expect("open")
            .expect("no error");
        if let Some(pb::watch_response::Event::Changes(batch)) = item.event {
            for change in batch.changes {
                if let Some(pb::change::Kind::VersionPublished(v)) = change.kind {
                    names.insert(v.name.clone());
                }
            }
            if batch.revision >= last.revision {
                break 'reading;
            }
        }
    }
    assert_eq!(names, BTreeSet::from(["support/p".to_string()]));

    // A deployer for staging only.
    let mut deployer = server
        .client_as("stager", pb::Role::Deployer, &["support/"], &["staging"])
        .await;
    deployer
        .set_label(set_label("support/p", "staging", 1, None))
        .await
        .expect("staging is its label");
    let production = deployer
        .set_label(set_label("support/p", "production", 1, None))
        .await
        .unwrap_err();
    assert_eq!(production.code(), Code::PermissionDenied);
    assert!(
        production
            .message()
            .contains("deployer on support/p for label production"),
        "{}",
        production.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_open_watches() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    publish(&mut admin, "p", "one").await;
    let mut agent = server.client_as("fleet", pb::Role::Agent, &[], &[]).await;
    let mut watch = agent
        .watch(pb::WatchRequest {
            names: vec!["p".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (outbound, inbound) = tokio::sync::mpsc::channel::<pb::WatchManyRequest>(4);
    let mut many = agent
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await
        .unwrap()
        .into_inner();
    let _keep_open = outbound;
    // The watch is live: Created, then the snapshot.
    let first = tokio::time::timeout(PATIENCE, watch.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))), "{first:?}");

    admin
        .revoke_token(pb::RevokeTokenRequest {
            name: "fleet".into(),
            reason: "leaked".into(),
        })
        .await
        .unwrap();
    for (what, ended) in [
        ("Watch", until_error(&mut watch).await),
        ("WatchMany", until_error(&mut many).await),
    ] {
        assert_eq!(ended.code(), Code::Unauthenticated, "{what}: {ended:?}");
        assert!(ended.message().contains("revoked"), "{what}: {ended:?}");
    }
}

/// Reads `stream` until it fails; the status.
async fn until_error<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!("the stream did not end within {PATIENCE:?}"),
            Ok(None) => panic!("the stream ended without a status"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_is_the_principal_whatever_the_request_claims() {
    let server = TestServer::start().await;
    let mut alice = server
        .client_as("alice", pb::Role::Deployer, &[], &[])
        .await;
    let mut claims = publish_text("p", "one", &[]);
    claims.author = "mallory".into();
    alice.publish_version(claims).await.unwrap();
    let mut promote = set_label("p", "production", 1, None);
    promote.actor = "mallory".into();
    alice.set_label(promote).await.unwrap();

    let mut admin = server.client().await;
    let entries = admin
        .list_audit(pb::ListAuditRequest {
            name: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|e| e.actor == "alice"),
        "{:?}",
        entries.iter().map(|e| &e.actor).collect::<Vec<_>>()
    );
    let history = admin
        .label_history(pb::LabelHistoryRequest {
            name: "p".into(),
            label: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .moves;
    assert_eq!(history[0].actor, "alice");
    // Token changes are ledger entries too, by the admin that made them.
    let tokens = admin
        .list_audit(pb::ListAuditRequest {
            action: "token_create".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let alice_created = tokens
        .iter()
        .find(|e| e.target == "token:alice")
        .expect("alice's token is in the ledger");
    assert_eq!(alice_created.actor, "admin");
    assert_eq!(alice_created.detail, "deployer on every prompt");
}

#[test]
fn insecure_mode_is_refused_off_loopback_and_anonymous_on_it() {
    let temp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(temp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("--insecure-no-auth is refused") && why.contains("loopback"),
        "{why}"
    );

    let data = temp.path().join("open");
    let server = ServerProcess::start(&data, &["--insecure-no-auth"]);
    assert!(server.token.is_none());
    assert!(
        !data.join("admin.token").exists(),
        "no token without authentication"
    );
    let out = std::process::Command::new(binary())
        .args(["publish", "p", "--template", "x", "--author", "mallory"])
        .env("PROMPTREG_SERVER", &server.url)
        .env_remove("PROMPTREG_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(binary())
        .args(["get", "p", "-o", "json"])
        .env("PROMPTREG_SERVER", &server.url)
        .env_remove("PROMPTREG_TOKEN")
        .output()
        .unwrap();
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(version["author"], "anonymous");
}

#[cfg(unix)]
#[test]
fn the_admin_token_file_and_the_data_directory_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let server = ServerProcess::start_with_umask(&data, "000", &[]).expect("starts");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    assert_eq!(mode(&data), 0o700);
    let token = server.token.clone().expect("a token");
    assert!(token.starts_with("prt_") && token.len() == 40, "{token}");
    // The log names the file, never the token.
    let log = server.stderr.lock().unwrap().clone();
    assert!(log.contains("admin.token"), "{log}");
    assert!(!log.contains(&token), "the token must not be logged");
    // A restart keeps the token: no new one is made.
    drop(server);
    let again = ServerProcess::start(&data, &[]);
    assert_eq!(again.token.as_deref(), Some(token.as_str()));
}

/// Health needs no token: load balancers and the Docker HEALTHCHECK ask it.
#[test]
fn health_answers_without_a_token() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let out = std::process::Command::new(binary())
        .args(["health"])
        .env("PROMPTREG_SERVER", &server.url)
        .env_remove("PROMPTREG_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let out = std::process::Command::new(binary())
        .args(["health", "--service", "no.such.Service"])
        .env("PROMPTREG_SERVER", &server.url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unknown service is not serving"
    );
}
