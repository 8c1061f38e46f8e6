//! `serve --store`: the embedded store (sled, the default) or an etcd
//! cluster.

use crate::registry::StoreBackend;
use crate::store::etcd::{EtcdConfig, EtcdTls};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded sled in DATA_DIR/sled/ (one server per data directory).
    Sled,
    /// An existing etcd v3 cluster (etcd 3.4 or later), every key under
    /// --etcd-prefix. DATA_DIR then holds only this server's local files
    /// (its lock, admin.token, a generated signing key).
    Etcd,
}

/// Where the registry keeps its state.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The storage backend.
    #[arg(long, env = "PROMPTREG_STORE", value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,
    /// The etcd members' client URLs, comma-separated
    /// (`http://10.0.0.1:2379,…`; `https://` with --etcd-ca). Needed with
    /// `--store etcd`.
    #[arg(
        long,
        env = "PROMPTREG_ETCD_ENDPOINTS",
        value_name = "URL,URL,…",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// Every key of the registry lives under this prefix in etcd; several
    /// registries can share a cluster under different prefixes.
    #[arg(long, env = "PROMPTREG_ETCD_PREFIX", default_value = "/promptreg/")]
    pub etcd_prefix: String,
    /// The CA (PEM) that signed the etcd members' certificates: TLS towards
    /// etcd.
    #[arg(long, env = "PROMPTREG_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's client-certificate auth; needs
    /// --etcd-key and --etcd-ca.
    #[arg(long, env = "PROMPTREG_ETCD_CERT", value_name = "FILE", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "PROMPTREG_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// How long one storage request may take over every etcd member tried,
    /// before it answers UNAVAILABLE (a lost quorum shows after this long).
    #[arg(long, env = "PROMPTREG_ETCD_TIMEOUT", default_value = "3s", value_parser = super::serve::parse_duration)]
    pub etcd_timeout: Duration,
}

/// The most a template may hold on etcd: a version must fit one etcd
/// request (1.5 MiB by default) with its metadata and indexes.
pub const ETCD_MAX_TEMPLATE_BYTES: usize = 1024 * 1024;

impl StoreArgs {
    pub fn to_backend(&self, max_template_bytes: usize) -> Result<StoreBackend, String> {
        let etcd_flags = !self.etcd_endpoints.is_empty() || self.etcd_ca.is_some();
        if self.store == StoreKind::Sled {
            if etcd_flags {
                return Err("--etcd-endpoints and --etcd-ca need --store etcd".into());
            }
            return Ok(StoreBackend::Sled);
        }
        if self.etcd_endpoints.is_empty() {
            return Err("--store etcd needs --etcd-endpoints URL,URL,…".into());
        }
        let tls = self.etcd_ca.clone().map(|ca| EtcdTls {
            ca,
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoints = Vec::new();
        for raw in &self.etcd_endpoints {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err("--etcd-endpoints has an empty entry".into());
            }
            endpoints.push(if raw.contains("://") {
                raw.to_string()
            } else {
                format!("{scheme}://{raw}")
            });
        }
        if self.etcd_prefix.is_empty() || self.etcd_prefix.contains('\0') {
            return Err("--etcd-prefix must be a non-empty string without NUL bytes".into());
        }
        if self.etcd_timeout < Duration::from_millis(100)
            || self.etcd_timeout > Duration::from_secs(60)
        {
            return Err("--etcd-timeout must be 100ms to 60s".into());
        }
        if max_template_bytes > ETCD_MAX_TEMPLATE_BYTES {
            return Err(format!(
                "--max-template-bytes is {max_template_bytes}; with --store etcd the most is \
                 {ETCD_MAX_TEMPLATE_BYTES} (a version must fit one etcd request)"
            ));
        }
        Ok(StoreBackend::Etcd(EtcdConfig {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            tls,
            timeout: self.etcd_timeout,
        }))
    }
}
