//! `promptreg serve`: configuration, logging, signals.

use crate::domain::Limits;
use crate::registry::provenance::KeySource;
use crate::registry::watch::WatchConfig;
use crate::registry::{CacheConfig, RegistryConfig};
use crate::server::{ServerError, TlsFiles};
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to serve gRPC on.
    #[arg(long, env = "PROMPTREG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The data directory (created if missing; one server per directory).
    #[arg(long, env = "PROMPTREG_DATA_DIR", default_value = "./promptreg-data")]
    pub data_dir: PathBuf,
    /// Log format on stderr. Levels come from RUST_LOG (default info).
    #[arg(long, env = "PROMPTREG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics on this address, at /metrics (off by default).
    #[arg(long, env = "PROMPTREG_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Sign versions with this Ed25519 PKCS#8 key (DER, or PEM as `openssl
    /// genpkey -algorithm ed25519` writes; readable by its owner only)
    /// instead of one generated into DATA_DIR/keys/ (then rotate by
    /// restarting with a new file).
    #[arg(long, env = "PROMPTREG_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Encrypt templates, chat messages and model config at rest (AES-256-GCM)
    /// with the 32-byte key in this file (`promptreg keys gen-data-key FILE`
    /// makes one). An existing unencrypted store is encrypted on start.
    #[arg(long, env = "PROMPTREG_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Refuse writes (UNAVAILABLE; health NOT_SERVING for
    /// `promptreg.v1.Registry.writes`) while the data directory's
    /// filesystem has less than this free: bytes, or with KiB, MiB, GiB.
    /// Writes resume by themselves when space is freed.
    #[arg(long, env = "PROMPTREG_MIN_FREE_SPACE", default_value = "64MiB", value_parser = crate::registry::disk::parse_size)]
    pub min_free_space: u64,
    /// Turn authentication off: every caller is an anonymous admin, recorded
    /// as `anonymous`. Refused unless --listen is a loopback address. For
    /// local experiments only; by default a first start writes an admin
    /// token to DATA_DIR/admin.token.
    #[arg(long, env = "PROMPTREG_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// How long a promotion request (a promote of a label whose policy asks
    /// for approvals) waits for them before it expires, unless its policy
    /// sets its own (`policy set --request-ttl`).
    #[arg(long, env = "PROMPTREG_REQUEST_TTL", default_value = "24h", value_parser = parse_duration)]
    pub request_ttl: Duration,
    /// How often running rollouts are evaluated: guardrail breaches abort,
    /// steps whose bake is over advance, extend or abort (see README,
    /// Progressive rollouts). 100ms to 1h.
    #[arg(long, env = "PROMPTREG_ROLLOUT_EVAL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub rollout_eval_interval: Duration,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reloaded on SIGHUP and when the file changes.
    #[arg(
        long,
        env = "PROMPTREG_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "PROMPTREG_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS. A
    /// certificate's principal is its first URI SAN, else its first DNS
    /// SAN, else its CN; give it roles with `promptreg tokens create NAME
    /// --subject PRINCIPAL --role ROLE`. Needs --tls-cert.
    #[arg(
        long,
        env = "PROMPTREG_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    pub store: super::serve_store::StoreArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub watch: WatchArgs,
    #[command(flatten)]
    pub caches: CacheArgs,
}

/// Memory for caches; see README, Operations, Memory.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// The storage engine's (sled's) page cache, in MiB. Store reads that
    /// miss it go to the OS page cache.
    #[arg(long, env = "PROMPTREG_STORE_CACHE_MB", value_name = "MIB", default_value_t = CacheConfig::default().store_bytes / MIB)]
    pub store_cache_mb: u64,
    /// Decoded versions kept for resolves, in MiB (estimated: content,
    /// metadata and its wire encoding). Least recently used out first.
    #[arg(long, env = "PROMPTREG_VERSION_CACHE_MB", value_name = "MIB", default_value_t = CacheConfig::default().version_bytes as u64 / MIB)]
    pub version_cache_mb: u64,
}

const MIB: u64 = 1024 * 1024;
/// The most either cache flag accepts: 1 TiB, far above any sane setting,
/// so a typo in units is caught rather than overflowing.
const MAX_CACHE_MB: u64 = 1024 * 1024;

impl CacheArgs {
    fn to_config(&self) -> Result<CacheConfig, String> {
        for (flag, mb) in [
            ("--store-cache-mb", self.store_cache_mb),
            ("--version-cache-mb", self.version_cache_mb),
        ] {
            if mb == 0 {
                return Err(format!("{flag} must be at least 1 (MiB)"));
            }
            if mb > MAX_CACHE_MB {
                return Err(format!(
                    "{flag} is {mb} MiB; the most is {MAX_CACHE_MB} (1 TiB)"
                ));
            }
        }
        let version_bytes = usize::try_from(self.version_cache_mb * MIB)
            .map_err(|_| "--version-cache-mb is more than this machine can address".to_string())?;
        Ok(CacheConfig {
            store_bytes: self.store_cache_mb * MIB,
            version_bytes,
        })
    }
}

/// Watch streams, change-log retention and fleet tracking.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// How often every watch stream gets a progress notification (also a
    /// heartbeat through proxies and load balancers).
    #[arg(long, env = "PROMPTREG_PROGRESS_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// The change log keeps at least this many of the newest revisions for
    /// watch resumes ...
    #[arg(long, env = "PROMPTREG_LOG_RETENTION_REVISIONS", default_value_t = WatchConfig::default().retention_revisions)]
    pub log_retention_revisions: u64,
    /// ... and at least this much time. Older records are compacted; label
    /// history and versions are never compacted.
    #[arg(long, env = "PROMPTREG_LOG_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub log_retention: Duration,
    /// Most watches open at once (each Watch stream, and each watch of a
    /// WatchMany stream); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROMPTREG_MAX_WATCHERS", default_value_t = WatchConfig::default().max_watchers)]
    pub max_watchers: usize,
    /// Most snapshots (watches from revision 0) being built at once; more
    /// wait up to 5 s for a place, then end RESOURCE_EXHAUSTED (clients
    /// back off and retry).
    #[arg(long, env = "PROMPTREG_MAX_SNAPSHOTS", default_value_t = WatchConfig::default().max_snapshots)]
    pub max_snapshots: usize,
    /// How often change-log compaction runs.
    #[arg(long, env = "PROMPTREG_COMPACTION_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub compaction_interval: Duration,
    /// Agents without a watch stream for longer than this are forgotten by
    /// fleet status.
    #[arg(long, env = "PROMPTREG_AGENT_TTL", default_value = "1h", value_parser = parse_duration)]
    pub agent_ttl: Duration,
}

pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    crate::time::parse_duration(raw)
}

impl WatchArgs {
    fn to_config(&self) -> Result<WatchConfig, String> {
        if self.progress_interval.is_zero() {
            return Err("--progress-interval must be more than 0".into());
        }
        if self.compaction_interval.is_zero() {
            return Err("--compaction-interval must be more than 0".into());
        }
        Ok(WatchConfig {
            progress_interval: self.progress_interval,
            retention_revisions: self.log_retention_revisions,
            retention: self.log_retention,
            compaction_interval: self.compaction_interval,
            agent_ttl: self.agent_ttl,
            max_watchers: self.max_watchers,
            max_snapshots: self.max_snapshots.max(1),
            ..WatchConfig::default()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Request limits; over a limit a request gets INVALID_ARGUMENT naming the
/// field and the limit.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest prompt name, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_NAME_BYTES", default_value_t = Limits::default().max_name_bytes)]
    pub max_name_bytes: usize,
    /// Largest template (text, or all chat contents together), in bytes.
    #[arg(long, env = "PROMPTREG_MAX_TEMPLATE_BYTES", default_value_t = Limits::default().max_template_bytes)]
    pub max_template_bytes: usize,
    /// Most chat messages in one template.
    #[arg(long, env = "PROMPTREG_MAX_CHAT_MESSAGES", default_value_t = Limits::default().max_chat_messages)]
    pub max_chat_messages: usize,
    /// Most declared variables per version.
    #[arg(long, env = "PROMPTREG_MAX_VARIABLES", default_value_t = Limits::default().max_variables)]
    pub max_variables: usize,
    /// Longest variable name, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_VARIABLE_NAME_BYTES", default_value_t = Limits::default().max_variable_name_bytes)]
    pub max_variable_name_bytes: usize,
    /// Most tags per version.
    #[arg(long, env = "PROMPTREG_MAX_TAGS", default_value_t = Limits::default().max_tags)]
    pub max_tags: usize,
    /// Longest tag value, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_TAG_VALUE_BYTES", default_value_t = Limits::default().max_tag_value_bytes)]
    pub max_tag_value_bytes: usize,
    /// Largest model config JSON, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_MODEL_CONFIG_BYTES", default_value_t = Limits::default().max_model_config_bytes)]
    pub max_model_config_bytes: usize,
    /// Longest author or actor, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_ACTOR_BYTES", default_value_t = Limits::default().max_actor_bytes)]
    pub max_actor_bytes: usize,
    /// Largest request message, in bytes (over it: RESOURCE_EXHAUSTED).
    #[arg(long, env = "PROMPTREG_MAX_REQUEST_BYTES", default_value_t = Limits::default().max_request_bytes)]
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams (RPCs, watches) per client connection.
    #[arg(long, env = "PROMPTREG_MAX_STREAMS_PER_CONNECTION", default_value_t = Limits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// Longest description or reason, in bytes.
    #[arg(long, env = "PROMPTREG_MAX_TEXT_BYTES", default_value_t = Limits::default().max_text_bytes)]
    pub max_text_bytes: usize,
}

impl LimitArgs {
    fn to_limits(&self) -> Result<Limits, String> {
        let limits = Limits {
            max_name_bytes: self.max_name_bytes,
            max_template_bytes: self.max_template_bytes,
            max_chat_messages: self.max_chat_messages,
            max_variables: self.max_variables,
            max_variable_name_bytes: self.max_variable_name_bytes,
            max_tags: self.max_tags,
            max_tag_value_bytes: self.max_tag_value_bytes,
            max_model_config_bytes: self.max_model_config_bytes,
            max_actor_bytes: self.max_actor_bytes,
            max_text_bytes: self.max_text_bytes,
            max_request_bytes: self.max_request_bytes,
            max_streams_per_connection: self.max_streams_per_connection,
        };
        let checks = [
            ("--max-name-bytes", limits.max_name_bytes),
            ("--max-template-bytes", limits.max_template_bytes),
            ("--max-chat-messages", limits.max_chat_messages),
            ("--max-variable-name-bytes", limits.max_variable_name_bytes),
            ("--max-actor-bytes", limits.max_actor_bytes),
            ("--max-text-bytes", limits.max_text_bytes),
            ("--max-model-config-bytes", limits.max_model_config_bytes),
            ("--max-request-bytes", limits.max_request_bytes),
            (
                "--max-streams-per-connection",
                limits.max_streams_per_connection as usize,
            ),
        ];
        if let Some((flag, _)) = checks.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        if limits.max_name_bytes > 1024 {
            return Err("--max-name-bytes must be at most 1024".to_string());
        }
        Ok(limits)
    }
}

/// Runs the server until SIGINT or SIGTERM; returns the process exit code.
pub async fn run_serve(args: ServeArgs) -> i32 {
    let _telemetry = crate::telemetry::init(match args.log_format {
        LogFormat::Text => crate::telemetry::LogStyle::Text,
        LogFormat::Json => crate::telemetry::LogStyle::Json,
    });
    if let Some(address) = args.metrics_listen {
        if let Err(message) = crate::telemetry::metrics::install(address) {
            eprintln!("error: {message}");
            return 1;
        }
        tracing::info!(metrics = %address, "serving Prometheus metrics at /metrics");
    }
    let settings = args
        .limits
        .to_limits()
        .and_then(|l| Ok((l, args.watch.to_config()?, args.caches.to_config()?)));
    let (limits, watch, caches) = match settings {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return super::exit::USAGE;
        }
    };
    if args.insecure_no_auth && !args.listen.ip().is_loopback() {
        eprintln!(
            "error: --insecure-no-auth is refused on {}: without authentication anyone who reaches the port \
             can move production; listen on a loopback address (127.0.0.1, ::1) or leave authentication on",
            args.listen
        );
        return super::exit::USAGE;
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {} (--listen): {e}", args.listen);
            return 1;
        }
    };
    if args.request_ttl.is_zero()
        || args.request_ttl.as_secs() > crate::domain::release::MAX_REQUEST_TTL_SECS
    {
        eprintln!("error: --request-ttl must be more than 0 and at most 90 days");
        return super::exit::USAGE;
    }
    if args.rollout_eval_interval < Duration::from_millis(100)
        || args.rollout_eval_interval > Duration::from_secs(3600)
    {
        eprintln!("error: --rollout-eval-interval must be 100ms to 1h");
        return super::exit::USAGE;
    }
    let store = match args.store.to_backend(limits.max_template_bytes) {
        Ok(store) => store,
        Err(message) => {
            eprintln!("error: {message}");
            return super::exit::USAGE;
        }
    };
    let config = RegistryConfig {
        data_dir: args.data_dir,
        store,
        limits,
        watch,
        encryption_key_file: args.encryption_key_file,
        caches,
        min_free_space: args.min_free_space,
        auth: !args.insecure_no_auth,
        request_ttl: args.request_ttl,
        rollout_eval_interval: args.rollout_eval_interval,
        signing_key: match args.signing_key {
            Some(file) => KeySource::File(file),
            None => KeySource::DataDir,
        },
    };
    let tls = args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles {
        cert,
        key,
        client_ca: args.tls_client_ca,
    });
    match crate::server::run(listener, config, tls, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e @ ServerError::Tls(_)) => {
            eprintln!("error: {e}");
            super::exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
    // A stop must end even when a storage call never returns (sled on a
    // full disk) or a task will not let go: past the deadline the process
    // exits as it is. Every acknowledged write is durable already.
    let deadline = crate::server::STOP_DEADLINE;
    let _ = std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(?deadline, "the stop did not finish in time; exiting now");
            eprintln!("error: the stop did not finish within {deadline:?}; exited without waiting further");
            std::process::exit(1);
        });
}
