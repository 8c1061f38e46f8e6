//! The Python example agent (`examples/python/agent.py`) end to end against
//! the real server binary: it applies promotes and rollbacks in order with
//! digests it checks itself, acknowledges them (FleetStatus shows it in
//! sync), keeps serving its version while the server is down, and resumes
//! after a restart without applying anything twice.
//!
//! The agent runs in a virtualenv at `target/python-venv`, created on the
//! first run with `python3 -m venv` and `pip install -r
//! examples/python/requirements.txt` (which needs PyPI), reused after that.

mod support;

use promptreg::grpc::pb::{self, registry_client::RegistryClient};
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
/// How long any one expected event may take.
const TIMEOUT: Duration = Duration::from_secs(60);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates (or reuses) `target/python-venv` with the example's requirements
/// installed and returns its interpreter. pip runs only when the
/// requirements changed since the last install.
fn python_venv() -> PathBuf {
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
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match RegistryClient::connect(url.to_string()).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
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
        let deadline = Instant::now() + TIMEOUT;
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
                    panic!("{}", self.report(&format!("no {what} within {TIMEOUT:?}")))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}", self.report(&format!("stdout closed before {what}")))
                }
            }
        }
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

#[track_caller]
fn assert_applied(event: &Value, version: u64, revision: u64, digest: &str) {
    assert_eq!(event["name"], NAME, "{event}");
    assert_eq!(event["label"], LABEL, "{event}");
    assert_eq!(event["version"].as_u64(), Some(version), "{event}");
    assert_eq!(event["revision"].as_u64(), Some(revision), "{event}");
    assert_eq!(event["digest"], digest, "{event}");
}

/// Polls FleetStatus until the agent is connected and in sync on `version`.
async fn wait_in_sync(client: &mut Client, version: u64, digest: &str) -> pb::AgentStatus {
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
        let row = status.agents.iter().find(|a| {
            a.agent_id == AGENT_ID && a.connected && a.in_sync && a.applied_version == version
        });
        if let Some(row) = row {
            assert_eq!(row.applied_digest, digest, "{row:?}");
            assert_eq!(row.target_version, version, "{row:?}");
            assert_eq!((row.name.as_str(), row.label.as_str()), (NAME, LABEL));
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{AGENT_ID} not connected and in sync on v{version} within {TIMEOUT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    // The agent's --self-test digest is the server's for the documented example.
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
    let example = client
        .publish_version(publish_text("examples/hi", "Hi {{name}}", &["name"]))
        .await
        .expect("publish the documented example")
        .into_inner();
    assert_eq!(self_test["digest"], example.digest.as_str(), "{self_test}");

    // Three versions: a model config (normalised by the server) and
    // variables declared out of order exercise the canonical form.
    let mut digests = vec![String::new()];
    for i in 1..=3u64 {
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

    let state_file = temp.path().join("state.json");
    let gen_dir = temp.path().join("gen");
    let mut agent = Agent::spawn(
        &python,
        &[
            "--server",
            server.url.as_str(),
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

    // Snapshot, promote, rollback.
    let event = block_in_place(|| agent.wait_for("applied v1", |e| is_applied(e, 1)));
    assert_applied(&event, 1, v1.revision, &digests[1]);
    let v2 = client
        .set_label(set_label(NAME, LABEL, 2, None))
        .await
        .expect("promote v2")
        .into_inner();
    let event = block_in_place(|| agent.wait_for("applied v2", |e| is_applied(e, 2)));
    assert_applied(&event, 2, v2.revision, &digests[2]);
    let back = client
        .rollback(rollback(NAME, LABEL, None))
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!((back.from_version, back.to_version), (2, 1));
    let event = block_in_place(|| agent.wait_for("applied v1 again", |e| is_applied(e, 1)));
    assert_applied(&event, 1, back.revision, &digests[1]);

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
    let event = block_in_place(|| agent.wait_for("applied v3", |e| is_applied(e, 3)));
    assert_applied(&event, 3, v3.revision, &digests[3]);
    let after_restart: Vec<u64> = agent
        .applied_since(restart_mark)
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        after_restart,
        [3u64],
        "nothing re-applied after the reconnect"
    );
    wait_in_sync(&mut client, 3, &digests[3]).await;
    assert_eq!(read_state(&state_file)["version"], 3);
    assert!(
        !agent.seen.iter().any(|e| is_event(e, "rejected")),
        "{}",
        agent.report("rejected a version")
    );

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
