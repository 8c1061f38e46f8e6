//! The promptreg server under test: the release binary started as a child
//! process on 127.0.0.1:0 with a temporary data directory, so the harness
//! can read its resident memory and CPU time from /proc. Its address comes
//! from the `"serving"` line of its JSON log on stderr. `restart` stops it
//! (SIGKILL or SIGTERM) and starts a new process on the same data directory
//! and address, for the reconnect storm.

use anyhow::{anyhow, bail, Context};
use promptreg::grpc::access::Bearer;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How `ServerProcess::restart` stops the running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash. Connections break mid-stream and answers in flight
    /// are lost (a write may be durable without its caller knowing).
    Kill,
    /// SIGTERM: the server ends every watch stream with UNAVAILABLE and the
    /// revision to resume from, and finishes the requests in flight.
    Graceful,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILL",
            Stop::Graceful => "SIGTERM",
        }
    }
}

/// When the steps of one `restart` happened.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// The old process was sent its signal.
    pub signalled: Instant,
    /// The old process had exited.
    pub exited: Instant,
    /// The new process logged "serving" (the harness read the line).
    pub serving: Instant,
}

/// A running `promptreg serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
    bin: PathBuf,
    /// CPU seconds of the processes that `restart` replaced, so
    /// `cpu_seconds` covers the server across restarts.
    earlier_cpu_s: f64,
    /// Kept across restarts; removed when the server is dropped.
    data_dir: tempfile::TempDir,
    /// More `serve` flags, given again at every restart.
    extra_args: Vec<String>,
    /// The admin token the server wrote on its first start, sent on every
    /// call: the bench measures with authentication on.
    token: String,
}

/// A connection that sends the admin token on every call.
pub type Conn = InterceptedService<Channel, Bearer>;

/// The outcome of starting one server process.
enum Spawned {
    Serving(Child, String),
    /// The process ended before it logged "serving" (e.g. the port was
    /// still taken); the text says how.
    Exited(String),
}

impl ServerProcess {
    /// Starts `bin serve` and waits (at most 30 s) for its "serving" line.
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_with_args(bin, &[])
    }

    /// [`ServerProcess::start`] with more `serve` flags.
    pub fn start_with_args(bin: &Path, extra_args: &[String]) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("promptreg-bench-")
            .tempdir()?;
        match spawn(bin, data_dir.path(), "127.0.0.1:0", extra_args)? {
            Spawned::Serving(child, addr) => {
                let token_file = data_dir.path().join("data").join("admin.token");
                let token = std::fs::read_to_string(&token_file)
                    .with_context(|| format!("read the admin token {}", token_file.display()))?
                    .trim()
                    .to_string();
                Ok(ServerProcess {
                    child,
                    addr,
                    bin: bin.to_path_buf(),
                    earlier_cpu_s: 0.0,
                    data_dir,
                    extra_args: extra_args.to_vec(),
                    token,
                })
            }
            Spawned::Exited(why) => bail!("{} {why}", bin.display()),
        }
    }

    /// Stops the server as `how` says, then starts a new process on the
    /// same data directory and the same address, and waits for its
    /// "serving" line. A graceful stop that takes longer than 15 s is
    /// finished with SIGKILL. Retries the start for up to 10 s if the
    /// address is not free yet.
    ///
    /// Blocks (it polls the old process and waits for the new one); from
    /// async code call it inside `tokio::task::block_in_place`.
    pub fn restart(&mut self, how: Stop) -> anyhow::Result<Restarted> {
        let signalled = Instant::now();
        self.earlier_cpu_s += stop_and_reap(&mut self.child, how, Duration::from_secs(15))?;
        let exited = Instant::now();
        let deadline = exited + Duration::from_secs(10);
        loop {
            match spawn(
                &self.bin,
                self.data_dir.path(),
                &self.addr,
                &self.extra_args,
            )? {
                Spawned::Serving(child, addr) => {
                    self.child = child;
                    anyhow::ensure!(
                        addr == self.addr,
                        "the restarted server serves {addr}, not {}",
                        self.addr
                    );
                    return Ok(Restarted {
                        signalled,
                        exited,
                        serving: Instant::now(),
                    });
                }
                Spawned::Exited(why) if Instant::now() < deadline => {
                    eprintln!("promptreg-bench: restart: the server {why}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Spawned::Exited(why) => bail!("restart: {} {why}", self.bin.display()),
            }
        }
    }

    /// The server's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used by the server so far, over every process `restart`
    /// started (for `CpuMeter::start_at`).
    pub fn cpu_seconds(&self) -> f64 {
        self.earlier_cpu_s + crate::procfs::cpu_seconds(Some(self.pid()))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `n` separate HTTP/2 connections to the server, each sending the
    /// admin token on every call.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Conn>> {
        let bearer = Bearer::new(Some(&self.token))
            .ok_or_else(|| anyhow!("the admin token cannot travel in a header"))?;
        Ok(connect_channels(&self.url(), n)
            .await?
            .into_iter()
            .map(|channel| InterceptedService::new(channel, bearer.clone()))
            .collect())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// Starts `bin serve --listen listen` on `dir` and waits (at most 30 s) for
/// its "serving" line. Its log goes to `dir/server.log` (appended, so a
/// restart adds to it).
fn spawn(bin: &Path, dir: &Path, listen: &str, extra_args: &[String]) -> anyhow::Result<Spawned> {
    let log_path = dir.join("server.log");
    let mut child = Command::new(bin)
        .args(["serve", "--listen", listen, "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with cargo build --release)",
                bin.display()
            )
        })?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("the server's stderr is not piped"))?;
    let (tx, rx) = mpsc::channel();
    // Keep draining stderr into a file for the whole run, so the server
    // never blocks on a full pipe. The thread ends (and drops `tx`) when
    // the process closes stderr, i.e. when it exits.
    std::thread::spawn(move || {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ok();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = tx.as_ref().and_then(|_| serving_addr(&line)) {
                let _ = tx.take().map(|tx| tx.send(addr));
            }
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok(Spawned::Serving(child, addr)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not log \"serving\" within 30 s", bin.display());
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait()?;
            let last = std::fs::read_to_string(dir.join("server.log"))
                .ok()
                .and_then(|log| log.lines().last().map(str::to_string))
                .unwrap_or_default();
            Ok(Spawned::Exited(format!(
                "exited before serving ({status}): {last}"
            )))
        }
    }
}

/// Sends `how`'s signal and waits until the process has exited (SIGKILL
/// after `grace`). Returns the CPU seconds it used in all, read while it is
/// a zombie, just before it is reaped: /proc keeps a zombie's final times.
fn stop_and_reap(child: &mut Child, how: Stop, grace: Duration) -> anyhow::Result<f64> {
    if child.try_wait()?.is_some() {
        bail!("the server had already exited");
    }
    let pid = child.id();
    let signal = match how {
        Stop::Kill => libc::SIGKILL,
        Stop::Graceful => libc::SIGTERM,
    };
    // SAFETY: kill(2) on our own child, which is not reaped yet, so the pid
    // cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
    let deadline = Instant::now() + grace;
    let mut killed = how == Stop::Kill;
    let mut cpu = 0.0;
    loop {
        match crate::procfs::state(pid) {
            Some('Z') | Some('X') | None => break,
            Some(_) => cpu = crate::procfs::cpu_seconds(Some(pid)),
        }
        if !killed && Instant::now() > deadline {
            eprintln!("promptreg-bench: the server ignored SIGTERM for {grace:?}; SIGKILL");
            let _ = child.kill();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A zombie's /proc entry still holds its final CPU time; once reaped it
    // is gone, so fall back to the last reading taken while it ran.
    let final_cpu = crate::procfs::cpu_seconds(Some(pid));
    child.wait()?;
    Ok(if final_cpu > 0.0 { final_cpu } else { cpu })
}

/// `n` tonic channels, each its own TCP connection (a `Channel` multiplexes
/// all of its calls on one HTTP/2 connection).
pub async fn connect_channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("connect {url}"))?,
        );
    }
    Ok(channels)
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The `listen` field of the server's JSON "serving" log line.
fn serving_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = v.get("message").or_else(|| v.pointer("/fields/message"))?;
    if message != "serving" {
        return None;
    }
    v.get("listen")
        .or_else(|| v.pointer("/fields/listen"))?
        .as_str()
        .map(str::to_string)
}

/// The `promptreg` binary next to this one (both live in target/release).
pub fn default_server_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("promptreg")))
        .unwrap_or_else(|| PathBuf::from("target/release/promptreg"))
}

/// A free TCP port on 127.0.0.1 (bound to :0 and released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Fails with a clear message if `pid` is gone.
pub fn ensure_alive(child: &mut Child, what: &str) -> anyhow::Result<()> {
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(anyhow!("{what} exited: {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::serving_addr;

    #[test]
    fn finds_the_listen_address_in_flattened_and_nested_json() {
        let flat = r#"{"timestamp":"t","level":"INFO","message":"serving","listen":"127.0.0.1:4242","revision":0,"target":"promptreg::server"}"#;
        assert_eq!(serving_addr(flat).as_deref(), Some("127.0.0.1:4242"));
        let nested = r#"{"fields":{"message":"serving","listen":"127.0.0.1:1"}}"#;
        assert_eq!(serving_addr(nested).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(serving_addr(r#"{"message":"stopped"}"#), None);
        assert_eq!(serving_addr("not json"), None);
    }
}
