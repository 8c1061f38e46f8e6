//! Release policy over the wire: required checks, four eyes, void and
//! expired requests, DSSE envelopes, freezes, emergency rollbacks, policy
//! inheritance by prefix, the ListVersions filters, and every path that
//! moves a label passing the same gate.

mod support;

use base64::Engine as _;
use promptreg::grpc::pb;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use support::*;
use tonic::Code;

const NAME: &str = "support/triage";

fn policy(prefix: &str, approvals: u32, require: &[&str]) -> pb::SetPolicyRequest {
    pb::SetPolicyRequest {
        prefix: prefix.into(),
        label: "production".into(),
        approvals,
        require: require.iter().map(|c| c.to_string()).collect(),
        allow_emergency_rollback: None,
        request_ttl_seconds: 0,
        reason: "release rules".into(),
    }
}

fn attest(version: u64, check: &str, pass: bool) -> pb::AttestVersionRequest {
    pb::AttestVersionRequest {
        name: NAME.into(),
        version,
        check: check.into(),
        result: if pass {
            pb::CheckOutcome::Pass
        } else {
            pb::CheckOutcome::Fail
        }
        .into(),
        score: Some(0.9),
        url: "https://ci.example/run/1".into(),
        details: "42 cases".into(),
        envelope: String::new(),
    }
}

fn approve(id: u64) -> pb::ApproveRequestRequest {
    pb::ApproveRequestRequest {
        id,
        reason: "looks right".into(),
    }
}

/// A token `name` with several roles, and a client that sends it.
async fn client_with_roles(server: &TestServer, name: &str, roles: &[pb::Role]) -> Client {
    let mut admin = server.client().await;
    let secret = admin
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            bindings: roles
                .iter()
                .map(|role| pb::Binding {
                    role: (*role).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("create token")
        .into_inner()
        .secret;
    let endpoint = tonic::transport::Endpoint::from_shared(server.url.clone()).expect("url");
    client_with(endpoint.connect().await.expect("connect"), Some(&secret))
}

async fn history(client: &mut Client) -> Vec<pb::LabelMove> {
    client
        .label_history(pb::LabelHistoryRequest {
            name: NAME.into(),
            label: "production".into(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner()
        .moves
}

async fn audit(client: &mut Client) -> Vec<pb::AuditEntry> {
    client
        .list_audit(pb::ListAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_checks_name_every_missing_and_failing_one() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    admin
        .set_policy(policy("support/", 0, &["eval", "safety"]))
        .await
        .unwrap();
    publish(&mut admin, NAME, "one").await;

    assert_status(
        admin
            .set_label(set_label(NAME, "production", 1, None))
            .await,
        Code::FailedPrecondition,
        "version 1 lacks: eval (no result), safety (no result)",
    );
    let mut ci = server
        .client_as("ci", pb::Role::Attester, &["support/"], &[])
        .await;
    ci.attest_version(attest(1, "eval", true)).await.unwrap();
    ci.attest_version(attest(1, "safety", false)).await.unwrap();
    assert_status(
        admin
            .set_label(set_label(NAME, "production", 1, None))
            .await,
        Code::FailedPrecondition,
        "lacks: safety (failed)",
    );
    // The newest result per check counts.
    ci.attest_version(attest(1, "safety", true)).await.unwrap();
    let moved = admin
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    assert!(moved.changed && moved.request.is_none(), "{moved:?}");
    ci.attest_version(attest(1, "eval", false)).await.unwrap();
    publish(&mut admin, NAME, "two").await;
    assert_status(
        admin
            .set_label(set_label(NAME, "production", 2, None))
            .await,
        Code::FailedPrecondition,
        "version 2 lacks: eval (no result), safety (no result)",
    );

    // Results are recorded with their attester, history kept, signed.
    let all = admin
        .list_checks(pb::ListChecksRequest {
            name: NAME.into(),
            version: 1,
            history: true,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(all.len(), 4);
    assert!(all
        .iter()
        .all(|r| r.attester == "ci" && r.signature.len() == 64));
    let newest = admin
        .list_checks(pb::ListChecksRequest {
            name: NAME.into(),
            version: 1,
            history: false,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let summary: Vec<(String, i32)> = newest.iter().map(|r| (r.check.clone(), r.result)).collect();
    assert_eq!(
        summary,
        vec![
            ("eval".to_string(), pb::CheckOutcome::Fail as i32),
            ("safety".to_string(), pb::CheckOutcome::Pass as i32)
        ]
    );
    // An attester moves no label and attests nothing outside its prefix.
    assert_status(
        ci.set_label(set_label(NAME, "production", 1, None)).await,
        Code::PermissionDenied,
        "deployer",
    );
    publish(&mut admin, "billing/x", "b").await;
    let mut elsewhere = attest(1, "eval", true);
    elsewhere.name = "billing/x".into();
    assert_status(
        ci.attest_version(elsewhere).await,
        Code::PermissionDenied,
        "attester on billing/x",
    );
    // Bad input names the field.
    assert_status(
        ci.attest_version(attest(1, "Eval!", true)).await,
        Code::InvalidArgument,
        "check:",
    );
    let mut no_result = attest(1, "eval", true);
    no_result.result = 0;
    assert_status(
        ci.attest_version(no_result).await,
        Code::InvalidArgument,
        "result:",
    );
    let mut nan = attest(1, "eval", true);
    nan.score = Some(f64::NAN);
    assert_status(
        ci.attest_version(nan).await,
        Code::InvalidArgument,
        "score:",
    );
    assert_status(
        ci.attest_version(attest(9, "eval", true)).await,
        Code::NotFound,
        "9",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_the_requester_the_author_and_one_principal_twice_do_not_count() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    admin.set_policy(policy("support/", 2, &[])).await.unwrap();
    // The author may also approve in general, but never their own version.
    let mut alice =
        client_with_roles(&server, "alice", &[pb::Role::Author, pb::Role::Approver]).await;
    let mut dana =
        client_with_roles(&server, "dana", &[pb::Role::Deployer, pb::Role::Approver]).await;
    let mut erin = server
        .client_as("erin", pb::Role::Approver, &["support/"], &["production"])
        .await;
    let mut frank = server
        .client_as("frank", pb::Role::Approver, &[], &[])
        .await;
    let mut canary_only = server
        .client_as("gus", pb::Role::Approver, &[], &["canary"])
        .await;
    publish(&mut alice, NAME, "one").await;

    let answer = dana
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !answer.changed,
        "a protected label does not move: {answer:?}"
    );
    let request = answer.request.expect("a promotion request");
    assert_eq!(request.requester, "dana");
    assert_eq!(request.approvals_required, 2);
    assert_eq!(request.state, pb::RequestState::Pending as i32);
    assert_status(
        resolve(&mut admin, NAME, "production").await,
        Code::NotFound,
        "production",
    );

    assert_status(
        dana.approve_request(approve(request.id)).await,
        Code::FailedPrecondition,
        "dana made request",
    );
    assert_status(
        alice.approve_request(approve(request.id)).await,
        Code::FailedPrecondition,
        "alice is the author",
    );
    assert_status(
        canary_only.approve_request(approve(request.id)).await,
        Code::PermissionDenied,
        "approver on support/triage for label production",
    );
    assert_status(
        dana.approve_request(pb::ApproveRequestRequest {
            id: request.id,
            reason: " ".into(),
        })
        .await,
        Code::InvalidArgument,
        "reason",
    );
    let first = erin
        .approve_request(approve(request.id))
        .await
        .unwrap()
        .into_inner();
    assert!(first.r#move.is_none());
    assert_eq!(first.request.unwrap().approvals.len(), 1);
    assert_status(
        erin.approve_request(approve(request.id)).await,
        Code::FailedPrecondition,
        "counts once",
    );
    let last = frank
        .approve_request(approve(request.id))
        .await
        .unwrap()
        .into_inner();
    let moved = last.r#move.expect("the last approval moves the label");
    assert!(moved.changed && moved.to_version == 1);
    assert_eq!(
        last.request.unwrap().state,
        pb::RequestState::Approved as i32
    );
    assert_eq!(
        resolve(&mut admin, NAME, "production")
            .await
            .unwrap()
            .version,
        1
    );

    let mv = &history(&mut admin).await[0];
    assert_eq!((mv.actor.as_str(), mv.request_id), ("dana", request.id));
    assert_eq!(mv.approvers, vec!["erin", "frank"]);
    let entries = audit(&mut admin).await;
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .rev()
        .take(4)
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("promote", "dana"),
            ("approve", "frank"),
            ("approve", "erin"),
            ("request", "dana")
        ]
    );
    let promote = entries.last().unwrap();
    assert!(
        promote
            .detail
            .ends_with(&format!("request {} approved by erin, frank", request.id)),
        "{}",
        promote.detail
    );
    // The prompt's own listing has its requests and reviews, not the policy.
    let about: Vec<String> = admin
        .list_audit(pb::ListAuditRequest {
            name: NAME.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| format!("{} {}", e.action, e.target))
        .collect();
    let request_target = format!("support/triage:production#request-{}", request.id);
    for action in ["request", "approve"] {
        assert!(
            about.contains(&format!("{action} {request_target}")),
            "{about:?}"
        );
    }
    assert!(!about.iter().any(|e| e.starts_with("policy_")), "{about:?}");
    // Approved is final.
    assert_status(
        erin.approve_request(approve(request.id)).await,
        Code::FailedPrecondition,
        "is approved",
    );
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{:?}", verified.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_void_once_the_label_moved_and_a_rejected_one_stays_closed() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    admin.set_policy(policy("support/", 1, &[])).await.unwrap();
    let mut dana = server.client_as("dana", pb::Role::Deployer, &[], &[]).await;
    let mut erin = server.client_as("erin", pb::Role::Approver, &[], &[]).await;
    for body in ["one", "two", "three"] {
        publish(&mut admin, NAME, body).await;
    }
    let to_two = dana
        .set_label(set_label(NAME, "production", 2, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let to_three = dana
        .set_label(set_label(NAME, "production", 3, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    assert_eq!(to_three.id, to_two.id + 1);
    erin.approve_request(approve(to_two.id)).await.unwrap();
    assert_eq!(
        resolve(&mut admin, NAME, "production")
            .await
            .unwrap()
            .version,
        2
    );

    let listed = admin
        .list_requests(pb::ListRequestsRequest {
            name: NAME.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    let three = listed.iter().find(|q| q.id == to_three.id).unwrap();
    assert_eq!(three.state, pb::RequestState::Void as i32);
    assert!(
        three.closed_reason.contains("moved since the request"),
        "{}",
        three.closed_reason
    );
    assert_status(
        erin.approve_request(approve(to_three.id)).await,
        Code::FailedPrecondition,
        "is void: label production of support/triage moved since the request (unset then, v2 now)",
    );
    let pending = admin
        .list_requests(pb::ListRequestsRequest {
            pending: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert!(pending.is_empty(), "{pending:?}");

    let again = dana
        .set_label(set_label(NAME, "production", 3, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    erin.reject_request(pb::RejectRequestRequest {
        id: again.id,
        reason: "not today".into(),
    })
    .await
    .unwrap();
    assert_status(
        erin.approve_request(approve(again.id)).await,
        Code::FailedPrecondition,
        "is rejected: not today (by erin)",
    );
    assert_status(
        erin.approve_request(approve(424_242)).await,
        Code::NotFound,
        "424242",
    );
    assert_eq!(
        resolve(&mut admin, NAME, "production")
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_expires() {
    let server =
        TestServer::start_with(|c| c.request_ttl = std::time::Duration::from_secs(1)).await;
    let mut admin = server.client().await;
    admin.set_policy(policy("support/", 1, &[])).await.unwrap();
    let mut dana = server.client_as("dana", pb::Role::Deployer, &[], &[]).await;
    let mut erin = server.client_as("erin", pb::Role::Approver, &[], &[]).await;
    publish(&mut admin, NAME, "one").await;
    let request = dana
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let created = promptreg::grpc::timestamp::from_timestamp(request.created.as_ref().unwrap());
    let expires = promptreg::grpc::timestamp::from_timestamp(request.expires.as_ref().unwrap());
    assert_eq!(expires - created, 1_000_000);
    // Past its expiry (a lower bound: waiting longer changes nothing).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_status(
        erin.approve_request(approve(request.id)).await,
        Code::FailedPrecondition,
        "is expired: it expired at",
    );
    let listed = admin
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(listed[0].state, pb::RequestState::Expired as i32);
    assert_status(
        resolve(&mut admin, NAME, "production").await,
        Code::NotFound,
        "production",
    );
    // A policy's own expiry wins over the server's.
    let mut long = policy("support/", 1, &[]);
    long.request_ttl_seconds = 3600;
    admin.set_policy(long).await.unwrap();
    let request = dana
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let created = promptreg::grpc::timestamp::from_timestamp(request.created.as_ref().unwrap());
    let expires = promptreg::grpc::timestamp::from_timestamp(request.expires.as_ref().unwrap());
    assert_eq!(expires - created, 3_600_000_000);
}

/// A DSSE envelope with an in-toto statement about `subject_hex`.
fn envelope(pair: &Ed25519KeyPair, keyid: &str, subject_hex: &str, result: &str) -> String {
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": NAME, "digest": {"sha256": subject_hex}}],
        "predicateType": "https://promptreg.dev/check/v1",
        "predicate": {"check": "eval", "result": result, "score": 0.97, "url": "https://evals.example/7"},
    });
    let payload = serde_json::to_vec(&statement).unwrap();
    let payload_type = "application/vnd.in-toto+json";
    // DSSE's PAE, written out here from the specification.
    let mut pae = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "payloadType": payload_type,
        "payload": b64.encode(&payload),
        "signatures": [{"keyid": keyid, "sig": b64.encode(pair.sign(&pae).as_ref())}],
    })
    .to_string()
}

/// The proto's CHECK SIGNED MESSAGE, built from the documentation alone.
fn documented_check_message(r: &pb::CheckResult) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"promptreg.check.v1\n".to_vec();
    put_str(&mut out, &r.name);
    out.extend_from_slice(&r.version.to_be_bytes());
    put_str(&mut out, &r.digest);
    put_str(&mut out, &r.check);
    put_str(
        &mut out,
        if r.result == pb::CheckOutcome::Pass as i32 {
            "pass"
        } else {
            "fail"
        },
    );
    match r.score {
        None => out.push(0),
        Some(score) => {
            out.push(1);
            out.extend_from_slice(&score.to_be_bytes());
        }
    }
    put_str(&mut out, &r.url);
    put_str(&mut out, &hex::encode(Sha256::digest(r.details.as_bytes())));
    put_str(&mut out, &r.attester);
    put_str(&mut out, &r.envelope_key);
    let time = r.time.as_ref().unwrap();
    let micros = time.seconds * 1_000_000 + i64::from(time.nanos) / 1000;
    out.extend_from_slice(&micros.to_be_bytes());
    out.extend_from_slice(&r.sequence.to_be_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsse_envelope_is_verified_and_a_wrong_subject_refused() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let v1 = publish(&mut admin, NAME, "one").await;
    let v2 = publish(&mut admin, NAME, "two").await;
    let hex_of = |digest: &str| digest.trim_start_matches("sha256:").to_string();
    let rng = ring::rand::SystemRandom::new();
    let pair =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let stranger =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    admin
        .add_attester(pb::AddAttesterRequest {
            name: "evals".into(),
            public_key: pair.public_key().as_ref().to_vec(),
        })
        .await
        .unwrap();
    assert_status(
        admin
            .add_attester(pb::AddAttesterRequest {
                name: "evals".into(),
                public_key: vec![1; 32],
            })
            .await,
        Code::FailedPrecondition,
        "exists already",
    );
    assert_status(
        admin
            .add_attester(pb::AddAttesterRequest {
                name: "short".into(),
                public_key: vec![1; 31],
            })
            .await,
        Code::InvalidArgument,
        "public_key: is 31 bytes",
    );
    let mut ci = server.client_as("ci", pb::Role::Attester, &[], &[]).await;
    let signed = |envelope: String| pb::AttestVersionRequest {
        name: NAME.into(),
        version: 1,
        envelope,
        ..Default::default()
    };
    let recorded = ci
        .attest_version(signed(envelope(
            &pair,
            "evals",
            &hex_of(&v1.digest),
            "pass",
        )))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(
        (recorded.check.as_str(), recorded.envelope_key.as_str()),
        ("eval", "evals")
    );
    assert_eq!(recorded.result, pb::CheckOutcome::Pass as i32);
    assert_eq!(recorded.score, Some(0.97));
    assert!(!recorded.envelope.is_empty());

    for (bad, needle) in [
        (
            envelope(&pair, "evals", &hex_of(&v2.digest), "pass"),
            "no subject of the statement has digest sha256",
        ),
        (
            envelope(&stranger, "evals", &hex_of(&v1.digest), "pass"),
            "no signature is by a registered attester key",
        ),
        (
            envelope(&pair, "nobody", &hex_of(&v1.digest), "pass"),
            "no signature is by a registered attester key",
        ),
        ("{not json".to_string(), "is not a DSSE envelope"),
    ] {
        assert_status(
            ci.attest_version(signed(bad)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let mut disagreeing = signed(envelope(&pair, "evals", &hex_of(&v1.digest), "fail"));
    disagreeing.result = pb::CheckOutcome::Pass.into();
    assert_status(
        ci.attest_version(disagreeing).await,
        Code::InvalidArgument,
        "result: disagrees with the envelope",
    );

    // Another language verifies the server's signature from the proto alone.
    let keys = admin
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let key = keys
        .keys
        .iter()
        .find(|k| k.key_id == recorded.signing_key_id)
        .expect("the signing key");
    let public =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.public_key);
    public
        .verify(&documented_check_message(&recorded), &recorded.signature)
        .expect("the documented message verifies");

    // A removed key signs nothing more; what it signed stays.
    admin
        .remove_attester(pb::RemoveAttesterRequest {
            name: "evals".into(),
            reason: "rotated".into(),
        })
        .await
        .unwrap();
    assert_status(
        ci.attest_version(signed(envelope(
            &pair,
            "evals",
            &hex_of(&v1.digest),
            "pass",
        )))
        .await,
        Code::InvalidArgument,
        "registered attester key",
    );
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{:?}", verified.problems);
    assert_eq!(verified.checks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_refuses_moves_but_not_an_emergency_rollback() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    for body in ["one", "two", "three"] {
        publish(&mut admin, NAME, body).await;
    }
    admin
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap();
    admin
        .set_label(set_label(NAME, "production", 2, None))
        .await
        .unwrap();
    let in_an_hour =
        promptreg::grpc::timestamp::to_timestamp(promptreg::time::now_micros() + 3_600_000_000);
    admin
        .freeze_label(pb::FreezeLabelRequest {
            prefix: "support/".into(),
            label: "production".into(),
            until: Some(in_an_hour),
            reason: "holiday change freeze".into(),
        })
        .await
        .unwrap();
    assert_status(
        admin.set_label(set_label(NAME, "production", 3, None)).await,
        Code::FailedPrecondition,
        "label production of support/triage is frozen (freeze of production on support/ by admin until",
    );
    assert_status(
        admin
            .set_label(set_label(NAME, "production", 3, None))
            .await,
        Code::FailedPrecondition,
        "holiday change freeze",
    );
    // Other labels are not frozen.
    admin
        .set_label(set_label(NAME, "staging", 3, None))
        .await
        .unwrap();

    let mut oncall = server
        .client_as("oncall", pb::Role::Deployer, &[], &["production"])
        .await;
    let back = oncall
        .rollback(rollback(NAME, "production", None))
        .await
        .unwrap()
        .into_inner();
    assert!(back.changed && back.emergency, "{back:?}");
    assert_eq!(back.to_version, 1);
    let mv = &history(&mut admin).await[0];
    assert!(mv.emergency && mv.actor == "oncall", "{mv:?}");
    let entry = audit(&mut admin).await.pop().unwrap();
    assert_eq!(entry.action, "rollback");
    assert!(
        entry.detail.ends_with("; emergency rollback"),
        "{}",
        entry.detail
    );

    let listed = admin
        .list_freezes(pb::ListFreezesRequest {})
        .await
        .unwrap()
        .into_inner()
        .freezes;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].set_by, "admin");
    admin
        .unfreeze_label(pb::UnfreezeLabelRequest {
            prefix: "support/".into(),
            label: "production".into(),
            reason: "over".into(),
        })
        .await
        .unwrap();
    admin
        .set_label(set_label(NAME, "production", 3, None))
        .await
        .unwrap();
    assert_status(
        admin
            .freeze_label(pb::FreezeLabelRequest {
                prefix: "support/".into(),
                label: "production".into(),
                until: Some(promptreg::grpc::timestamp::to_timestamp(1)),
                reason: "past".into(),
            })
            .await,
        Code::InvalidArgument,
        "until: must be in the future",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_rollback_needs_no_approval_unless_the_policy_says_so() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let mut dana = server.client_as("dana", pb::Role::Deployer, &[], &[]).await;
    let mut erin = server.client_as("erin", pb::Role::Approver, &[], &[]).await;
    let mut ci = server.client_as("ci", pb::Role::Attester, &[], &[]).await;
    for body in ["one", "two", "three"] {
        publish(&mut admin, NAME, body).await;
    }
    admin
        .set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap();
    admin
        .set_policy(policy("support/", 1, &["eval"]))
        .await
        .unwrap();
    ci.attest_version(attest(2, "eval", true)).await.unwrap();
    let request = dana
        .set_label(set_label(NAME, "production", 2, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    erin.approve_request(approve(request.id)).await.unwrap();
    assert_eq!(
        resolve(&mut admin, NAME, "production")
            .await
            .unwrap()
            .version,
        2
    );

    // v1 has no eval result and nobody approves: an incident does not wait.
    let back = dana
        .rollback(rollback(NAME, "production", None))
        .await
        .unwrap()
        .into_inner();
    assert!(
        back.changed && back.emergency && back.to_version == 1,
        "{back:?}"
    );
    // A "rollback" to a version the label never had is a promote.
    assert_status(
        dana.rollback(rollback(NAME, "production", Some(3))).await,
        Code::FailedPrecondition,
        "version 3 lacks: eval (no result)",
    );
    // With emergency rollbacks off, a rollback asks for approval like a promote.
    let mut strict = policy("support/", 1, &[]);
    strict.allow_emergency_rollback = Some(false);
    admin.set_policy(strict).await.unwrap();
    let asked = dana
        .rollback(rollback(NAME, "production", Some(2)))
        .await
        .unwrap()
        .into_inner();
    let asked = asked.request.expect("a request");
    assert_eq!(asked.kind, pb::MoveKind::Rollback as i32);
    erin.approve_request(approve(asked.id)).await.unwrap();
    let mv = &history(&mut admin).await[0];
    assert_eq!(mv.kind, pb::MoveKind::Rollback as i32);
    assert!(!mv.emergency && mv.approvers == vec!["erin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_prefix_governs_and_policy_changes_are_audited() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    admin.set_policy(policy("", 0, &["eval"])).await.unwrap();
    admin
        .set_policy(policy("support/t", 0, &["safety"]))
        .await
        .unwrap();
    publish(&mut admin, NAME, "one").await;
    publish(&mut admin, "support/refund", "r").await;
    let governing = |name: &str| pb::GetPolicyRequest {
        name: name.into(),
        label: "production".into(),
    };
    let triage = admin
        .get_policy(governing(NAME))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(
        (triage.prefix.as_str(), triage.require.clone()),
        ("support/t", vec!["safety".to_string()])
    );
    let refund = admin
        .get_policy(governing("support/refund"))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(refund.prefix, "");
    assert!(
        refund.allow_emergency_rollback,
        "the default allows emergency rollbacks"
    );
    assert_status(
        admin
            .set_label(set_label(NAME, "production", 1, None))
            .await,
        Code::FailedPrecondition,
        "lacks: safety (no result)",
    );
    assert_status(
        admin
            .set_label(set_label("support/refund", "production", 1, None))
            .await,
        Code::FailedPrecondition,
        "lacks: eval (no result)",
    );

    let listed = admin
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| p.set_by == "admin"));
    admin
        .delete_policy(pb::DeletePolicyRequest {
            prefix: "support/t".into(),
            label: "production".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    assert_status(
        admin
            .set_label(set_label(NAME, "production", 1, None))
            .await,
        Code::FailedPrecondition,
        "lacks: eval (no result)",
    );
    assert_status(
        admin
            .delete_policy(pb::DeletePolicyRequest {
                prefix: "support/t".into(),
                label: "production".into(),
                reason: String::new(),
            })
            .await,
        Code::NotFound,
        "no policy",
    );
    let actions: Vec<String> = audit(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.action.starts_with("policy_"))
        .map(|e| format!("{} {} by {}", e.action, e.target, e.actor))
        .collect();
    assert_eq!(
        actions,
        vec![
            "policy_set policy::production by admin",
            "policy_set policy:support/t:production by admin",
            "policy_delete policy:support/t:production by admin",
        ]
    );
    // Bad policies name the field.
    for (bad, needle) in [
        (policy("support/", 11, &[]), "approvals: is 11"),
        (policy("support/", 0, &["eval", "eval"]), "require[1]"),
        (policy("Support/", 0, &[]), "prefix"),
        (
            pb::SetPolicyRequest {
                request_ttl_seconds: u64::MAX,
                ..policy("", 1, &[])
            },
            "request_ttl_seconds: is 18446744073709551615",
        ),
        (
            pb::SetPolicyRequest {
                label: "latest".into(),
                ..policy("", 0, &[])
            },
            "label",
        ),
    ] {
        assert_status(admin.set_policy(bad).await, Code::InvalidArgument, needle);
    }
    let mut reader = server.client_as("rita", pb::Role::Reader, &[], &[]).await;
    assert_status(
        reader.set_policy(policy("support/", 1, &[])).await,
        Code::PermissionDenied,
        "admin",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_versions_filters_by_tag_passing_checks_and_eligibility() {
    let server = TestServer::start().await;
    let mut admin = server.client().await;
    for (body, runtime) in [
        ("one", "agent-v2"),
        ("two", "agent-v3"),
        ("three", "agent-v3"),
        ("four", "agent-v3"),
    ] {
        let mut request = publish_text(NAME, body, &[]);
        request.tags.insert("runtime".into(), runtime.into());
        admin.publish_version(request).await.unwrap();
    }
    let mut ci = server.client_as("ci", pb::Role::Attester, &[], &[]).await;
    ci.attest_version(attest(1, "eval", true)).await.unwrap();
    ci.attest_version(attest(2, "eval", true)).await.unwrap();
    ci.attest_version(attest(3, "eval", true)).await.unwrap();
    ci.attest_version(attest(3, "eval", false)).await.unwrap();
    ci.attest_version(attest(2, "safety", true)).await.unwrap();
    admin
        .set_policy(pb::SetPolicyRequest {
            label: "canary".into(),
            ..policy("support/", 0, &["eval", "safety"])
        })
        .await
        .unwrap();
    let list = |tags: &[(&str, &str)], passing: &[&str], eligible: &str, size: u32| {
        pb::ListVersionsRequest {
            name: NAME.into(),
            page_size: size,
            page_token: String::new(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            passing: passing.iter().map(|c| c.to_string()).collect(),
            eligible_for: eligible.into(),
        }
    };
    let numbers =
        |r: pb::ListVersionsResponse| r.versions.iter().map(|v| v.version).collect::<Vec<_>>();
    let all = admin
        .list_versions(list(&[], &[], "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.checks.iter().filter(|c| c.version == 3).count(),
        1,
        "the newest per check"
    );
    assert_eq!(numbers(all), vec![4, 3, 2, 1]);
    let v3 = admin
        .list_versions(list(&[("runtime", "agent-v3")], &[], "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(numbers(v3), vec![4, 3, 2]);
    let passing = admin
        .list_versions(list(&[("runtime", "agent-v3")], &["eval"], "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(numbers(passing), vec![2]);
    let eligible = admin
        .list_versions(list(&[], &[], "canary", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(numbers(eligible), vec![2]);
    // "The newest compatible, validated version" is one page of one.
    let newest = admin
        .list_versions(list(&[], &["eval"], "", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newest.versions[0].version, 2);
    assert!(!newest.next_page_token.is_empty());
    let rest = admin
        .list_versions(pb::ListVersionsRequest {
            page_token: newest.next_page_token.clone(),
            ..list(&[], &["eval"], "", 1)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(numbers(rest), vec![1]);
    assert_status(
        admin.list_versions(list(&[], &["Bad"], "", 0)).await,
        Code::InvalidArgument,
        "passing[0]",
    );
    assert_status(
        admin.list_versions(list(&[], &[], "Bad!", 0)).await,
        Code::InvalidArgument,
        "eligible_for",
    );
}

/// Every RPC that answers with a label move, from the descriptor: a new
/// one must be added to `every_path_that_moves_a_label_passes_the_gate`.
fn rpcs_that_move_labels() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(promptreg::grpc::FILE_DESCRIPTOR_SET).unwrap();
    let mut out: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "promptreg.v1")
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter())
        .filter(|m| {
            let output = m.output_type();
            output.ends_with(".LabelMoveResponse") || output.ends_with(".ReviewResponse")
        })
        .map(|m| m.name().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_that_moves_a_label_passes_the_gate() {
    let tested = [
        "ApproveRequest",
        "RejectRequest",
        "RemoveLabel",
        "Rollback",
        "SetLabel",
    ];
    assert_eq!(
        rpcs_that_move_labels(),
        tested,
        "a new path that moves a label must be tested here"
    );

    let server = TestServer::start().await;
    let mut admin = server.client().await;
    let mut dana = server.client_as("dana", pb::Role::Deployer, &[], &[]).await;
    let mut erin = server.client_as("erin", pb::Role::Approver, &[], &[]).await;
    for body in ["one", "two", "three"] {
        publish(&mut admin, NAME, body).await;
    }
    dana.set_label(set_label(NAME, "production", 1, None))
        .await
        .unwrap();
    admin.set_policy(policy("support/", 1, &[])).await.unwrap();
    let pending = dana
        .set_label(set_label(NAME, "production", 2, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    let rejected = dana
        .set_label(set_label(NAME, "production", 2, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    // A protected label: no path moves it without an approval.
    assert!(dana
        .set_label(set_label(NAME, "production", 3, None))
        .await
        .unwrap()
        .into_inner()
        .request
        .is_some());
    assert!(dana
        .rollback(rollback(NAME, "production", Some(3)))
        .await
        .unwrap()
        .into_inner()
        .request
        .is_some());
    assert_status(
        dana.remove_label(pb::RemoveLabelRequest {
            name: NAME.into(),
            label: "production".into(),
            actor: String::new(),
            reason: "x".into(),
        })
        .await,
        Code::FailedPrecondition,
        "is protected",
    );
    // A freeze: every path is refused, the approval that completes a request included.
    let in_an_hour =
        promptreg::grpc::timestamp::to_timestamp(promptreg::time::now_micros() + 3_600_000_000);
    admin
        .freeze_label(pb::FreezeLabelRequest {
            prefix: String::new(),
            label: "production".into(),
            until: Some(in_an_hour),
            reason: "audit week".into(),
        })
        .await
        .unwrap();
    let frozen = "is frozen";
    assert_status(
        dana.set_label(set_label(NAME, "production", 3, None)).await,
        Code::FailedPrecondition,
        frozen,
    );
    assert_status(
        dana.rollback(rollback(NAME, "production", Some(3))).await,
        Code::FailedPrecondition,
        frozen,
    );
    assert_status(
        dana.remove_label(pb::RemoveLabelRequest {
            name: NAME.into(),
            label: "production".into(),
            actor: String::new(),
            reason: "x".into(),
        })
        .await,
        Code::FailedPrecondition,
        frozen,
    );
    assert_status(
        erin.approve_request(approve(pending.id)).await,
        Code::FailedPrecondition,
        frozen,
    );
    // Rejecting moves nothing, and is allowed during a freeze.
    erin.reject_request(pb::RejectRequestRequest {
        id: rejected.id,
        reason: "no".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        resolve(&mut admin, NAME, "production")
            .await
            .unwrap()
            .version,
        1
    );
    let moves = history(&mut admin).await;
    assert_eq!(moves.len(), 1, "{moves:?}");
}
