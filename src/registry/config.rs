//! How the registry is set up: [`RegistryConfig`] and the cache bounds.

use super::watch::WatchConfig;
use super::{disk, provenance};
use crate::domain::Limits;
use std::path::PathBuf;

/// How the registry is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// This server's local files; on sled also the store itself.
    pub data_dir: PathBuf,
    /// Where the state lives (`--store`).
    pub store: StoreBackend,
    pub limits: Limits,
    pub watch: WatchConfig,
    pub signing_key: provenance::KeySource,
    /// Encrypt version content at rest with the 32-byte key in this file.
    pub encryption_key_file: Option<PathBuf>,
    /// How much memory the caches may hold.
    pub caches: CacheConfig,
    /// Writes are refused while the data directory's filesystem has fewer
    /// bytes free (`--min-free-space`).
    pub min_free_space: u64,
    /// Whether requests must authenticate (default on; off is
    /// `serve --insecure-no-auth`, loopback only).
    pub auth: bool,
    /// How long a promotion request waits for its approvals, unless its
    /// policy says otherwise (`--request-ttl`, default 24 h).
    pub request_ttl: std::time::Duration,
    /// How often running rollouts are decided (`--rollout-eval-interval`,
    /// default 30 s).
    pub rollout_eval_interval: std::time::Duration,
}

/// The storage backend (`serve --store`).
#[derive(Debug, Clone, Default)]
pub enum StoreBackend {
    /// sled in `DATA_DIR/sled/`.
    #[default]
    Sled,
    /// An etcd cluster.
    Etcd(crate::store::etcd::EtcdConfig),
}

/// The memory bounds of the two caches that grow with the data. Everything
/// else in memory is bounded by the load (streams, agents), not the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// sled's page cache, in bytes (default 32 MiB; `--store-cache-mb`).
    pub store_bytes: u64,
    /// Decoded versions for resolves, in estimated bytes (default 16 MiB;
    /// `--version-cache-mb`).
    pub version_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            store_bytes: crate::store::DEFAULT_CACHE_BYTES,
            version_bytes: 16 * 1024 * 1024,
        }
    }
}

impl RegistryConfig {
    /// The defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> RegistryConfig {
        RegistryConfig {
            data_dir: data_dir.into(),
            store: StoreBackend::Sled,
            limits: Limits::default(),
            watch: WatchConfig::default(),
            signing_key: provenance::KeySource::DataDir,
            encryption_key_file: None,
            caches: CacheConfig::default(),
            min_free_space: disk::DEFAULT_MIN_FREE_SPACE,
            auth: true,
            request_ttl: std::time::Duration::from_secs(
                crate::domain::release::DEFAULT_REQUEST_TTL_SECS,
            ),
            rollout_eval_interval: std::time::Duration::from_secs(30),
        }
    }
}
