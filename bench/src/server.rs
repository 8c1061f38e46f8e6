//! The promptreg server under test: the release binary started as a child
//! process on 127.0.0.1:0 with a temporary data directory, so the harness
//! can read its resident memory and CPU time from /proc. Its address comes
//! from the `"serving"` line of its JSON log on stderr.

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A running `promptreg serve`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
    _data_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `bin serve` and waits (at most 30 s) for its "serving" line.
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("promptreg-bench-")
            .tempdir()?;
        let log_path = data_dir.path().join("server.log");
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
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
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keep draining stderr into a file for the whole run, so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(&log_path).ok();
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
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                bail!("{} did not log \"serving\" within 30 s", bin.display());
            }
        };
        Ok(ServerProcess {
            child,
            addr,
            _data_dir: data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `n` separate HTTP/2 connections to the server.
    pub async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        connect_channels(&self.url(), n).await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
    }
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
