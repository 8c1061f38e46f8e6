//! The etcd members behind the engine: one lazily connected gRPC channel
//! per endpoint, tried in turn until a request's deadline, on the engine's
//! own runtime.

use super::super::{Result, StoreError};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/etcd/etcdserverpb.rs"));
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key of the registry lives under it.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// How long one storage request may take, over every endpoint tried.
    pub timeout: Duration,
}

/// Client TLS towards etcd: the CA that signed the members' certificates,
/// and a client certificate when the cluster asks for one.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How long a read keeps being served serializable after the cluster could
/// not serve a linearizable one.
const DEGRADED_FOR: Duration = Duration::from_secs(2);
/// The part of the deadline a linearizable read may use before it falls back.
const LINEARIZABLE_BUDGET: Duration = Duration::from_millis(1500);

pub struct Cluster {
    runtime: Option<tokio::runtime::Runtime>,
    channels: Vec<(String, Channel)>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    timeout: Duration,
    /// Until then, reads go straight to serializable.
    degraded_until: Mutex<Option<Instant>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Dropped from async code too: never wait for the runtime here.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Engine(message)
}

impl Cluster {
    pub fn connect(config: &EtcdConfig) -> Result<Cluster> {
        if config.endpoints.is_empty() {
            return Err(config_error("no etcd endpoint given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(StoreError::Io)?;
        let tls = match &config.tls {
            Some(tls) => Some(tls_config(tls)?),
            None => None,
        };
        let _inside = runtime.enter();
        let mut channels = Vec::new();
        for url in &config.endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| config_error(format!("etcd endpoint {url:?} is not a URL: {e}")))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            if let Some(tls) = &tls {
                if url.starts_with("http://") {
                    return Err(config_error(format!(
                        "etcd endpoint {url} is plain http but --etcd-ca was given: use https://"
                    )));
                }
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
                    config_error(format!("etcd endpoint {url}: TLS setup failed: {e}"))
                })?;
            }
            channels.push((url.clone(), endpoint.connect_lazy()));
        }
        drop(_inside);
        Ok(Cluster {
            runtime: Some(runtime),
            channels,
            current: AtomicUsize::new(0),
            timeout: config.timeout,
            degraded_until: Mutex::new(None),
        })
    }

    /// Runs `call` against one endpoint after another, from the one that
    /// answered last, until one answers or `budget` is over.
    fn run<T, F, Fut>(&self, what: &str, budget: Duration, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Channel) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, tonic::Status>> + Send,
    {
        let Some(runtime) = &self.runtime else {
            return Err(unavailable(what, "the engine is shut down".into()));
        };
        let channels = self.channels.clone();
        let start = self.current.load(Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + budget;
            let mut last_error = String::from("no endpoint answered");
            let mut attempt = 0usize;
            let outcome = loop {
                let index = (start + attempt) % channels.len();
                let (url, channel) = &channels[index];
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break Err(last_error);
                }
                match tokio::time::timeout(left, call(channel.clone())).await {
                    Ok(Ok(answer)) => break Ok((index, answer)),
                    Ok(Err(status)) if retryable(&status) => {
                        last_error = format!("{url}: {}", status.message());
                    }
                    Ok(Err(status)) => break Err(format!("{url}: {status}")),
                    Err(_) => last_error = format!("{url}: no answer in time"),
                }
                attempt += 1;
                if attempt.is_multiple_of(channels.len()) {
                    // Every member refused: give an election a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tx.send(outcome);
        });
        match rx.recv() {
            Ok(Ok((index, answer))) => {
                self.current.store(index, Ordering::Relaxed);
                Ok(answer)
            }
            Ok(Err(why)) => Err(unavailable(what, why)),
            Err(_) => Err(unavailable(what, "the etcd client stopped".into())),
        }
    }

    pub fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse> {
        let degraded = self
            .degraded_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if !degraded {
            let linearizable = request.clone();
            let budget = self.timeout.min(LINEARIZABLE_BUDGET);
            match self.run("read", budget, move |channel| {
                let request = linearizable.clone();
                async move { Ok(client(channel).range(request).await?.into_inner()) }
            }) {
                Ok(answer) => return Ok(answer),
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!(reason = %why, "etcd cannot serve a linearizable read; reading serializable");
                    *self
                        .degraded_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + DEGRADED_FOR);
                }
                Err(other) => return Err(other),
            }
        }
        let serializable = pb::RangeRequest {
            serializable: true,
            ..request
        };
        self.run("read", self.timeout, move |channel| {
            let request = serializable.clone();
            async move { Ok(client(channel).range(request).await?.into_inner()) }
        })
    }

    pub fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.run("write", self.timeout, move |channel| {
            let request = request.clone();
            async move { Ok(client(channel).txn(request).await?.into_inner()) }
        })
    }

    pub fn status(&self) -> Result<pb::StatusResponse> {
        self.run("status", self.timeout, |channel| async move {
            Ok(MaintenanceClient::new(channel)
                .status(pb::StatusRequest {})
                .await?
                .into_inner())
        })
    }
}

/// What the follower of a prefix reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// This key (the engine's prefix stripped) changed.
    Key(Vec<u8>),
    /// The watch was lost and opened again (or compacted past): anything
    /// may have changed meanwhile.
    Anything,
}

impl Cluster {
    /// Follows every change in `[start, end)`: one etcd watch (with
    /// progress notifications), opened again on another member when it
    /// fails, from the revision after the last one it saw. Runs until the
    /// receiver is dropped.
    pub fn follow(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        strip: usize,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Followed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let Some(runtime) = &self.runtime else {
            return rx;
        };
        let channels = self.channels.clone();
        runtime.spawn(async move {
            let mut next_revision = 0i64;
            let mut attempt = 0usize;
            while !tx.is_closed() {
                let (url, channel) = &channels[attempt % channels.len()];
                attempt += 1;
                let create = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: start.clone(),
                            range_end: end.clone(),
                            start_revision: next_revision,
                            progress_notify: true,
                            ..Default::default()
                        },
                    )),
                };
                let requests = tokio_stream::StreamExt::chain(
                    tokio_stream::once(create),
                    tokio_stream::pending(),
                );
                let opened = tokio::time::timeout(
                    Duration::from_secs(5),
                    pb::watch_client::WatchClient::new(channel.clone()).watch(requests),
                )
                .await;
                let mut responses = match opened {
                    Ok(Ok(answer)) => answer.into_inner(),
                    Ok(Err(status)) => {
                        tracing::debug!(%url, %status, "cannot open the etcd watch");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(_) => continue,
                };
                // Whatever happened while no watch was open.
                if tx.send(Followed::Anything).is_err() {
                    return;
                }
                loop {
                    let response = match responses.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) | Err(_) => break,
                    };
                    if response.compact_revision > 0 {
                        // Compacted past our place: start again from now.
                        next_revision = 0;
                        break;
                    }
                    if response.canceled {
                        break;
                    }
                    for event in response.events {
                        if let Some(kv) = event.kv {
                            next_revision = next_revision.max(kv.mod_revision + 1);
                            let key = kv.key[strip.min(kv.key.len())..].to_vec();
                            if tx.send(Followed::Key(key)).is_err() {
                                return;
                            }
                        }
                    }
                    if let Some(header) = response.header {
                        next_revision = next_revision.max(header.revision + 1);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        rx
    }
}

fn client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(512 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// What another member (or the same one, after an election) may answer.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
        // etcd answers "etcdserver: leader changed" / "no leader" /
        // "request timed out" with Unknown or Unavailable depending on the
        // version.
        Code::Unknown => {
            let message = status.message();
            message.contains("leader")
                || message.contains("timed out")
                || message.contains("transport")
                || message.contains("connection")
        }
        _ => false,
    }
}

fn unavailable(what: &str, why: String) -> StoreError {
    StoreError::Unavailable(format!("the etcd cluster could not serve a {what}: {why}"))
}

fn tls_config(tls: &EtcdTls) -> Result<ClientTlsConfig> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            config_error(format!(
                "cannot read the etcd {what} {}: {e}",
                path.display()
            ))
        })
    };
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca, "CA")?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(config_error(
                "--etcd-cert and --etcd-key go together: give both or neither".into(),
            ))
        }
    }
    Ok(config)
}
