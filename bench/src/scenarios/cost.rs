//! `cost`: the unit costs the README's Cost section multiplies out, all on
//! one server, measured from /proc:
//!
//! - **storage**: the data directory's growth per published version (the
//!   benchmark's ~1 KB template, three variables) and per label move (a
//!   revision), over enough of each that the store's segment allocation
//!   averages out;
//! - **per connected agent**: resident memory, and the server's CPU and the
//!   loopback bytes while N agents (Watch with an agent id, on C
//!   connections) sit idle;
//! - **per promote**: the server's CPU and the loopback bytes of one label
//!   move delivered to all N agents and acknowledged by each (AckApplied);
//! - **per resolve**: the server's CPU and the loopback bytes of one
//!   GetVersion by label, at concurrency 64.
//!
//! Bytes are the loopback interface's received bytes (/proc/net/dev `lo`),
//! so they include TCP/IP headers and anything else on the machine's
//! loopback at the time (nothing else runs during the bench).

use super::rollout::{Fleet, LABEL, NAME, OTHER};
use super::{closed_loop, publish, set_label, wait_until, Options};
use crate::procfs::{self, round3, CpuMeter};
use crate::server::ServerProcess;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let rpc = server.channels(opts.rpc_connections).await?;
    let mut admin = RegistryClient::new(rpc[0].clone());
    let (versions, moves) = if opts.quick {
        (200, 500)
    } else {
        (2_000, 5_000)
    };

    // Storage: versions, then label moves between two of them.
    let dir = server.data_dir();
    let empty = dir_bytes(&dir)?;
    let mut v = (0, 0);
    for variant in 0..versions {
        let (version, _) = publish(&mut admin, "bench/cost-store", variant as u32).await?;
        v = (if variant == 0 { version } else { v.0 }, version);
    }
    let published = dir_bytes(&dir)?;
    for m in 0..moves {
        let to = if m % 2 == 0 { v.0 } else { v.1 };
        set_label(&mut admin, "bench/cost-store", "staging", to).await?;
    }
    let moved = dir_bytes(&dir)?;
    let storage = json!({
        "versions": versions,
        "moves": moves,
        "empty_bytes": empty,
        "after_versions_bytes": published,
        "after_moves_bytes": moved,
        "bytes_per_version": published.saturating_sub(empty) / versions,
        "bytes_per_revision": moved.saturating_sub(published) / moves,
    });

    // The fleet, as the rollout scenario's agents (no rollout here).
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;
    let (o1, _) = publish(&mut admin, OTHER, 1).await?;
    set_label(&mut admin, OTHER, LABEL, o1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = procfs::rss_bytes(server.pid())?;
    let channels = server.channels(opts.connections).await?;
    let n = opts.watchers.max(1);
    let fleet = Fleet::start(&channels, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_agents = procfs::rss_bytes(server.pid())?;

    // Idle: N agents connected, nothing changing.
    let idle_for = if opts.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(20)
    };
    let (idle_cpu, idle_bytes) = metered(server.pid(), async {
        tokio::time::sleep(idle_for).await;
        Ok(())
    })
    .await?;
    let idle_s = idle_cpu["wall_s"].as_f64().unwrap_or(f64::NAN);
    let idle_server = idle_cpu["server_cpu_s"].as_f64().unwrap_or(f64::NAN);

    // Promotes: each delivered to N agents and acknowledged by each.
    let promotes = opts.promotes.max(1);
    let (promote_cpu, promote_bytes) = metered(server.pid(), async {
        for m in 0..promotes {
            let to = if m % 2 == 0 { v2 } else { v1 };
            set_label(&mut admin, NAME, LABEL, to).await?;
            wait_until(
                "every agent's ack",
                Duration::from_secs(60),
                Duration::from_millis(1),
                || fleet.on(to) == n,
            )
            .await?;
        }
        Ok(())
    })
    .await?;
    fleet.stop().await?;
    let rest = |cpu: &Value| {
        let wall = cpu["wall_s"].as_f64().unwrap_or(0.0);
        let server = cpu["server_cpu_s"].as_f64().unwrap_or(0.0);
        (server - idle_server / idle_s * wall).max(0.0)
    };
    let promote_server = rest(&promote_cpu);

    // Resolves at concurrency 64 (agents gone, so nothing else runs).
    let (resolve_cpu, resolve_bytes, resolves) = {
        let chans = rpc.clone();
        let cpu = CpuMeter::start(Some(server.pid()));
        let bytes0 = lo_bytes()?;
        let load = closed_loop(64, Duration::ZERO, opts.duration, move |task, _| {
            let mut client = RegistryClient::new(chans[task % chans.len()].clone());
            async move {
                client
                    .get_version(pb::GetVersionRequest {
                        name: NAME.into(),
                        selector: Some(pb::get_version_request::Selector::Label(LABEL.into())),
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
        })
        .await;
        anyhow::ensure!(load.errors == 0, "resolves failed: {:?}", load.first_error);
        (cpu.stop(), lo_bytes()? - bytes0, load.latency.len() as u64)
    };
    let resolve_server = resolve_cpu["server_cpu_s"].as_f64().unwrap_or(0.0);

    let per = |total: f64, count: f64| round3(total / count);
    Ok(json!({
        "agents": n,
        "connections": channels.len(),
        "storage": storage,
        "rss_before_agents_mib": round3(rss_before as f64 / 1_048_576.0),
        "rss_with_agents_mib": round3(rss_agents as f64 / 1_048_576.0),
        "rss_bytes_per_agent": rss_agents.saturating_sub(rss_before) / n as u64,
        "idle": {
            "seconds": round3(idle_s),
            "cpu": idle_cpu,
            "lo_bytes": idle_bytes,
            "server_cpu_us_per_agent_s": per(idle_server * 1e6, idle_s * n as f64),
            "lo_bytes_per_agent_hour": per(idle_bytes as f64 * 3600.0, idle_s * n as f64),
        },
        "promote": {
            "promotes": promotes,
            "cpu": promote_cpu,
            "lo_bytes": promote_bytes,
            "server_cpu_ms_per_promote": per(promote_server * 1e3, promotes as f64),
            "server_cpu_us_per_agent_promote": per(promote_server * 1e6, (promotes * n) as f64),
            "lo_bytes_per_agent_promote": per(promote_bytes as f64, (promotes * n) as f64),
        },
        "resolve": {
            "resolves": resolves,
            "cpu": resolve_cpu,
            "lo_bytes": resolve_bytes,
            "server_cpu_us_per_resolve": per(resolve_server * 1e6, resolves as f64),
            "lo_bytes_per_resolve": per(resolve_bytes as f64, resolves as f64),
        },
        "correct": true,
    }))
}

/// The server's CPU and the loopback bytes while `work` runs.
async fn metered(
    pid: u32,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(Value, u64)> {
    let cpu = CpuMeter::start(Some(pid));
    let bytes0 = lo_bytes()?;
    work.await?;
    let bytes = lo_bytes()? - bytes0;
    Ok((cpu.stop(), bytes))
}

/// Bytes received on the loopback interface so far (/proc/net/dev).
fn lo_bytes() -> anyhow::Result<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev")?;
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .ok_or_else(|| anyhow::anyhow!("no lo in /proc/net/dev"))?;
    Ok(line
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::anyhow!("bad lo line: {line}"))?
        .parse()?)
}

/// The bytes of every file under `dir` (allocated blocks, so preallocated
/// but unwritten space is not counted).
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}
