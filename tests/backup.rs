//! Backup, restore, check, and refusing a damaged store at start-up.

mod support;

use promptreg::grpc::pb;
use std::path::Path;
use std::process::Command;
use support::*;

/// Everything a client can read, as comparable values.
async fn everything(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let prompts = client
        .list_prompts(pb::ListPromptsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .prompts;
    for p in prompts {
        out.push(format!("{p:?}"));
        let versions = client
            .list_versions(pb::ListVersionsRequest {
                name: p.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .versions;
        for v in versions {
            let full = client
                .get_version(pb::GetVersionRequest {
                    name: p.name.clone(),
                    selector: Some(pb::get_version_request::Selector::Version(v.version)),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .version;
            out.push(format!("{full:?}"));
        }
        let labels = client
            .list_labels(pb::ListLabelsRequest {
                name: p.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .labels;
        for l in labels {
            let history = client
                .label_history(pb::LabelHistoryRequest {
                    name: p.name.clone(),
                    label: l.label.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .moves;
            out.push(format!("{l:?} {history:?}"));
        }
    }
    let audit = client
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    out.push(format!("{audit:?}"));
    let keys = client
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    out.push(format!("{keys:?}"));
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_store_answers_exactly_as_the_original_did() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "agents/support", "one").await;
    publish(&mut client, "agents/support", "two").await;
    publish(&mut client, "agents/sales", "hello").await;
    client
        .set_label(set_label("agents/support", "production", 1, None))
        .await
        .unwrap();
    client
        .set_label(set_label("agents/support", "production", 2, None))
        .await
        .unwrap();
    client
        .rollback(rollback("agents/support", "production", None))
        .await
        .unwrap();
    let before = everything(&mut client).await;
    let revision = server.registry().revision();

    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("backup.prb");
    let url = server.url.clone();
    let file_arg = file.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&url, &["backup", &file_arg, "--output", "json"])
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
    assert_eq!(json["revision"], revision);

    // The original moves on; the backup does not.
    publish(&mut client, "agents/support", "three").await;

    let restored_dir = temp.path().join("restored");
    let out = Command::new(binary())
        .args(["restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("keys"),
        "the signing-key step is explained"
    );
    // Without the private key the restored server refuses, saying why.
    let missing = promptreg::registry::Registry::open(promptreg::registry::RegistryConfig::new(
        &restored_dir,
    ))
    .err()
    .unwrap();
    assert!(missing.to_string().contains("is missing"), "{missing}");
    copy_dir(&server.data_dir.join("keys"), &restored_dir.join("keys"));

    let out = Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let restored = ServerProcess::start(&restored_dir, &[]);
    // The tokens come back with the store (as hashes): the original's admin
    // token works on the restored server, which makes no new one.
    assert!(!restored_dir.join("admin.token").exists());
    use_token(&restored.url, &server.admin_token());
    let mut restored_client = connect(&restored.url).await;
    assert_eq!(everything(&mut restored_client).await, before);

    // Restore refuses a non-empty directory and a damaged file.
    let out = Command::new(binary())
        .args(["restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    let damaged = temp.path().join("damaged.prb");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = Command::new(binary())
        .args(["restore", damaged.to_str().unwrap(), "--data-dir"])
        .arg(temp.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_problem_and_a_damaged_store_is_refused() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await;
    publish(&mut client, "p", "two").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();

    // While served: refused.
    let out = Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    drop(client);
    server.stop().await;
    let out = Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Remove version 1 (production points to it) and the head's log record.
    {
        let db = open_store_directly(&server.data_dir);
        let mut key = b"v/p\0".to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        db.remove(key).unwrap();
        let mut head = b"r/".to_vec();
        head.extend_from_slice(&3u64.to_be_bytes());
        db.remove(head).unwrap();
        db.flush().unwrap();
    }
    let out = Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("the head revision 3 has no change-log record")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("p v1 is missing")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("label production of p points to missing version 1")),
        "{problems:?}"
    );

    // The server refuses to start on it, pointing at check and restore.
    let error = tokio::task::block_in_place(|| {
        promptreg::registry::Registry::open(promptreg::registry::RegistryConfig::new(
            &server.data_dir,
        ))
        .err()
        .unwrap()
        .to_string()
    });
    assert!(
        error.contains("is damaged")
            && error.contains("promptreg check")
            && error.contains("promptreg restore"),
        "{error}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// sled recovers from a damaged file by dropping the damaged tail: the store
/// comes back consistent but older. Here the older store is made by putting
/// back a copy of sled's files taken three revisions earlier, which is what
/// that recovery leaves. The durable-head file beside the store still says
/// what was acknowledged, so start-up and `check` refuse it by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_rolled_back_behind_its_durable_head_is_refused() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    for text in ["one", "two", "three"] {
        publish(&mut client, "p", text).await;
    }
    drop(client);
    server.stop().await;
    let older = tempfile::tempdir().unwrap();
    copy_tree(&server.data_dir.join("sled"), older.path());

    let mut server = server.restart().await;
    let mut client = server.client().await;
    for text in ["four", "five", "six"] {
        publish(&mut client, "p", text).await;
    }
    client
        .set_label(set_label("p", "production", 6, None))
        .await
        .unwrap();
    drop(client);
    server.stop().await;

    let sled_dir = server.data_dir.join("sled");
    std::fs::remove_dir_all(&sled_dir).unwrap();
    copy_tree(older.path(), &sled_dir);

    let error = tokio::task::block_in_place(|| {
        promptreg::registry::Registry::open(promptreg::registry::RegistryConfig::new(
            &server.data_dir,
        ))
        .err()
        .expect("a store behind its durable head must be refused")
        .to_string()
    });
    assert!(
        error.contains("acknowledged writes are missing")
            && error.contains("revisions 4 to 7 lost")
            && error.contains("promptreg check")
            && error.contains("promptreg restore"),
        "{error}"
    );

    let out = Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("revisions 4 to 7 lost")),
        "{json}"
    );
}
