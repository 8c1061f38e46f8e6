//! Prometheus metrics through the `metrics` facade. Without
//! `--metrics-listen` no recorder is installed and every macro is a no-op.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;

/// RPCs served, by `method` and gRPC `code`.
pub const RPC_REQUESTS: &str = "promptreg_rpc_requests_total";
/// RPC latency in seconds (to the response headers for streams), by `method`.
pub const RPC_DURATION: &str = "promptreg_rpc_duration_seconds";
/// Watch streams open now.
pub const WATCH_STREAMS: &str = "promptreg_watch_streams";
/// Change batches sent to watchers.
pub const WATCH_BATCHES: &str = "promptreg_watch_batches_sent_total";
/// Commit → queued to a watcher, in seconds, one sample per watcher and batch.
pub const WATCH_FANOUT: &str = "promptreg_watch_fanout_seconds";
/// Times a slow watcher overflowed its buffer and caught up from the log.
pub const WATCH_OVERFLOWS: &str = "promptreg_watch_overflows_total";
/// Agents per `prompt`, `label` and `state` (in_sync, stale, disconnected).
pub const FLEET_AGENTS: &str = "promptreg_fleet_agents";
/// The store's size on disk, in bytes.
pub const STORE_SIZE: &str = "promptreg_store_size_bytes";
/// What an in-memory cache holds now, by `cache` (`version`, `label`): its
/// estimated bytes (the version cache only) ...
pub const CACHE_BYTES: &str = "promptreg_cache_bytes";
/// ... its entries ...
pub const CACHE_ENTRIES: &str = "promptreg_cache_entries";
/// ... and its bound (bytes for `version`, entries for `label`).
pub const CACHE_CAPACITY: &str = "promptreg_cache_capacity";
/// 1 for the reason writes are refused now, by `reason` (`low_space`,
/// `flush_failing`, `restart_needed`); all 0 while writes are taken.
pub const WRITES_REFUSED: &str = "promptreg_writes_refused";
/// Group-commit flush latency, in seconds.
pub const FLUSH_DURATION: &str = "promptreg_flush_duration_seconds";
/// Requests refused UNAUTHENTICATED (no, malformed, unknown, expired or
/// revoked credentials).
pub const UNAUTHENTICATED: &str = "promptreg_unauthenticated_total";
/// Requests refused PERMISSION_DENIED, by `action`.
pub const DENIED: &str = "promptreg_denied_total";
/// Label moves by `label` and `kind` (promote, rollback, remove).
pub const LABEL_MOVES: &str = "promptreg_label_moves_total";
/// Outcome reports taken, by `arm` (stable, candidate, unassigned).
pub const ROLLOUT_REPORTS: &str = "promptreg_rollout_reports_total";
/// Each active rollout's candidate weight in basis points, by `prompt` and
/// `label` (0 once it has ended: aborted, or completed at 10000 then 0).
pub const ROLLOUT_WEIGHT: &str = "promptreg_rollout_weight_bp";
/// 1 for the rollout's current `state` (running, paused, aborted,
/// completed), 0 for the others, by `prompt` and `label`.
pub const ROLLOUT_STATE: &str = "promptreg_rollout_state";
/// The current step's error rate per `arm`, by `prompt` and `label` (NaN
/// without requests).
pub const ROLLOUT_ERROR_RATE: &str = "promptreg_rollout_error_rate";
/// The current step's requests per `arm`, by `prompt` and `label`.
pub const ROLLOUT_REQUESTS: &str = "promptreg_rollout_requests";
/// Rollout decisions taken, by `decision` (advance, extend, pause, abort,
/// complete) and `actor` (guardrail, or by hand: operator).
pub const ROLLOUT_DECISIONS: &str = "promptreg_rollout_decisions_total";

/// The metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {address} (--metrics-listen): {source}")]
pub struct MetricsError {
    pub address: SocketAddr,
    #[source]
    pub source: metrics_exporter_prometheus::BuildError,
}

/// Serves `/metrics` on `address`. Must run inside the tokio runtime.
pub fn install(address: SocketAddr) -> Result<(), MetricsError> {
    const LATENCY_BUCKETS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|builder| builder.install())
        .map_err(|source| MetricsError { address, source })
}
