//! Encryption at rest: sealed content on disk, wrong or missing keys,
//! turning encryption on for an existing store.

mod support;

use promptreg::grpc::pb;
use promptreg::registry::{Registry, RegistryConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const MARKER: &str = "MARKER-7f3a9c1d-SECRET";

fn gen_data_key(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    let out = Command::new(binary())
        .args(["keys", "gen-data-key"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap().len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    file
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn secret_request(name: &str) -> pb::PublishVersionRequest {
    let mut request = publish_text(
        name,
        &format!("Never reveal {MARKER} to {{{{user}}}}"),
        &["user"],
    );
    request.model_config_json = format!(r#"{{"model":"m","system_hint":"{MARKER}"}}"#);
    request
}

async fn get_latest(client: &mut Client, name: &str) -> pb::Version {
    client
        .get_version(pb::GetVersionRequest {
            name: name.into(),
            selector: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
}

#[tokio::test]
async fn encrypted_content_never_reaches_the_disk_in_clear() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = gen_data_key(keys.path(), "data.key");
    let file = key_file.clone();
    let mut server =
        TestServer::start_with(move |config| config.encryption_key_file = Some(file)).await;
    let mut client = server.client().await;
    client
        .publish_version(secret_request("secret"))
        .await
        .unwrap();
    let chat = pb::PublishVersionRequest {
        name: "chat".into(),
        template: Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: vec![pb::ChatMessage {
                    role: "system".into(),
                    content: format!("chat {MARKER}"),
                }],
            })),
        }),
        author: "alice".into(),
        ..Default::default()
    };
    client.publish_version(chat).await.unwrap();
    let back = get_latest(&mut client, "secret").await;
    assert!(
        matches!(back.template.unwrap().kind, Some(pb::template::Kind::Text(ref t)) if t.contains(MARKER))
    );
    assert!(back.model_config_json.contains(MARKER));
    assert!(
        client
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .intact
    );
    drop(client);
    server.stop().await;

    let on_disk = files(&server.data_dir);
    assert!(!on_disk.is_empty());
    for (path, bytes) in &on_disk {
        assert!(
            !contains(bytes, MARKER.as_bytes()),
            "{} holds the marker in clear",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_key_is_refused_and_touches_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let right = gen_data_key(keys.path(), "right.key");
    let wrong = gen_data_key(keys.path(), "wrong.key");
    let file = right.clone();
    let mut server =
        TestServer::start_with(move |config| config.encryption_key_file = Some(file)).await;
    let mut client = server.client().await;
    client
        .publish_version(secret_request("secret"))
        .await
        .unwrap();
    drop(client);
    server.stop().await;
    let before = files(&server.data_dir);

    let open = |key: Option<PathBuf>| {
        let mut config = RegistryConfig::new(&server.data_dir);
        config.encryption_key_file = key;
        Registry::open(config).err().expect("refused").to_string()
    };
    let missing = tokio::task::block_in_place(|| open(None));
    assert!(
        missing.contains("this store is encrypted with data key")
            && missing.contains("--encryption-key-file"),
        "{missing}"
    );
    let mismatch = tokio::task::block_in_place(|| open(Some(wrong.clone())));
    assert!(mismatch.contains("wrong data key"), "{mismatch}");
    let after = files(&server.data_dir);
    let changed: Vec<&PathBuf> = after
        .keys()
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed.is_empty() && after.len() == before.len(),
        "a refused start changed {changed:?}"
    );

    // The CLI says the same and exits non-zero.
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .arg("--encryption-key-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong data key"));

    // With the right key it serves again.
    let server = server.restart().await;
    let mut client = server.client().await;
    assert!(get_latest(&mut client, "secret")
        .await
        .model_config_json
        .contains(MARKER));
}

#[tokio::test(flavor = "multi_thread")]
async fn turning_encryption_on_migrates_an_existing_store() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .publish_version(secret_request("secret"))
        .await
        .unwrap();
    publish(&mut client, "plain", "plain text").await;
    drop(client);
    server.stop().await;

    let keys = tempfile::tempdir().unwrap();
    let key_file = gen_data_key(keys.path(), "data.key");
    let mut config = RegistryConfig::new(&server.data_dir);
    config.encryption_key_file = Some(key_file.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let registry = Registry::open(config).unwrap();
    registry.bootstrap_admin().await.unwrap();
    let token = read_admin_token(&server.data_dir).expect("admin token");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(promptreg::server::serve(listener, registry, async {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = client_with(channel, Some(&token));
    assert!(get_latest(&mut client, "secret")
        .await
        .model_config_json
        .contains(MARKER));
    let entries = client
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let migration = entries
        .iter()
        .find(|e| e.action == "enable_encryption")
        .expect("a ledger entry");
    assert!(
        migration.detail.contains("2 versions sealed"),
        "{}",
        migration.detail
    );
    assert!(
        client
            .verify_audit(pb::VerifyAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .intact
    );

    // From now on the store needs the key.
    drop(client);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    let error = tokio::task::block_in_place(|| {
        Registry::open(RegistryConfig::new(&server.data_dir))
            .err()
            .expect("refused")
            .to_string()
    });
    assert!(error.contains("is encrypted"), "{error}");
}
