//! TLS on the server: the certificate and key (and, for mTLS, the client
//! CA) from PEM files, reloaded without a restart, and the principal of
//! each verified client certificate.
//!
//! Reloading: on SIGHUP, and when one of the files changes (checked every
//! [`RELOAD_POLL`], which covers a Kubernetes secret updated in place). A
//! reload that fails (a half-written file, a key that does not match)
//! keeps the certificates in use and logs why; connections already open
//! keep the certificates they were made with. Each new connection takes
//! the configuration current at its handshake.

use crate::grpc::access::TlsPeer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How often the files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

/// The longest a TLS handshake may take before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 256;

/// Where the server's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Present: client certificates signed by this CA are required (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {reason}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {} holds no PEM certificate", .path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the client CA {} cannot verify client certificates: {reason}", .path.display())]
    ClientCa { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS configuration in use, and what it was loaded from.
pub(super) struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' modification times at the last load attempt.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl Tls {
    pub(super) fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let stamps = stamps(&files);
        let config = server_config(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    pub(super) fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the files again; on failure the configuration in use stays.
    fn reload(&self, why: &str) {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.files);
        match server_config(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), why = %why, "reloaded the TLS certificates");
            }
            Err(error) => tracing::error!(
                %error, why = %why,
                "cannot reload the TLS certificates; still serving the ones loaded before"
            ),
        }
    }

    /// Whether a file changed since the last load attempt.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.files)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files
        .paths()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |reason: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("certificate (--tls-cert)", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
        what: "private key (--tls-key)",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("client CA (--tls-client-ca)", path)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Reloads `tls` on SIGHUP and when its files change, until the process
/// ends.
pub(super) fn reload_on_change(tls: Arc<Tls>) {
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; TLS files are still reloaded when they change");
                None
            }
        };
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = hangup_received => tls.reload("SIGHUP"),
                _ = poll.tick() => {
                    if tls.changed() {
                        tls.reload("a file changed");
                    }
                }
            }
        }
    });
}

/// The connections accepted on `listener`, each through a TLS handshake
/// (run apart, so a slow client holds up nobody). Ends when the server
/// drops the stream.
pub(super) fn incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConnection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        let mut accepted = super::accepted(listener);
        loop {
            let next = tokio::select! {
                () = sender.closed() => return,
                next = tokio_stream::StreamExt::next(&mut accepted) => next,
            };
            let Some(next) = next else { return };
            let tcp = match next {
                Ok(tcp) => tcp,
                Err(error) => {
                    // The listener's errors (too many open files) are the
                    // server's to see; they do not end it.
                    if sender.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let sender = sender.clone();
            let config = tls.current();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, config)).await {
                    Ok(Some(connection)) => {
                        let _ = sender.send(Ok(connection)).await;
                    }
                    Ok(None) => {}
                    Err(_) => tracing::debug!("a TLS handshake took too long; closed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// The first bytes of a plaintext HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

async fn handshake(
    tcp: super::CoalescingWrites,
    config: Arc<rustls::ServerConfig>,
) -> Option<TlsConnection> {
    let peer = tcp.peer_addr();
    let mut first = [0u8; H2_PREFACE.len()];
    if let Ok(n) = tcp.peek(&mut first).await {
        if n > 0 && H2_PREFACE.starts_with(&first[..n]) {
            tracing::warn!(
                peer = ?peer,
                "a plaintext client connected to this TLS port: it must use https://"
            );
            refuse_plaintext(tcp).await;
            return None;
        }
    }
    let mut tcp = tcp;
    tcp.set_coalescing(false);
    match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
        Ok(mut io) => {
            io.get_mut().0.set_coalescing(true);
            let subject = io
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(certificate_principal)
                .map(Arc::from);
            Some(TlsConnection { io, subject })
        }
        Err(error) => {
            tracing::debug!(peer = ?peer, %error, "TLS handshake failed");
            None
        }
    }
}

/// Answers a plaintext HTTP/2 client in its own terms, so that its
/// request fails with the reason rather than on a closed connection: reads
/// until its first request (a HEADERS frame) arrived, sends
/// [`plaintext_refusal`], and waits (briefly) for it to hang up.
async fn refuse_plaintext(mut tcp: super::CoalescingWrites) {
    use tokio::io::AsyncReadExt as _;
    tcp.set_coalescing(false);
    let exchange = async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while !holds_request(&received) && received.len() < 64 * 1024 {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            received.extend_from_slice(&chunk[..n]);
        }
        tcp.write_all(&plaintext_refusal()).await?;
        tcp.flush().await?;
        while tcp.read(&mut chunk).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
    let _ = tcp.shutdown().await;
}

/// Whether the bytes of a plaintext HTTP/2 connection (preface first)
/// hold a whole HEADERS frame.
fn holds_request(received: &[u8]) -> bool {
    const PREFACE_LEN: usize = 24;
    let mut at = PREFACE_LEN;
    while received.len() >= at + 9 {
        let length = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]);
        if received[at + 3] == 0x01 {
            return true;
        }
        at += 9 + length as usize;
    }
    false
}

/// What a plaintext HTTP/2 client gets from the TLS port: the server's
/// SETTINGS, then GOAWAY (HTTP_1_1_REQUIRED is the nearest code HTTP/2
/// has) with a reason in its debug data, for the clients that show it.
fn plaintext_refusal() -> Vec<u8> {
    let debug = b"this port serves TLS: connect with https://";
    let mut frames = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
    let length = (8 + debug.len()) as u32;
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&0xdu32.to_be_bytes());
    frames.extend_from_slice(debug);
    frames
}

/// The principal of a client certificate: its first URI SAN, else its
/// first DNS SAN, else its subject's common name.
pub fn certificate_principal(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        if let Some(name) = uri.or(dns).filter(|n| !n.is_empty()) {
            return Some(name.to_string());
        }
    }
    let common_name = cert.subject().iter_common_name().next()?;
    common_name
        .as_str()
        .ok()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// A connection after its TLS handshake, with the principal of its client
/// certificate (mTLS), which every request on it carries.
pub(super) struct TlsConnection {
    io: tokio_rustls::server::TlsStream<super::CoalescingWrites>,
    subject: Option<Arc<str>>,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        TlsPeer {
            subject: self.subject.clone(),
        }
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
