//! The release-policy commands through the real binary: a policy, a
//! check result, a promote that becomes a request (exit 5), its approval,
//! what `history`, `versions`, `get` and `verify` show, freezes, attester
//! keys, and usage errors.

mod support;

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;
use support::ServerProcess;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = support::cli_command(url);
    if let Some(token) = token {
        command.env("PROMPTREG_TOKEN", token);
    }
    let out = command.args(args).output().expect("run promptreg");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(url: &str, token: Option<&str>, args: &[&str]) -> String {
    let r = run(url, token, args);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    r.stdout
}

fn token(url: &str, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "create", name, "--role", role, "-o", "json"];
    args.extend(extra);
    let created: Value = serde_json::from_str(ok(url, None, &args).trim()).unwrap();
    created["secret"].as_str().unwrap().to_string()
}

#[test]
fn release_commands_from_policy_to_approval() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let url = server.url.as_str();
    let ci = token(url, "ci", "attester", &["--prefix", "support/"]);
    let dana = token(url, "dana", "deployer", &[]);
    let erin = token(url, "erin", "approver", &["--label", "production"]);

    ok(
        url,
        None,
        &[
            "policy",
            "set",
            "support/",
            "--label",
            "production",
            "--require",
            "eval",
            "--approvals",
            "1",
            "--reason",
            "release rules",
        ],
    );
    let listed = ok(url, None, &["policy", "list"]);
    assert!(
        listed.contains("support/") && listed.contains("eval"),
        "{listed}"
    );
    let governing = ok(
        url,
        None,
        &["policy", "get", "support/triage", "--label", "production"],
    );
    assert!(governing.contains("admin"), "{governing}");
    ok(
        url,
        None,
        &["publish", "support/triage", "--template", "hi"],
    );

    let refused = run(
        url,
        Some(&dana),
        &[
            "promote",
            "support/triage",
            "1",
            "--label",
            "production",
            "--reason",
            "ship",
        ],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("version 1 lacks: eval (no result)"),
        "{}",
        refused.stderr
    );

    let recorded = ok(
        url,
        Some(&ci),
        &[
            "attest",
            "support/triage",
            "1",
            "--check",
            "eval",
            "--result",
            "pass",
            "--score",
            "0.9",
        ],
    );
    assert!(
        recorded.contains("recorded eval pass for support/triage v1"),
        "{recorded}"
    );

    let asked = run(
        url,
        Some(&dana),
        &[
            "promote",
            "support/triage",
            "1",
            "--label",
            "production",
            "--reason",
            "ship",
        ],
    );
    assert_eq!(
        asked.code, 5,
        "a protected label did not move: {}",
        asked.stderr
    );
    assert!(
        asked
            .stdout
            .contains("is protected: promotion request 1 to v1"),
        "{}",
        asked.stdout
    );
    assert!(
        asked.stderr.contains("the label did not move"),
        "{}",
        asked.stderr
    );

    let pending = ok(url, Some(&erin), &["requests", "--pending", "-o", "json"]);
    let request: Value = serde_json::from_str(pending.lines().next().unwrap()).unwrap();
    assert_eq!(
        (request["id"].as_u64(), request["requester"].as_str()),
        (Some(1), Some("dana"))
    );
    let self_review = run(url, Some(&dana), &["approve", "1", "--reason", "mine"]);
    assert_eq!(self_review.code, 1);
    assert!(
        self_review.stderr.contains("permission denied"),
        "{}",
        self_review.stderr
    );
    let approved = ok(url, Some(&erin), &["approve", "1", "--reason", "reviewed"]);
    assert!(
        approved.contains("request 1 approved") && approved.contains("approved by erin"),
        "{approved}"
    );

    let history = ok(
        url,
        None,
        &["history", "support/triage", "--label", "production"],
    );
    assert!(
        history.contains("dana (request 1, approved by erin)"),
        "{history}"
    );
    let versions = ok(
        url,
        None,
        &[
            "versions",
            "support/triage",
            "--eligible-for",
            "production",
            "--limit",
            "1",
            "-o",
            "json",
        ],
    );
    let newest: Value = serde_json::from_str(versions.trim()).unwrap();
    assert_eq!(newest["version"], 1);
    assert_eq!(newest["checks"][0]["check"], "eval");
    assert!(ok(url, None, &["get", "support/triage"]).contains("checks: eval:pass"));
    let verified = ok(url, None, &["verify", "support/triage", "--version", "1"]);
    assert!(
        verified.contains("checks: ok (1 check result)"),
        "{verified}"
    );
    assert!(ok(url, None, &["audit", "--action-name", "approve"]).contains("erin"));

    ok(
        url,
        None,
        &[
            "freeze",
            "support/",
            "--label",
            "production",
            "--until",
            "1h",
            "--reason",
            "holiday",
        ],
    );
    assert!(ok(url, None, &["freezes"]).contains("holiday"));
    let frozen = run(
        url,
        Some(&dana),
        &[
            "promote",
            "support/triage",
            "1",
            "--label",
            "production",
            "--reason",
            "again",
        ],
    );
    // Already there: a no-op is reported before any rule.
    assert_eq!(frozen.code, 0, "{}", frozen.stderr);
    ok(
        url,
        None,
        &["publish", "support/triage", "--template", "hi again"],
    );
    let frozen = run(
        url,
        Some(&dana),
        &[
            "promote",
            "support/triage",
            "2",
            "--label",
            "production",
            "--reason",
            "again",
        ],
    );
    assert_eq!(frozen.code, 1);
    assert!(
        frozen.stderr.contains("is frozen") && frozen.stderr.contains("holiday"),
        "{}",
        frozen.stderr
    );
    assert!(ok(
        url,
        None,
        &["unfreeze", "support/", "--label", "production"]
    )
    .contains("no longer frozen"));

    // An attester key from a PEM, as `openssl pkey -pubout` writes it.
    let rng = ring::rand::SystemRandom::new();
    let pair =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let key_file = temp.path().join("evals.pub");
    std::fs::write(&key_file, pem).unwrap();
    let added = ok(
        url,
        None,
        &[
            "attesters",
            "add",
            "evals",
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(
        added.contains(&hex::encode(pair.public_key().as_ref())),
        "{added}"
    );
    std::fs::write(&key_file, "not a key").unwrap();
    let bad_key = run(
        url,
        None,
        &[
            "attesters",
            "add",
            "other",
            "--public-key",
            key_file.to_str().unwrap(),
        ],
    );
    assert_eq!(bad_key.code, 2);
    assert!(
        bad_key.stderr.contains("--public-key"),
        "{}",
        bad_key.stderr
    );

    // Usage errors exit 2 and name the flag.
    let no_result = run(
        url,
        Some(&ci),
        &["attest", "support/triage", "1", "--check", "eval"],
    );
    assert_eq!(no_result.code, 2);
    assert!(
        no_result.stderr.contains("--result"),
        "{}",
        no_result.stderr
    );
    let bad_until = run(
        url,
        None,
        &[
            "freeze",
            "support/",
            "--label",
            "production",
            "--until",
            "soon",
            "--reason",
            "x",
        ],
    );
    assert_eq!(bad_until.code, 2);
    assert!(bad_until.stderr.contains("--until"), "{}", bad_until.stderr);
    let bad_tag = run(
        url,
        None,
        &["versions", "support/triage", "--tag", "runtime"],
    );
    assert_eq!(bad_tag.code, 2);
    assert!(bad_tag.stderr.contains("KEY=VALUE"), "{}", bad_tag.stderr);
    server.terminate();
}
