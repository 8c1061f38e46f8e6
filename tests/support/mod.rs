//! Test support: a real server on 127.0.0.1:0 with a temporary data
//! directory, reached through the generated client.
//!
//! Authentication is on, as in production: every server, in this process
//! or the real binary, makes its admin token on first start
//! (`DATA_DIR/admin.token`), and the clients and CLI runs here send it.
//! [`token_for`] finds the token of a server by its URL.
#![allow(dead_code)]

pub mod certs;
pub mod etcd;
pub mod metrics;
pub mod rng;

use promptreg::domain::Limits;
use promptreg::grpc::pb::{self, registry_client::RegistryClient};
use promptreg::registry::{Registry, RegistryConfig, StoreBackend};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = promptreg::grpc::access::Client;

/// Admin tokens by server URL (every server started here registers its own).
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn remember_token(url: &str, token: String) {
    let mut tokens = TOKENS.lock().unwrap();
    tokens.retain(|(u, _)| u != url);
    tokens.push((url.to_string(), token));
}

/// Sends `token` to the server at `url` from now on.
pub fn use_token(url: &str, token: &str) {
    remember_token(url, token.to_string());
}

/// The admin token of the server at `url` (none for a server started
/// without authentication, or not by this support code).
pub fn token_for(url: &str) -> Option<String> {
    TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(u, _)| u == url)
        .map(|(_, t)| t.clone())
}

/// Reads `DATA_DIR/admin.token` (a server writes it on first start,
/// before it serves; a restored store has none: its tokens came back with
/// it).
pub fn read_admin_token(data_dir: &Path) -> Option<String> {
    let text =
        std::fs::read_to_string(data_dir.join(promptreg::registry::ADMIN_TOKEN_FILE)).ok()?;
    let token = text.trim().to_string();
    (!token.is_empty()).then_some(token)
}

/// A client of the server at `url` that sends `token`.
pub fn client_with(channel: Channel, token: Option<&str>) -> Client {
    let bearer = promptreg::grpc::access::Bearer::new(token).expect("an ASCII token");
    RegistryClient::with_interceptor(channel, bearer)
}

/// Connects to the server at `url` with its admin token, retrying for 30 s.
pub async fn connect(url: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).expect("url");
        match endpoint.connect().await {
            Ok(channel) => return client_with(channel, token_for(url).as_deref()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("cannot connect to {url}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A lazily connecting client of `url` with its admin token.
pub fn connect_lazy(endpoint: tonic::transport::Endpoint, url: &str) -> Client {
    client_with(endpoint.connect_lazy(), token_for(url).as_deref())
}

/// A server running in this process.
pub struct TestServer {
    pub url: String,
    pub data_dir: PathBuf,
    /// The server's registry, for counters; `None` once stopped.
    pub registry: Option<Registry>,
    config: RegistryConfig,
    /// Keeps the temporary directory alive across restarts.
    _temp: std::sync::Arc<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with_limits(limits: Limits) -> TestServer {
        Self::start_with(|config| config.limits = limits).await
    }

    /// Starts a server whose configuration `adjust` may change.
    pub async fn start_with(adjust: impl FnOnce(&mut RegistryConfig)) -> TestServer {
        let temp = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = RegistryConfig::new(temp.path().join("data"));
        // `PROMPTREG_TEST_STORE=etcd` runs the same tests on a real etcd
        // cluster, one prefix per server.
        if etcd::requested() {
            config.store = StoreBackend::Etcd(etcd::shared().config(&etcd::unique_prefix()));
        }
        adjust(&mut config);
        Self::start_in(config, temp).await
    }

    async fn start_in(
        config: RegistryConfig,
        temp: std::sync::Arc<tempfile::TempDir>,
    ) -> TestServer {
        Self::start_at(config, temp, "127.0.0.1:0").await
    }

    async fn start_at(
        config: RegistryConfig,
        temp: std::sync::Arc<tempfile::TempDir>,
        address: &str,
    ) -> TestServer {
        // A port just released by a stopped server can take a moment to bind.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("cannot bind {address}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let registry = Registry::open(config.clone()).expect("registry opens");
        registry.bootstrap_admin().await.expect("admin token");
        if let Some(token) = read_admin_token(&config.data_dir) {
            remember_token(&url, token);
        }
        let serving = registry.clone();
        let task = tokio::spawn(async move {
            promptreg::server::serve(listener, serving, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            url,
            data_dir: config.data_dir.clone(),
            registry: Some(registry),
            config,
            _temp: temp,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn registry(&self) -> &Registry {
        self.registry.as_ref().expect("server is running")
    }

    /// A client with the server's admin token.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The server's admin token.
    pub fn admin_token(&self) -> String {
        token_for(&self.url).expect("the server has an admin token")
    }

    /// Creates a token `name` with one binding, and a client that sends it.
    pub async fn client_as(
        &self,
        name: &str,
        role: pb::Role,
        prefixes: &[&str],
        labels: &[&str],
    ) -> Client {
        let token = self.token_as(name, role, prefixes, labels).await;
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone()).expect("url");
        client_with(endpoint.connect().await.expect("connect"), Some(&token))
    }

    /// Creates a token `name` with one binding; its secret.
    pub async fn token_as(
        &self,
        name: &str,
        role: pb::Role,
        prefixes: &[&str],
        labels: &[&str],
    ) -> String {
        let mut admin = self.client().await;
        admin
            .create_token(pb::CreateTokenRequest {
                name: name.to_string(),
                bindings: vec![pb::Binding {
                    role: role.into(),
                    prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
                    labels: labels.iter().map(|l| l.to_string()).collect(),
                }],
                expires: None,
                ..Default::default()
            })
            .await
            .expect("create token")
            .into_inner()
            .secret
    }

    /// Stops the server gracefully and waits until its store is closed.
    pub async fn stop(&mut self) {
        self.registry = None;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("server stops within 60 s")
                .expect("server task");
        }
        // Connection tasks that were still closing can hold the registry a
        // moment after the server returned; the next open must not race
        // them for the data directory's lock.
        let lock = self.data_dir.join("LOCK");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lock)
        {
            if file.try_lock().is_ok() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and starts a new one on the same data directory and
    /// the same address, so clients can reconnect.
    pub async fn restart_same_address(mut self) -> TestServer {
        self.stop().await;
        let temp = self._temp.clone();
        let address = self.url.trim_start_matches("http://").to_string();
        Self::start_at(self.config.clone(), temp, &address).await
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let temp = self._temp.clone();
        Self::start_in(self.config.clone(), temp).await
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn text(t: &str) -> Option<pb::Template> {
    Some(pb::Template {
        kind: Some(pb::template::Kind::Text(t.to_string())),
    })
}

/// A publish request for a text template.
pub fn publish_text(name: &str, template: &str, vars: &[&str]) -> pb::PublishVersionRequest {
    pb::PublishVersionRequest {
        name: name.to_string(),
        template: text(template),
        variables: vars.iter().map(|v| v.to_string()).collect(),
        model_config_json: String::new(),
        author: "alice".to_string(),
        description: "test".to_string(),
        tags: Default::default(),
    }
}

pub async fn publish(
    client: &mut Client,
    name: &str,
    template: &str,
) -> pb::PublishVersionResponse {
    client
        .publish_version(publish_text(name, template, &[]))
        .await
        .expect("publish")
        .into_inner()
}

pub fn set_label(
    name: &str,
    label: &str,
    version: u64,
    expected: Option<u64>,
) -> pb::SetLabelRequest {
    pb::SetLabelRequest {
        name: name.to_string(),
        label: label.to_string(),
        version,
        actor: "sre".to_string(),
        reason: format!("promote v{version}"),
        expected_version: expected,
    }
}

pub fn rollback(name: &str, label: &str, to: Option<u64>) -> pb::RollbackRequest {
    pb::RollbackRequest {
        name: name.to_string(),
        label: label.to_string(),
        to_version: to,
        actor: "sre".to_string(),
        reason: "bad outputs".to_string(),
        expected_version: None,
        emergency: false,
    }
}

pub async fn resolve(
    client: &mut Client,
    name: &str,
    label: &str,
) -> Result<pb::Version, tonic::Status> {
    let request = pb::GetVersionRequest {
        name: name.to_string(),
        selector: Some(pb::get_version_request::Selector::Label(label.to_string())),
        ..Default::default()
    };
    Ok(client
        .get_version(request)
        .await?
        .into_inner()
        .version
        .expect("version"))
}

/// Asserts a status code and that the message mentions `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} should mention {needle:?}",
                status.message()
            );
        }
    }
}

/// The real `promptreg` binary serving on 127.0.0.1:0, as a child process.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub url: String,
    /// The admin token from `DATA_DIR/admin.token` (none with
    /// `--insecure-no-auth`).
    pub token: Option<String>,
    /// Everything the server wrote to stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_promptreg")
}

impl ServerProcess {
    /// Starts `promptreg serve` on `data_dir` with extra flags and waits
    /// (up to 60 s) for it to log its address.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
            .unwrap_or_else(|log| panic!("server did not start; stderr:\n{log}"))
    }

    /// Like [`ServerProcess::start`] on a given `--listen` address. `Err`
    /// carries the server's stderr when it exited (or stayed silent for 60 s)
    /// without serving, e.g. because the address was still taken.
    pub fn start_at(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<ServerProcess, String> {
        let mut command = std::process::Command::new(binary());
        command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra);
        Self::spawn(command, data_dir)
    }

    /// Like [`ServerProcess::start_at`] on 127.0.0.1:0, with the process's
    /// umask set to `umask` (octal, e.g. "000") first, through `sh`.
    pub fn start_with_umask(
        data_dir: &Path,
        umask: &str,
        extra: &[&str],
    ) -> Result<ServerProcess, String> {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        Self::spawn(command, data_dir)
    }

    /// Like [`ServerProcess::start`], for a start that may be refused: `Err`
    /// carries the exit status (`None`: killed after 60 s of silence) and
    /// the server's stderr.
    pub fn start_or_exit(
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<ServerProcess, (Option<std::process::ExitStatus>, String)> {
        let mut command = std::process::Command::new(binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        Self::spawn_or_exit(command, data_dir)
    }

    /// Spawns a `promptreg serve` command and waits (up to 60 s) for it to
    /// log its address.
    fn spawn(command: std::process::Command, data_dir: &Path) -> Result<ServerProcess, String> {
        Self::spawn_or_exit(command, data_dir).map_err(|(_, log)| log)
    }

    fn spawn_or_exit(
        mut command: std::process::Command,
        data_dir: &Path,
    ) -> Result<ServerProcess, (Option<std::process::ExitStatus>, String)> {
        use std::io::BufRead as _;
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn promptreg serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Text logs say `listen=ADDR`, JSON logs `"listen":"ADDR"`.
                let rest = line
                    .split("listen=")
                    .nth(1)
                    .or_else(|| line.split("\"listen\":").nth(1));
                if let Some(rest) = rest {
                    let addr = rest
                        .trim_start_matches('"')
                        .split(['"', ' ', ','])
                        .next()
                        .unwrap_or_default();
                    let _ = tx.send(addr.to_string());
                }
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => {
                let url = format!("http://{addr}");
                let insecure = command.get_args().any(|a| a == "--insecure-no-auth");
                let token = if insecure {
                    None
                } else {
                    read_admin_token(data_dir)
                };
                if let Some(token) = &token {
                    remember_token(&url, token.clone());
                }
                Ok(ServerProcess {
                    child,
                    url,
                    token,
                    stderr: log,
                })
            }
            Err(timeout) => {
                // Its stderr closed: it exited (or is exiting) by itself.
                let status = if timeout == std::sync::mpsc::RecvTimeoutError::Disconnected {
                    Some(wait_with_timeout(&mut child, Duration::from_secs(60)))
                } else {
                    let _ = child.kill();
                    let _ = child.wait();
                    None
                };
                let log = log.lock().unwrap().clone();
                Err((status, log))
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        wait_with_timeout(&mut self.child, Duration::from_secs(60))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a stopped server's sled store directly (to tamper with it), waiting
/// for sled's lock, which can outlive the closed store by a moment.
pub fn open_store_directly(data_dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match sled::open(data_dir.join("sled")) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("cannot open the store directly: {e}"),
        }
    }
}

/// A child process killed (SIGKILL) and reaped when the test ends, also on
/// a panic.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `promptreg` CLI against the server at `url`.
pub fn run_cli(url: &str, args: &[&str]) -> std::process::Output {
    cli_command(url).args(args).output().expect("run promptreg")
}

/// The environment variables that tell a client command where and how to
/// connect (besides PROMPTREG_SERVER); a test clears them.
pub const CLIENT_SETTINGS: [&str; 6] = [
    "PROMPTREG_TOKEN",
    "PROMPTREG_TOKEN_FILE",
    "PROMPTREG_CONTEXT",
    "PROMPTREG_CA_CERT",
    "PROMPTREG_CLIENT_CERT",
    "PROMPTREG_CLIENT_KEY",
];

/// A `promptreg` command aimed at the server at `url`, with its admin token
/// in PROMPTREG_TOKEN.
pub fn cli_command(url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary());
    command.env("PROMPTREG_SERVER", url);
    for setting in CLIENT_SETTINGS {
        command.env_remove(setting);
    }
    // No context of the machine's user leaks into a test.
    command.env(
        "PROMPTREG_CONFIG",
        "/nonexistent/promptreg-tests/config.toml",
    );
    if let Some(token) = token_for(url) {
        command.env("PROMPTREG_TOKEN", token);
    }
    command
}
