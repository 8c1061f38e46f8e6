//! Write health: whether the store takes writes now, and why not.
//!
//! A full disk must not take the server down. sled answers a write that
//! cannot reach the disk by failing every later call (reads included) or by
//! waiting forever inside its flush, so the registry keeps sled away from a
//! full disk: a write is refused (UNAVAILABLE) while the filesystem has less
//! than `--min-free-space` free, and taken again once space is freed. When
//! sled fails all the same (another process filled the disk faster than the
//! check could see), nothing is acknowledged, writes are refused, and once
//! space is back and flushes still fail the server asks to be restarted:
//! a fresh sled recovers the durable state, which is every acknowledged
//! write.

use std::time::Duration;
use tokio::sync::watch;

/// The default `--min-free-space`: room for the largest request plus a
/// few of sled's 512 KiB log segments, with a wide margin.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 * 1024 * 1024;

/// Space counted as "back" for a store whose flushes failed, whatever
/// `--min-free-space` says (it may be 0).
const SPACE_BACK_FLOOR: u64 = 1024 * 1024;

/// How often the free space is looked at while nothing is written.
pub(super) const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a flush may take before it counts as failed. sled's flush
/// can wait forever on a full disk; the flush thread is then left behind
/// and the writers waiting for it are answered.
pub(super) const FLUSH_PATIENCE: Duration = Duration::from_secs(15);

/// The longest a write waits for its turn at the store before it is
/// refused: the write ahead of it is stuck in storage.
pub(super) const WRITE_PATIENCE: Duration = Duration::from_secs(10);

/// How long flushes may keep failing with space free before the store is
/// given up on until a restart. Long enough for a retried flush (every
/// 200 ms) to clear a passing fault.
pub(super) const RESTART_AFTER: Duration = Duration::from_secs(3);

/// Whether the store takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHealth {
    /// Writes are taken.
    Serving,
    /// The disk is (nearly) full: writes are refused until space is freed;
    /// they resume by themselves.
    LowSpace(String),
    /// The last flush failed; it is retried, and writes are refused until
    /// one succeeds.
    FlushFailing(String),
    /// Flushes keep failing with space free: this process cannot write to
    /// its store again. Reads go on; the server exits and must be
    /// restarted.
    RestartNeeded(String),
}

impl WriteHealth {
    /// Why writes are refused; `None` while they are taken.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            WriteHealth::Serving => None,
            WriteHealth::LowSpace(why)
            | WriteHealth::FlushFailing(why)
            | WriteHealth::RestartNeeded(why) => Some(why),
        }
    }
}

/// `promptreg_writes_refused{reason}`: 1 for the reason writes are refused
/// now (`low_space`, `flush_failing`, `restart_needed`), 0 for the others.
fn publish_refusal(state: &WriteHealth) {
    let now = match state {
        WriteHealth::Serving => "",
        WriteHealth::LowSpace(_) => "low_space",
        WriteHealth::FlushFailing(_) => "flush_failing",
        WriteHealth::RestartNeeded(_) => "restart_needed",
    };
    for reason in ["low_space", "flush_failing", "restart_needed"] {
        let on = if reason == now { 1.0 } else { 0.0 };
        metrics::gauge!(crate::telemetry::metrics::WRITES_REFUSED, "reason" => reason).set(on);
    }
}

/// The free-space rule.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpaceRule {
    pub min_free: u64,
}

impl SpaceRule {
    /// `Some(reason)` when `free` bytes are too few to write.
    pub fn low(&self, free: u64) -> Option<String> {
        (free < self.min_free).then(|| {
            format!(
                "the disk holding the data directory is full: {} free, below --min-free-space {}; \
                 writes are refused until space is freed (reads are served)",
                bytes(free),
                bytes(self.min_free)
            )
        })
    }

    /// Whether `free` bytes count as space returned after failed flushes.
    pub fn space_back(&self, free: u64) -> bool {
        free >= self.min_free.max(SPACE_BACK_FLOOR)
    }
}

/// The state and its subscribers.
pub(super) struct WriteGate {
    state: watch::Sender<WriteHealth>,
}

impl WriteGate {
    pub fn new() -> WriteGate {
        WriteGate {
            state: watch::Sender::new(WriteHealth::Serving),
        }
    }

    pub fn get(&self) -> WriteHealth {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<WriteHealth> {
        self.state.subscribe()
    }

    /// Sets the state, logging the change. `RestartNeeded` is final.
    pub fn set(&self, next: WriteHealth) {
        self.state.send_if_modified(|state| {
            if *state == next || matches!(state, WriteHealth::RestartNeeded(_)) {
                return false;
            }
            match &next {
                WriteHealth::Serving => tracing::warn!("writes are taken again"),
                WriteHealth::LowSpace(why) => tracing::error!(reason = %why, "writes refused"),
                WriteHealth::FlushFailing(why) => tracing::error!(reason = %why, "writes refused"),
                WriteHealth::RestartNeeded(why) => tracing::error!(reason = %why, "writes refused"),
            }
            publish_refusal(&next);
            *state = next;
            true
        });
    }

    /// Applies a free-space reading: a low disk refuses writes, space back
    /// takes them again (only after a low disk: a failing flush is cleared
    /// by a flush that succeeds).
    pub fn saw_free_space(&self, rule: SpaceRule, free: u64) {
        match (rule.low(free), self.get()) {
            (Some(why), WriteHealth::Serving | WriteHealth::LowSpace(_)) => {
                self.set(WriteHealth::LowSpace(why))
            }
            (None, WriteHealth::LowSpace(_)) => self.set(WriteHealth::Serving),
            _ => {}
        }
    }
}

/// Watches the free space: refuses writes on a low disk, takes them again
/// when space is freed, and gives up on a store whose flushes keep failing
/// although space is free (sled does not recover from a failed write).
pub(super) async fn run_space_monitor(registry: std::sync::Weak<super::Inner>) {
    let mut ticker = tokio::time::interval(SPACE_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_with_space_since: Option<std::time::Instant> = None;
    loop {
        ticker.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let store = inner.store.clone();
        drop(inner);
        let reading = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || store.free_space()),
        )
        .await;
        let Ok(Ok(Ok(free))) = reading else {
            continue;
        };
        let Some(inner) = registry.upgrade() else {
            return;
        };
        inner.gate.saw_free_space(inner.space, free);
        match inner.gate.get() {
            WriteHealth::FlushFailing(why) if inner.space.space_back(free) => {
                let since = *failing_with_space_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= RESTART_AFTER {
                    inner.gate.set(WriteHealth::RestartNeeded(format!(
                        "{why}; space is free again ({}) but the store still cannot write: \
                         restart the server to resume writes (every acknowledged write is on disk)",
                        bytes(free)
                    )));
                }
            }
            _ => failing_with_space_since = None,
        }
    }
}

/// `1.5 MiB`-style sizes for messages.
pub fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Parses `--min-free-space`: bytes, or a number with `KiB`, `MiB` or
/// `GiB` (also `K`, `M`, `G`).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("{raw:?} is not a size: write bytes, or a number with KiB, MiB or GiB")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1024,
        "M" | "MiB" => 1024 * 1024,
        "G" | "GiB" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{raw:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("512 K"), Ok(512 * 1024));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn low_space_refuses_and_space_back_resumes() {
        let gate = WriteGate::new();
        let rule = SpaceRule { min_free: 100 };
        gate.saw_free_space(rule, 50);
        assert!(matches!(gate.get(), WriteHealth::LowSpace(_)));
        gate.saw_free_space(rule, 150);
        assert_eq!(gate.get(), WriteHealth::Serving);
        gate.set(WriteHealth::RestartNeeded("gone".into()));
        gate.saw_free_space(rule, 50);
        gate.set(WriteHealth::Serving);
        assert!(matches!(gate.get(), WriteHealth::RestartNeeded(_)));
    }
}
