//! What /proc says about a process: resident memory and CPU time, and a
//! meter that charts the CPU used by the harness and by the server under test
//! during one measurement, so a client-bound cell is visible in the results.

use serde_json::{json, Value};
use std::time::Instant;

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The most `pid` was ever resident, in bytes (`VmHWM`).
pub fn hwm_bytes(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("bad {field} line: {line}"))?
        .parse()?;
    Ok(kb * 1024)
}

/// User + system CPU seconds of a process (`None`: this process), from
/// fields 14 and 15 of /proc/PID/stat.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may hold spaces.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// The state letter of a process (field 3 of /proc/PID/stat: `R`, `S`,
/// `Z` for a zombie, ...), or `None` when there is no such process.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

/// CPU used by the harness, by one server process, and by everything else
/// on the machine over a stretch of time.
pub struct CpuMeter {
    server: Option<u32>,
    start: Instant,
    harness0: f64,
    server0: f64,
    machine0: f64,
}

impl CpuMeter {
    pub fn start(server: Option<u32>) -> Self {
        let server0 = server.map(|p| cpu_seconds(Some(p))).unwrap_or(0.0);
        CpuMeter {
            server,
            ..Self::start_at(server0)
        }
    }

    /// For a server that is restarted during the measurement, so its pid
    /// changes: `server_cpu_s` is its CPU time summed over every process so
    /// far (`ServerProcess::cpu_seconds`). End with `stop_at`.
    pub fn start_at(server_cpu_s: f64) -> Self {
        CpuMeter {
            server: None,
            start: Instant::now(),
            harness0: cpu_seconds(None),
            server0: server_cpu_s,
            machine0: machine_busy_seconds(),
        }
    }

    /// `{wall_s, harness_cpu_s, server_cpu_s, harness_cores, server_cores,
    /// other_cores}`: `*_cores` is CPU seconds per wall second (2.0 = both
    /// cores busy); `other_cores` is every other process on the machine.
    pub fn stop(&self) -> Value {
        let server = self.server.map(|p| cpu_seconds(Some(p))).unwrap_or(0.0);
        self.stop_at(server)
    }

    /// `stop` for a meter begun with `start_at`: `server_cpu_s` is the
    /// server's summed CPU time now.
    pub fn stop_at(&self, server_cpu_s: f64) -> Value {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let harness = cpu_seconds(None) - self.harness0;
        let server = (server_cpu_s - self.server0).max(0.0);
        let other = (machine_busy_seconds() - self.machine0 - harness - server).max(0.0);
        cpu_json(wall, harness, server, other)
    }
}

/// The meter's answer (see `CpuMeter::stop`) from seconds: wall time, and
/// CPU time of the harness, the server and every other process.
pub fn cpu_json(wall: f64, harness: f64, server: f64, other: f64) -> Value {
    let wall = wall.max(1e-9);
    json!({
        "wall_s": round3(wall),
        "harness_cpu_s": round3(harness),
        "server_cpu_s": round3(server),
        "harness_cores": round3(harness / wall),
        "server_cores": round3(server / wall),
        "other_cores": round3(other / wall),
    })
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
