//! etcd 3.4 (Debian's `etcd-server`) as the reference: started as a child
//! process on loopback with free ports and a temporary data directory, and
//! reached through the `etcd-client` crate (the same tonic as promptreg).

use crate::server::{free_port, stop_child};
use anyhow::{bail, Context};
use etcd_client::Client;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd, stopped on drop.
pub struct EtcdProcess {
    child: Child,
    pub url: String,
    _data_dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// Starts `bin` and waits (at most 30 s) until it answers a Put.
    pub async fn start(bin: &str) -> anyhow::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("promptreg-bench-etcd-")
            .tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(data_dir.path().join("etcd.log"))?;
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .args(["--name", "bench"])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {bin} (apt-get install etcd-server)"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            crate::server::ensure_alive(&mut child, "etcd")?;
            if let Ok(mut client) = Client::connect([url.as_str()], None).await {
                if client.put("/bench/ready", "1", None).await.is_ok() {
                    break;
                }
            }
            if Instant::now() > deadline {
                stop_child(&mut child, Duration::from_secs(5));
                bail!("etcd did not answer on {url} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(EtcdProcess {
            child,
            url,
            _data_dir: data_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `n` clients, each with its own HTTP/2 connection.
    pub async fn clients(&self, n: usize) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            clients.push(Client::connect([self.url.as_str()], None).await?);
        }
        Ok(clients)
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}
