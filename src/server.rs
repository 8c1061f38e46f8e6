//! The gRPC server: the registry service, gRPC health and reflection, and a
//! graceful stop.

use crate::grpc::{
    pb_server::registry_server::RegistryServer, RegistryService, FILE_DESCRIPTOR_SET,
};
use crate::registry::{disk::WriteHealth, OpenError, Registry, RegistryConfig, RegistryError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a stop waits for in-flight requests after ending watch streams.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The most a stop takes from the signal to the exit: the grace period,
/// then the final flush (bounded; see the registry's `Drop`). After this the
/// process exits whatever is still running (`promptreg serve` enforces it).
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// The gRPC health service name that answers whether writes are taken:
/// NOT_SERVING while the store refuses writes (a full disk, failing
/// flushes), SERVING again when they resume. The overall status (`""`) and
/// the registry's own name stay SERVING while reads are served.
pub const WRITE_HEALTH_SERVICE: &str = "promptreg.v1.Registry.writes";
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot create the admin token: {0}")]
    Bootstrap(#[source] RegistryError),
    #[error("gRPC reflection could not be set up: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("stopping: {0}")]
    RestartNeeded(String),
}

/// Opens the registry in `config.data_dir` and serves it on `listener` until
/// `shutdown` completes. On shutdown the server stops accepting connections,
/// lets in-flight requests finish, flushes the store, and returns.
pub async fn run(
    listener: TcpListener,
    config: RegistryConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let registry = Registry::open(config)?;
    if !registry.auth_enabled() {
        tracing::warn!(
            "authentication is off (--insecure-no-auth): every caller is an anonymous admin"
        );
    }
    if let Some(path) = registry
        .bootstrap_admin()
        .await
        .map_err(ServerError::Bootstrap)?
    {
        // The path, never the token.
        tracing::warn!(path = %path.display(), "created the admin token on first start; read it from this file (mode 0600)");
    }
    serve(listener, registry, shutdown).await
}

/// Serves an already open registry; see [`run`].
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    let mut write_health = registry.write_health();
    let restart_needed = {
        let mut write_health = write_health.clone();
        async move {
            let why = write_health
                .wait_for(|state| matches!(state, WriteHealth::RestartNeeded(_)))
                .await
                .map(|state| state.refusal().unwrap_or_default().to_string());
            match why {
                Ok(why) => why,
                Err(_) => std::future::pending().await,
            }
        }
    };
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        loop {
            let status = match write_health.borrow_and_update().refusal() {
                None => tonic_health::ServingStatus::Serving,
                Some(_) => tonic_health::ServingStatus::NotServing,
            };
            reporter
                .set_service_status(WRITE_HEALTH_SERVICE, status)
                .await;
            if write_health.changed().await.is_err() {
                return;
            }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let listen = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    tracing::info!(%listen, revision = registry.revision(), "serving");
    // Watch streams never finish by themselves, so a graceful stop first
    // ends them (UNAVAILABLE with the revision to resume from), then lets
    // unary requests finish. A client that does not read its stream cannot
    // be told; after the grace period its connection is closed.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let watches = registry.clone();
    let stop_signal = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        watches.shut_down_watches();
        stop_signal.notify_waiters();
    };
    let limits = registry.limits().clone();
    let service = RegistryServer::new(RegistryService::new(registry.clone()))
        .max_decoding_message_size(limits.max_request_bytes);
    // Every RPC of the registry authenticates; health and reflection stay
    // open (load balancers, grpcurl).
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        crate::grpc::access::Authenticate::new(registry),
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        // Dead peers behind a load balancer are found by HTTP/2 pings;
        // clients that ping every 10 s are accepted.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(crate::telemetry::RpcLayer)
        .layer(crate::grpc::codec::FramingErrorLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        // The builder's tcp_nodelay/tcp_keepalive apply only to listeners it
        // binds itself; set them on the accepted sockets here. Without
        // TCP_NODELAY, small answers wait for delayed ACKs (40 ms stalls).
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                |accepted| accepted.map(CoalescingWrites::new),
            ),
            shutdown,
        );
    let grace = async {
        stopping.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result?,
        () = grace => tracing::warn!(grace = ?SHUTDOWN_GRACE, "grace period over; closing the remaining connections"),
        why = restart_needed => {
            tracing::error!(reason = %why, "the store cannot take writes any more; exiting so that a restart reopens it");
            return Err(ServerError::RestartNeeded(why));
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// An accepted connection that gathers HTTP/2's writes into one system
/// call per flush.
///
/// h2 copies DATA frames into its 16 KiB write buffer only up to a
/// threshold (256 bytes when the socket supports vectored writes, 1 KiB
/// otherwise) and writes each larger frame with its own system call. A
/// revision fanned out to the hundred watch streams of one connection then
/// cost a hundred writes, and every resolve answer (about 1.2 KB) two.
/// This wrapper reports no vectored writes (so small frames are copied into
/// h2's buffer) and keeps what h2 writes in `pending` until h2 flushes.
///
/// h2 flushes in two places: before every frame it could not buffer (any
/// DATA frame over 1 KiB: every resolve answer) and when the connection has
/// nothing more to do. It cannot tell which, and neither can the socket;
/// but the second comes with no write since the previous flush. So a flush
/// that follows writes only wakes the connection's task and returns: the
/// task runs again after the stream tasks already queued (which hand it
/// more frames), and a flush with nothing written since goes to the socket.
/// A batch therefore covers every answer ready by then, in one `write`.
/// `PENDING_LIMIT` and `MAX_DEFERRED` bound the wait under steady load.
struct CoalescingWrites {
    io: tokio::net::TcpStream,
    /// Written by h2, not yet by the socket. Bounded by `PENDING_LIMIT`
    /// (plus one write); released after each flush, so an idle connection
    /// holds nothing.
    pending: Vec<u8>,
    /// h2 wrote since its last flush.
    wrote: bool,
    /// Flushes put off in a row.
    deferred: u32,
}

/// Most flushes put off in a row before one goes to the socket.
const MAX_DEFERRED: u32 = 64;

/// Above this, a write goes to the socket at once instead of waiting for
/// the flush.
const PENDING_LIMIT: usize = 64 * 1024;
/// The first allocation of a batch: h2's own write buffer is 16 KiB.
const PENDING_START: usize = 16 * 1024;

impl CoalescingWrites {
    fn new(io: tokio::net::TcpStream) -> Self {
        CoalescingWrites {
            io,
            pending: Vec::new(),
            wrote: false,
            deferred: 0,
        }
    }

    /// Writes out `pending`, as far as the socket takes it.
    fn poll_write_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        use tokio::io::AsyncWrite as _;
        while !self.pending.is_empty() {
            match std::pin::Pin::new(&mut self.io).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Do not keep a large buffer on an idle connection.
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl tonic::transport::server::Connected for CoalescingWrites {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for CoalescingWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CoalescingWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        this.wrote = true;
        if this.pending.len() + buf.len() <= PENDING_LIMIT {
            if this.pending.capacity() == 0 {
                // One allocation per batch rather than a dozen doublings
                // (the buffer is released after every flush).
                this.pending.reserve(buf.len().max(PENDING_START));
            }
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // Too much to hold: what is pending goes first, then this write.
        std::task::ready!(this.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.wrote && this.deferred < MAX_DEFERRED && !this.pending.is_empty() {
            // Put off: h2 flushes again when the task runs next.
            this.wrote = false;
            this.deferred += 1;
            cx.waker().wake_by_ref();
            return std::task::Poll::Ready(Ok(()));
        }
        this.wrote = false;
        this.deferred = 0;
        std::task::ready!(this.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_write_pending(cx))?;
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
