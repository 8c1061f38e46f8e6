//! The Python example agent (`examples/python/agent.py`) end to end against
//! the real server binary: it applies promotes and rollbacks in order with
//! digests and Ed25519 signatures it checks itself, acknowledges them
//! (FleetStatus shows it in sync), keeps serving its version while the server
//! is down, and resumes after a restart without applying anything twice. A
//! version whose stored signature was tampered with is rejected (and the
//! agent keeps its version), and a key rotation is picked up. During a
//! rollout the agents follow their own arm, report the outcomes of their
//! (simulated) traffic, and a guardrail that trips sends them back.
//!
//! The agent runs in a virtualenv at `target/python-venv`, created on the
//! first run with `python3 -m venv` and `pip install -r
//! examples/python/requirements.txt` (which needs PyPI), reused after that.

mod support;

use promptreg::grpc::pb;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{publish_text, rollback, set_label, wait_with_timeout, Client, ServerProcess};
use tokio::task::block_in_place;

const NAME: &str = "agents/support";
const LABEL: &str = "production";
const AGENT_ID: &str = "py-agent-1";
/// How long any one expected event may take (generous: a loaded 2-core CI
/// machine builds and runs this next to other tests).
const TIMEOUT: Duration = Duration::from_secs(120);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The venv's interpreter, made once per test binary: the tests run in
/// parallel, and two pip installs into one new venv break it.
fn python_venv() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(make_python_venv).clone()
}

/// Creates (or reuses) `target/python-venv` with the example's requirements
/// installed and returns its interpreter. pip runs only when the
/// requirements changed since the last install.
fn make_python_venv() -> PathBuf {
    let venv = manifest_dir().join("target").join("python-venv");
    let python = venv.join("bin").join("python");
    let requirements = manifest_dir()
        .join("examples")
        .join("python")
        .join("requirements.txt");
    let content = std::fs::read(&requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let hash = sha256_hex(&content);
    let marker = venv.join(".promptreg-requirements.sha256");
    let installed = std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == hash);
    if installed && python.exists() {
        return python;
    }

    if !python.exists() {
        let created = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `python3` ({e}): the Python agent test needs Python 3.9 or newer \
                     on PATH with the venv module; install it (e.g. `apt-get install python3 \
                     python3-venv`) and re-run"
                )
            });
        assert!(
            created.status.success() && python.exists(),
            "`python3 -m venv --clear {}` failed ({}): install the venv module and ensurepip \
             (e.g. `apt-get install python3-venv`), then re-run.\nstdout:\n{}\nstderr:\n{}",
            venv.display(),
            created.status,
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr),
        );
    }

    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        pip.status.success(),
        "`{} -m pip install -r {}` failed ({}): the first run needs PyPI (or a mirror in \
         PIP_INDEX_URL); if pip is missing install python3-venv / python3-pip; if the venv is \
         broken, delete {} and re-run.\nstdout:\n{}\nstderr:\n{}",
        python.display(),
        requirements.display(),
        pip.status,
        venv.display(),
        String::from_utf8_lossy(&pip.stdout),
        String::from_utf8_lossy(&pip.stderr),
    );
    std::fs::write(&marker, format!("{hash}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", marker.display()));
    python
}

/// A free port on 127.0.0.1, so the server can come back at the same
/// address the agent was given.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `promptreg serve` at a fixed `addr`, retrying while the address or the
/// data directory is still held by a server that was just killed.
fn start_server_at(data_dir: &Path, addr: &str) -> ServerProcess {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ServerProcess::start_at(data_dir, addr, &["--progress-interval", "1s"]) {
            Ok(server) => return server,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(log) => panic!("server did not start on {addr}; stderr:\n{log}"),
        }
    }
}

async fn connect(url: &str) -> Client {
    support::connect(url).await
}

/// The agent as a child process; killed when dropped (also on panic).
struct Agent {
    child: Child,
    events: Receiver<Value>,
    /// Every event read so far, in order.
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    fn spawn(python: &Path, args: &[&str]) -> Agent {
        let script = manifest_dir()
            .join("examples")
            .join("python")
            .join("agent.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} agent.py: {e}", python.display()));
        let stdout = child.stdout.take().expect("agent stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("agent stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Agent {
            child,
            events,
            seen: Vec::new(),
            stderr: log,
        }
    }

    /// Reads events until one matches `matches` (within TIMEOUT) and returns it.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, TIMEOUT, matches)
    }

    /// Reads events until one matches `matches` (within `timeout`).
    fn wait_for_within(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}", self.report(&format!("no {what} within {timeout:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}", self.report(&format!("stdout closed before {what}")))
                }
            }
        }
    }

    /// Waits until the agent applies `version` and returns the event;
    /// fails at once if it rejects `version` instead.
    fn wait_applied(&mut self, version: u64) -> Value {
        let event = self.wait_for(&format!("applied v{version}"), |e| {
            (is_event(e, "applied") || is_event(e, "rejected"))
                && e["version"].as_u64() == Some(version)
        });
        if !is_event(&event, "applied") {
            panic!("{}", self.report(&format!("rejected v{version}: {event}")));
        }
        event
    }

    fn report(&mut self, message: &str) -> String {
        let status = self.child.try_wait();
        let events: Vec<String> = self.seen.iter().map(|e| e.to_string()).collect();
        format!(
            "python agent: {message}\nexit status: {status:?}\nevents:\n{}\nstderr:\n{}",
            events.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The `applied` events among `seen[from..]`.
    fn applied_since(&self, from: usize) -> Vec<Value> {
        self.seen[from..]
            .iter()
            .filter(|e| e["event"] == "applied")
            .cloned()
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_event(event: &Value, kind: &str) -> bool {
    event["event"] == kind
}

fn is_applied(event: &Value, version: u64) -> bool {
    is_event(event, "applied") && event["version"].as_u64() == Some(version)
}

/// `key_id` is the signing key whose signature the agent verified.
#[track_caller]
fn assert_applied(event: &Value, version: u64, revision: u64, digest: &str, key_id: &str) {
    assert_eq!(event["name"], NAME, "{event}");
    assert_eq!(event["label"], LABEL, "{event}");
    assert_eq!(event["version"].as_u64(), Some(version), "{event}");
    assert_eq!(event["revision"].as_u64(), Some(revision), "{event}");
    assert_eq!(event["digest"], digest, "{event}");
    assert_eq!(event["key_id"], key_id, "{event}");
}

/// Polls FleetStatus until the agent's row for NAME/LABEL matches.
async fn wait_fleet_row(
    client: &mut Client,
    what: &str,
    matches: impl Fn(&pb::AgentStatus) -> bool,
) -> pb::AgentStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = client
            .fleet_status(pb::FleetStatusRequest {
                name: NAME.to_string(),
                label: LABEL.to_string(),
                ..Default::default()
            })
            .await
            .expect("fleet status")
            .into_inner();
        let row = status
            .agents
            .iter()
            .find(|a| a.agent_id == AGENT_ID && matches(a));
        if let Some(row) = row {
            assert_eq!((row.name.as_str(), row.label.as_str()), (NAME, LABEL));
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{AGENT_ID} not {what} within {TIMEOUT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls FleetStatus until the agent is connected and in sync on `version`
/// with no standing rejection.
async fn wait_in_sync(client: &mut Client, version: u64, digest: &str) -> pb::AgentStatus {
    let what = format!("connected and in sync on v{version} without a rejection");
    let row = wait_fleet_row(client, &what, |a| {
        a.connected && a.in_sync && a.applied_version == version && a.rejected_version == 0
    })
    .await;
    assert_eq!(row.applied_digest, digest, "{row:?}");
    assert_eq!(row.target_version, version, "{row:?}");
    assert!(row.rejected_reason.is_empty(), "{row:?}");
    row
}

/// The server's signing keys (newest first), each checked to carry the id
/// the proto defines: the first 16 hex digits of SHA-256 over the raw key.
async fn signing_keys(client: &mut Client) -> Vec<pb::SigningKey> {
    let keys = client
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .expect("list signing keys")
        .into_inner()
        .keys;
    for key in &keys {
        assert_eq!(key.public_key.len(), 32, "{key:?}");
        assert_eq!(key.key_id, sha256_hex(&key.public_key)[..16], "{key:?}");
    }
    keys
}

/// The version signed message, written out from the proto's "SIGNED
/// MESSAGE" comment (independently of agent.py and of the server).
fn signed_message(name: &str, version: u64, digest: &str, created_at_micros: i64) -> Vec<u8> {
    let mut out = b"promptreg.signature.v1\n".to_vec();
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(digest.len() as u32).to_be_bytes());
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(&created_at_micros.to_be_bytes());
    out
}

/// Flips one hex digit of the stored signature of `name` v`version`, straight
/// in the store of a stopped server, and returns the tampered signature.
fn tamper_stored_signature(data_dir: &Path, name: &str, version: u64) -> String {
    let mut key = b"v/".to_vec();
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    let db = support::open_store_directly(data_dir);
    let raw = db
        .get(&key)
        .expect("read the version record")
        .unwrap_or_else(|| panic!("no record for {name} v{version}"));
    assert_eq!(raw[0], 1, "JSON record format");
    let json = std::str::from_utf8(&raw[1..]).expect("UTF-8 record");
    let record: Value = serde_json::from_str(json).expect("JSON record");
    let signature = record["signature"]
        .as_str()
        .unwrap_or_else(|| panic!("record has no signature: {json}"));
    assert_eq!(signature.len(), 128, "64 bytes in hex: {signature}");
    // Flip the first digit: still lowercase hex, a different signature.
    let (first, rest) = signature.split_at(1);
    let tampered = format!("{}{rest}", if first == "0" { "1" } else { "0" });
    let quoted = format!("\"{signature}\"");
    assert_eq!(json.matches(&quoted).count(), 1, "{json}");
    let edited = json.replace(&quoted, &format!("\"{tampered}\""));
    let mut value = vec![1u8];
    value.extend_from_slice(edited.as_bytes());
    db.insert(key, value).expect("write the tampered record");
    db.flush().expect("flush the store");
    drop(db); // releases sled's lock before the server opens the store again
    tampered
}

fn read_state(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the state file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("state file {text:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_follows_a_label_across_a_server_restart() {
    let python = block_in_place(python_venv);
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let server = start_server_at(&data_dir, &addr);
    let mut client = connect(&server.url).await;

    // The agent's --self-test digest is the server's for the documented
    // example, and its signed message and signature are the proto's layout
    // and a valid Ed25519 signature by this test's own reckoning.
    let self_test = block_in_place(|| {
        Command::new(&python)
            .arg(manifest_dir().join("examples/python/agent.py"))
            .arg("--self-test")
            .output()
            .expect("run agent.py --self-test")
    });
    assert!(self_test.status.success(), "{self_test:?}");
    let self_test: Value = serde_json::from_slice(&self_test.stdout).expect("self-test JSON");
    assert!(
        self_test["matches_documented_bytes"].as_bool() == Some(true),
        "{self_test}"
    );
    assert!(self_test["ok"].as_bool() == Some(true), "{self_test}");
    let example = client
        .publish_version(publish_text("examples/hi", "Hi {{name}}", &["name"]))
        .await
        .expect("publish the documented example")
        .into_inner();
    assert_eq!(self_test["digest"], example.digest.as_str(), "{self_test}");
    let signed = &self_test["signature_example"];
    let hex_field = |field: &str| {
        hex::decode(signed[field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field} is not hex ({e}): {signed}"))
    };
    let micros = signed["created_at"]["seconds"].as_i64().expect("seconds") * 1_000_000
        + signed["created_at"]["nanos"].as_i64().expect("nanos") / 1000;
    assert_eq!(
        signed["created_at_micros"].as_i64(),
        Some(micros),
        "{signed}"
    );
    let message = signed_message(
        signed["name"].as_str().expect("name"),
        signed["version"].as_u64().expect("version"),
        &example.digest,
        micros,
    );
    assert_eq!(hex_field("signed_message_hex"), message, "{signed}");
    let example_key = hex_field("public_key_hex");
    assert_eq!(signed["key_id"], sha256_hex(&example_key)[..16], "{signed}");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &example_key)
        .verify(&message, &hex_field("signature_hex"))
        .unwrap_or_else(|_| panic!("the self-test signature does not verify: {signed}"));
    assert_eq!(signed["checks"]["good"], "verified", "{signed}");
    assert!(
        signed["checks"]["tampered_signature"]
            .as_str()
            .is_some_and(|c| c.starts_with("rejected: invalid Ed25519 signature")),
        "{signed}"
    );

    // The key the server signs with.
    let keys = signing_keys(&mut client).await;
    assert_eq!(keys.len(), 1, "one key before any rotation: {keys:?}");
    assert!(keys[0].active, "{keys:?}");
    let key_id = keys[0].key_id.clone();

    // Four versions: a model config (normalised by the server) and variables
    // declared out of order exercise the canonical form. v4 gets its stored
    // signature tampered with while the server is down.
    let mut digests = vec![String::new()];
    for i in 1..=4u64 {
        let template =
            format!("You are support agent v{i}. Help {{{{customer}}}} with {{{{ticket}}}}.");
        let mut request = publish_text(NAME, &template, &["ticket", "customer"]);
        if i == 2 {
            request.model_config_json = r#"{ "temperature": 0.2, "model": "m-1" }"#.to_string();
        }
        let published = client
            .publish_version(request)
            .await
            .expect("publish")
            .into_inner();
        assert_eq!(published.version, i);
        digests.push(published.digest);
    }
    let v1 = client
        .set_label(set_label(NAME, LABEL, 1, None))
        .await
        .expect("promote v1")
        .into_inner();

    // Least privilege: the agent may read and watch its prompt, nothing else.
    let agent_token = client
        .create_token(pb::CreateTokenRequest {
            name: "python-agent".into(),
            bindings: vec![pb::Binding {
                role: pb::Role::Agent.into(),
                prefixes: vec![NAME.into()],
                labels: vec![],
            }],
            expires: None,
            ..Default::default()
        })
        .await
        .expect("agent token")
        .into_inner()
        .secret;
    let state_file = temp.path().join("state.json");
    let gen_dir = temp.path().join("gen");
    let mut agent = Agent::spawn(
        &python,
        &[
            "--server",
            server.url.as_str(),
            "--token",
            &agent_token,
            "--name",
            NAME,
            "--label",
            LABEL,
            "--agent-id",
            AGENT_ID,
            "--state-file",
            state_file.to_str().expect("UTF-8 temp path"),
            "--gen-dir",
            gen_dir.to_str().expect("UTF-8 temp path"),
            "--max-backoff",
            "1",
        ],
    );

    // Snapshot, promote, rollback: each applied with a verified signature.
    let event = block_in_place(|| agent.wait_applied(1));
    assert_applied(&event, 1, v1.revision, &digests[1], &key_id);
    let v2 = client
        .set_label(set_label(NAME, LABEL, 2, None))
        .await
        .expect("promote v2")
        .into_inner();
    let event = block_in_place(|| agent.wait_applied(2));
    assert_applied(&event, 2, v2.revision, &digests[2], &key_id);
    let back = client
        .rollback(rollback(NAME, LABEL, None))
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!((back.from_version, back.to_version), (2, 1));
    let event = block_in_place(|| agent.wait_applied(1));
    assert_applied(&event, 1, back.revision, &digests[1], &key_id);

    let applied: Vec<(u64, u64)> = agent
        .applied_since(0)
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().unwrap(),
                e["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        applied,
        [(1, v1.revision), (2, v2.revision), (1, back.revision)],
        "applied in order, each once, at increasing revisions"
    );
    assert!(v1.revision < v2.revision && v2.revision < back.revision);
    let row = wait_in_sync(&mut client, 1, &digests[1]).await;
    let info = row.agent.expect("agent info");
    assert_eq!(info.sdk, "promptreg-python-example");
    assert_eq!(read_state(&state_file)["version"], 1);

    // The server dies: the agent stays up and keeps serving v1.
    server.kill();
    let event = block_in_place(|| agent.wait_for("disconnected", |e| is_event(e, "disconnected")));
    assert_eq!(event["serving_version"], 1, "{event}");
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "{}",
        agent.report("exited when the server died")
    );
    let state = read_state(&state_file);
    assert_eq!(state["name"], NAME, "{state}");
    assert_eq!(state["label"], LABEL, "{state}");
    assert_eq!(state["version"], 1, "{state}");
    assert_eq!(state["digest"], digests[1].as_str(), "{state}");
    assert_eq!(state["revision"].as_u64(), Some(back.revision), "{state}");
    assert_eq!(state["key_id"], key_id.as_str(), "{state}");

    // While it is down, someone rewrites v4's signature in the store.
    block_in_place(|| tamper_stored_signature(&data_dir, NAME, 4));

    // Back at the same address: the agent resumes after what it has seen
    // (no snapshot), acks v1 again, and applies the next promote.
    let restart_mark = agent.seen.len();
    let server = start_server_at(&data_dir, &addr);
    let mut client = connect(&server.url).await;
    let event = block_in_place(|| agent.wait_for("reconnect", |e| is_event(e, "connected")));
    assert!(
        event["start_revision"].as_u64().unwrap_or(0) > back.revision,
        "the agent resumes from the revision after the last it processed: {event}"
    );
    wait_in_sync(&mut client, 1, &digests[1]).await;
    let v3 = client
        .set_label(set_label(NAME, LABEL, 3, None))
        .await
        .expect("promote v3")
        .into_inner();
    let event = block_in_place(|| agent.wait_applied(3));
    assert_applied(&event, 3, v3.revision, &digests[3], &key_id);
    wait_in_sync(&mut client, 3, &digests[3]).await;
    assert_eq!(read_state(&state_file)["version"], 3);
    assert!(
        !agent.seen.iter().any(|e| is_event(e, "rejected")),
        "{}",
        agent.report("rejected a version")
    );

    // The tampered v4 is promoted: its content and digest are intact, its
    // signature is not. The agent rejects it and keeps serving v3.
    let state_before = std::fs::read_to_string(&state_file).expect("read the state file");
    let v4 = client
        .set_label(set_label(NAME, LABEL, 4, None))
        .await
        .expect("promote the tampered v4")
        .into_inner();
    let event = block_in_place(|| {
        agent.wait_for("rejected v4", |e| {
            is_event(e, "rejected") || is_applied(e, 4)
        })
    });
    assert!(
        is_event(&event, "rejected"),
        "{}",
        agent.report("applied v4 despite its tampered signature")
    );
    assert_eq!(event["version"].as_u64(), Some(4), "{event}");
    assert_eq!(event["revision"].as_u64(), Some(v4.revision), "{event}");
    assert_eq!(event["digest"], digests[4].as_str(), "{event}");
    assert_eq!(event["serving_version"], 3, "{event}");
    let reason = event["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("signature: invalid Ed25519 signature") && reason.contains(&key_id),
        "the reason names the signature and the key: {event}"
    );
    let row = wait_fleet_row(&mut client, "reporting v4 rejected", |a| {
        a.rejected_version == 4
    })
    .await;
    assert_eq!(row.rejected_reason, reason, "{row:?}");
    assert_eq!(row.applied_version, 3, "{row:?}");
    assert_eq!(row.applied_digest, digests[3], "{row:?}");
    assert_eq!(row.target_version, 4, "{row:?}");
    assert!(row.connected && !row.in_sync, "{row:?}");
    assert_eq!(
        std::fs::read_to_string(&state_file).expect("read the state file"),
        state_before,
        "the state file still describes v3"
    );

    // Rolling back to what the agent runs clears the rejection in the fleet
    // view without re-applying anything.
    let back = client
        .rollback(rollback(NAME, LABEL, None))
        .await
        .expect("roll back the rejected v4")
        .into_inner();
    assert_eq!((back.from_version, back.to_version), (4, 3));
    wait_in_sync(&mut client, 3, &digests[3]).await;

    // A key rotation: v5 is signed by a key the agent has not cached yet; it
    // fetches the keys again and applies v5.
    let rotated = client
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: "sre".to_string(),
            reason: "scheduled rotation".to_string(),
        })
        .await
        .expect("rotate the signing key")
        .into_inner()
        .key
        .expect("the new key");
    assert_ne!(rotated.key_id, key_id);
    let keys = signing_keys(&mut client).await;
    assert!(
        keys.iter().any(|k| k.key_id == rotated.key_id && k.active),
        "{keys:?}"
    );
    let published = client
        .publish_version(publish_text(
            NAME,
            "You are support agent v5. Help {{customer}}.",
            &["customer"],
        ))
        .await
        .expect("publish v5")
        .into_inner();
    assert_eq!(published.version, 5);
    digests.push(published.digest);
    let v5 = client
        .set_label(set_label(NAME, LABEL, 5, None))
        .await
        .expect("promote v5")
        .into_inner();
    let event = block_in_place(|| agent.wait_applied(5));
    assert_applied(&event, 5, v5.revision, &digests[5], &rotated.key_id);
    wait_in_sync(&mut client, 5, &digests[5]).await;
    let state = read_state(&state_file);
    assert_eq!(state["version"], 5, "{state}");
    assert_eq!(state["key_id"], rotated.key_id.as_str(), "{state}");

    let after_restart: Vec<u64> = agent
        .applied_since(restart_mark)
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        after_restart,
        [3u64, 5],
        "nothing re-applied after the reconnect or the rollback, v4 never applied"
    );
    let rejected: Vec<u64> = agent
        .seen
        .iter()
        .filter(|e| is_event(e, "rejected"))
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, [4u64], "only the tampered version is rejected");

    // SIGTERM: a clean exit.
    let pid = agent.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = block_in_place(|| wait_with_timeout(&mut agent.child, TIMEOUT));
    assert!(status.success(), "{}", agent.report("SIGTERM exit"));
    block_in_place(|| agent.wait_for("stopped", |e| is_event(e, "stopped")));
    drop(server);
}

/// The agent over TLS: `https://`, the test CA as `--ca-cert`, its token
/// from `--token-file`; it applies what the label points to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_follows_a_label_over_tls() {
    let python = block_in_place(python_venv);
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = support::certs::Ca::new("python test CA");
    let (cert, key) = ca.server();
    let write = |name: &str, text: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let (cert, key, ca_file) = (
        write("server.pem", &cert),
        write("server.key", &key),
        write("ca.pem", &ca.pem),
    );
    let server = block_in_place(|| {
        ServerProcess::start(
            &temp.path().join("data"),
            &[
                "--tls-cert",
                cert.to_str().expect("UTF-8"),
                "--tls-key",
                key.to_str().expect("UTF-8"),
            ],
        )
    });
    let port = server.url.rsplit(':').next().expect("port").to_string();
    let https = format!("https://localhost:{port}");
    let admin = write("admin.token", server.token.as_deref().expect("token"));
    let cli = |args: &[&str]| {
        let out = support::cli_command(&https)
            .env_remove("PROMPTREG_TOKEN")
            .env("PROMPTREG_TOKEN_FILE", &admin)
            .env("PROMPTREG_CA_CERT", &ca_file)
            .args(args)
            .output()
            .expect("run promptreg");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    block_in_place(|| {
        cli(&["publish", NAME, "--template", "Over TLS you help."]);
        cli(&["promote", NAME, "1", "--label", LABEL, "--reason", "tls"]);
    });
    let agent_token = block_in_place(|| {
        cli(&["tokens", "create", "tls-agent", "--role", "agent"])
            .lines()
            .next()
            .expect("secret line")
            .to_string()
    });
    let token_file = write("agent.token", &agent_token);
    let state_file = temp.path().join("state.json");
    let gen_dir = temp.path().join("gen");
    let mut agent = Agent::spawn(
        &python,
        &[
            "--server",
            &https,
            "--ca-cert",
            ca_file.to_str().expect("UTF-8"),
            "--token-file",
            token_file.to_str().expect("UTF-8"),
            "--name",
            NAME,
            "--label",
            LABEL,
            "--agent-id",
            "tls-agent-1",
            "--state-file",
            state_file.to_str().expect("UTF-8"),
            "--gen-dir",
            gen_dir.to_str().expect("UTF-8"),
        ],
    );
    let applied = block_in_place(|| agent.wait_applied(1));
    assert_eq!(applied["version"].as_u64(), Some(1), "{applied}");
}

/// How long one step of the rollout drill may take (generous: the machine
/// is a loaded 2-core one; nothing here is a speed assertion).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// The rollout's outcome counts an agent's `reported` events say the
/// server counted in the candidate arm of rollout `id`.
fn candidate_requests_reported(agent: &Agent, id: u64) -> u64 {
    agent
        .seen
        .iter()
        .filter(|e| {
            is_event(e, "reported")
                && e["version"] == 2
                && e["rollout_id"].as_u64() == Some(id)
                && e["arm"] == "candidate"
        })
        .map(|e| e["requests"].as_u64().unwrap_or(0))
        .sum()
}

/// A blue-green rollout (one step of 100%) to a candidate that fails half
/// its requests: both agents move to v2 (a promote carrying the rollout,
/// their arm `candidate`), report their simulated outcomes for it, and the
/// error-rate guardrail aborts the rollout; both go back to v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agents_follow_a_rollout_until_its_guardrail_aborts_it() {
    let python = block_in_place(python_venv);
    let temp = tempfile::tempdir().expect("temp dir");
    let server = block_in_place(|| {
        ServerProcess::start(
            &temp.path().join("data"),
            &[
                "--rollout-eval-interval",
                "200ms",
                "--progress-interval",
                "1s",
            ],
        )
    });
    let mut client = connect(&server.url).await;
    let mut digests = vec![String::new()];
    for i in 1..=2u64 {
        let published = client
            .publish_version(publish_text(
                NAME,
                &format!("You are support agent v{i}. Help {{{{customer}}}}."),
                &["customer"],
            ))
            .await
            .expect("publish")
            .into_inner();
        assert_eq!(published.version, i);
        digests.push(published.digest);
    }
    client
        .set_label(set_label(NAME, LABEL, 1, None))
        .await
        .expect("promote v1");
    let agent_token = client
        .create_token(pb::CreateTokenRequest {
            name: "python-rollout-agents".into(),
            bindings: vec![pb::Binding {
                role: pb::Role::Agent.into(),
                prefixes: vec![NAME.into()],
                labels: vec![],
            }],
            expires: None,
            ..Default::default()
        })
        .await
        .expect("agent token")
        .into_inner()
        .secret;

    // Two agents with simulated traffic: v1 never fails, v2 half the time.
    let ids = ["py-rollout-a", "py-rollout-b"];
    let mut agents: Vec<Agent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let gen_dir = temp.path().join(format!("gen-{i}"));
            let tenant = format!("tenant={id}");
            Agent::spawn(
                &python,
                &[
                    "--server",
                    server.url.as_str(),
                    "--token",
                    &agent_token,
                    "--name",
                    NAME,
                    "--label",
                    LABEL,
                    "--agent-id",
                    id,
                    "--attribute",
                    &tenant,
                    "--attribute",
                    "region=eu",
                    "--gen-dir",
                    gen_dir.to_str().expect("UTF-8 temp path"),
                    "--max-backoff",
                    "1",
                    "--report-interval",
                    "0.5",
                    "--simulate-traffic",
                    "40",
                    "--simulate-error-rate",
                    "2=0.5",
                ],
            )
        })
        .collect();

    // Before the rollout: on v1, in sync, attributes in the fleet view, and
    // reports answered "no rollout" (dropped by the server).
    for agent in &mut agents {
        let event = block_in_place(|| agent.wait_applied(1));
        assert!(event.get("arm").is_none(), "no rollout yet: {event}");
        let event = block_in_place(|| {
            agent.wait_for_within("a report of v1", ROLLOUT_TIMEOUT, |e| {
                is_event(e, "reported") && e["version"] == 1
            })
        });
        assert_eq!(event["rollout_id"], 0, "{event}");
        assert!(event["arm"].is_null(), "{event}");
        assert!(event["requests"].as_u64().unwrap_or(0) > 0, "{event}");
        assert_eq!(event["errors"], 0, "v1 never fails: {event}");
    }
    let deadline = Instant::now() + ROLLOUT_TIMEOUT;
    loop {
        let fleet = client
            .fleet_status(pb::FleetStatusRequest {
                name: NAME.to_string(),
                label: LABEL.to_string(),
                ..Default::default()
            })
            .await
            .expect("fleet status")
            .into_inner();
        let ready = ids.iter().all(|id| {
            fleet
                .agents
                .iter()
                .any(|a| a.agent_id == *id && a.connected && a.in_sync && a.applied_version == 1)
        });
        if ready {
            for id in ids {
                let row = fleet.agents.iter().find(|a| a.agent_id == id).unwrap();
                let info = row.agent.as_ref().expect("agent info");
                assert_eq!(
                    info.attributes.get("tenant").map(String::as_str),
                    Some(id),
                    "{row:?}"
                );
                assert_eq!(
                    info.attributes.get("region").map(String::as_str),
                    Some("eu"),
                    "{row:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents are not connected and in sync on v1: {fleet:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Blue-green to v2 with a short bake; the guardrail allows 10% errors.
    let started = client
        .start_rollout(pb::StartRolloutRequest {
            name: NAME.to_string(),
            label: LABEL.to_string(),
            candidate_version: 2,
            spec: Some(pb::RolloutSpec {
                steps_bp: vec![10_000],
                bake_seconds: 2,
                guardrails: vec![pb::Guardrail {
                    metric: pb::GuardrailMetric::ErrorRate.into(),
                    max: 0.1,
                }],
                min_samples: 20,
                // Thin evidence at the end of a bake extends it: only the
                // guardrail ends this rollout.
                max_extensions: 20,
                salt: "python-drill".to_string(),
                ..Default::default()
            }),
            reason: "drill: v2 is bad".to_string(),
        })
        .await
        .expect("start the rollout")
        .into_inner();
    let rollout = started.rollout.expect("the rollout started");
    let id = rollout.id;
    assert_eq!((rollout.stable_version, rollout.candidate_version), (1, 2));

    // Each agent moves to v2 as a candidate, then back to v1 when the
    // guardrail aborts.
    for agent in &mut agents {
        let event = block_in_place(|| {
            agent.wait_for_within("applied v2", ROLLOUT_TIMEOUT, |e| {
                is_applied(e, 2) || is_event(e, "rejected")
            })
        });
        assert!(
            is_applied(&event, 2),
            "{}",
            agent.report("did not apply v2")
        );
        assert_eq!(event["digest"], digests[2].as_str(), "{event}");
        assert_eq!(event["arm"], "candidate", "{event}");
        assert_eq!(event["rollout_id"].as_u64(), Some(id), "{event}");
        assert_eq!(event["rollout_state"], "running", "{event}");
    }
    for agent in &mut agents {
        let event = block_in_place(|| {
            agent.wait_for_within("back on v1", ROLLOUT_TIMEOUT, |e| {
                is_applied(e, 1) || is_event(e, "rejected")
            })
        });
        assert!(is_applied(&event, 1), "{}", agent.report("did not go back"));
        assert_eq!(event["digest"], digests[1].as_str(), "{event}");
        assert_eq!(event["rollout_id"].as_u64(), Some(id), "{event}");
        assert_eq!(event["rollout_state"], "aborted", "{event}");
        assert!(event.get("arm").is_none(), "no arm once aborted: {event}");
        // The reporter sends in order: once a v1 report is out, every report
        // of v2 is in `seen`.
        block_in_place(|| {
            agent.wait_for_within("a report of v1 after the abort", ROLLOUT_TIMEOUT, |e| {
                is_event(e, "reported") && e["version"] == 1
            })
        });
    }

    // The guardrail aborted it, on the candidate requests the agents reported.
    let status = client
        .get_rollout(pb::GetRolloutRequest {
            name: NAME.to_string(),
            label: LABEL.to_string(),
        })
        .await
        .expect("get the rollout")
        .into_inner();
    let ended = status.rollout.clone().expect("the rollout");
    assert_eq!(ended.id, id, "{status:?}");
    assert_eq!(
        ended.state,
        pb::RolloutState::Aborted as i32,
        "the rollout aborted: {status:?}"
    );
    let abort = status
        .log
        .iter()
        .find(|m| {
            m.rollout
                .as_ref()
                .is_some_and(|r| r.state == pb::RolloutState::Aborted as i32)
        })
        .unwrap_or_else(|| panic!("no abort in the decision log: {status:?}"));
    assert_eq!(abort.actor, "guardrail", "{abort:?}");
    assert!(
        abort.reason.contains("error_rate"),
        "the abort names the guardrail: {abort:?}"
    );
    let reported: u64 = agents
        .iter()
        .map(|a| candidate_requests_reported(a, id))
        .sum();
    assert!(
        reported >= 20,
        "the agents reported at least min_samples candidate requests ({reported}): {status:?}"
    );
    for agent in &mut agents {
        let reports: Vec<&Value> = agent
            .seen
            .iter()
            .filter(|e| is_event(e, "reported") && e["version"] == 2)
            .collect();
        for report in &reports {
            let requests = report["requests"].as_u64().unwrap_or(0);
            let errors = report["errors"].as_u64().unwrap_or(u64::MAX);
            assert!(requests > 0 && errors <= requests, "{report}");
        }
        let stderr = agent.stderr.lock().unwrap().clone();
        assert!(
            !stderr.contains("its bucket says"),
            "the server's arm and the agent's own bucket agree: {stderr}"
        );
        assert!(
            agent.child.try_wait().expect("try_wait").is_none(),
            "{}",
            agent.report("exited")
        );
    }

    // Both in sync on v1, outside any rollout.
    let deadline = Instant::now() + ROLLOUT_TIMEOUT;
    loop {
        let fleet = client
            .fleet_status(pb::FleetStatusRequest {
                name: NAME.to_string(),
                label: LABEL.to_string(),
                ..Default::default()
            })
            .await
            .expect("fleet status")
            .into_inner();
        let back = ids.iter().all(|id| {
            fleet.agents.iter().any(|a| {
                a.agent_id == *id
                    && a.connected
                    && a.in_sync
                    && a.applied_version == 1
                    && a.arm == pb::Arm::Unspecified as i32
            })
        });
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agents are not back in sync on v1: {fleet:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agents);
    drop(server);
}
