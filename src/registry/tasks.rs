//! Background upkeep: change-log compaction, housekeeping and the gauges.

use super::{fleet, Inner, Registry, Result};
use std::sync::Weak;

impl Registry {
    /// Compacts the change log: removes the records that are both older than
    /// the newest `retention_revisions` and older than `retention`. Returns
    /// the compact revision afterwards. Label history and versions are never
    /// touched.
    pub fn compact_log(&self) -> Result<u64> {
        let config = self.inner.hub.config();
        let store = self.store();
        let head = self.inner.hub.published();
        // The head record always stays: start-up checks it.
        let keep_from_revision = head.saturating_sub(config.retention_revisions.max(1));
        let retention = i64::try_from(config.retention.as_micros()).unwrap_or(i64::MAX);
        let cutoff_time = crate::time::now_micros().saturating_sub(retention);
        let mut upto = store.compact_revision()?;
        loop {
            let page = store.revisions(upto + 1, 1024)?;
            let mut advanced = false;
            for revision in &page {
                if revision.revision > keep_from_revision || revision.time >= cutoff_time {
                    break;
                }
                upto = revision.revision;
                advanced = true;
            }
            if !advanced || page.len() < 1024 {
                break;
            }
        }
        if upto > store.compact_revision()? {
            let removed = store.compact(upto)?;
            self.inner.hub.compacted_upto(upto);
            tracing::info!(compact_revision = upto, removed, "change log compacted");
        }
        Ok(upto)
    }
}

/// Periodic upkeep: change-log compaction and forgetting departed agents.
pub(super) async fn run_housekeeping(registry: Weak<Inner>, interval: std::time::Duration) {
    every(registry, interval, |registry| {
        if let Err(error) = registry.compact_log() {
            tracing::error!(%error, "change-log compaction failed");
        }
        registry.expire_agents();
    })
    .await;
}

/// Refreshes the gauges that are states rather than events: fleet counts
/// per label and the store's size.
pub(super) async fn run_gauges(registry: Weak<Inner>, interval: std::time::Duration) {
    every(registry, interval, refresh_gauges).await;
}

/// Runs `job` every `interval` until the registry is gone. The job does
/// storage work, so it runs off the async workers: a store stuck on a
/// full disk holds this task, never the server.
async fn every(registry: Weak<Inner>, interval: std::time::Duration, job: fn(&Registry)) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let registry = Registry { inner };
        let _ = tokio::task::spawn_blocking(move || job(&registry)).await;
    }
}

/// One refresh of those gauges (blocking: it reads the store).
fn refresh_gauges(registry: &Registry) {
    use crate::telemetry::metrics::{
        CACHE_BYTES, CACHE_CAPACITY, CACHE_ENTRIES, FLEET_AGENTS, STORE_SIZE,
    };
    if let Ok(size) = registry.store().size_on_disk() {
        metrics::gauge!(STORE_SIZE).set(size as f64);
    }
    for (cache, usage) in [
        ("version", registry.version_cache_usage()),
        ("label", registry.label_cache_usage()),
    ] {
        metrics::gauge!(CACHE_ENTRIES, "cache" => cache).set(usage.entries as f64);
        metrics::gauge!(CACHE_CAPACITY, "cache" => cache).set(usage.capacity as f64);
        if cache == "version" {
            metrics::gauge!(CACHE_BYTES, "cache" => cache).set(usage.bytes as f64);
        }
    }
    let Ok(rows) = registry.fleet_status(None, None) else {
        return;
    };
    let mut counts: std::collections::BTreeMap<(String, String), fleet::FleetCounts> =
        Default::default();
    for row in rows {
        counts
            .entry((row.name.to_string(), row.label.to_string()))
            .or_default()
            .add(row.state());
    }
    for ((prompt, label), by_state) in counts {
        for state in crate::domain::AgentState::ALL {
            let (state, count) = (state.as_str(), by_state.count(state));
            metrics::gauge!(FLEET_AGENTS, "prompt" => prompt.clone(), "label" => label.clone(), "state" => state)
                .set(f64::from(count));
        }
    }
}
