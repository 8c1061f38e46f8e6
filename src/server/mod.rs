//! The gRPC server: the registry service, gRPC health and reflection, and a
//! graceful stop.

use crate::grpc::{
    pb_server::registry_server::RegistryServer, RegistryService, FILE_DESCRIPTOR_SET,
};
use crate::registry::{disk::WriteHealth, OpenError, Registry, RegistryConfig, RegistryError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod coalesce;
mod tls;

use coalesce::CoalescingWrites;
pub use tls::{certificate_principal, TlsError, TlsFiles, RELOAD_POLL};

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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot create the admin token: {0}")]
    Bootstrap(#[source] RegistryError),
    #[error("gRPC reflection could not be set up: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("stopping: {0}")]
    RestartNeeded(String),
}

/// Opens the registry in `config.data_dir` and serves it on `listener`
/// (with TLS when `tls` is given) until `shutdown` completes. On shutdown
/// the server stops accepting connections, lets in-flight requests finish,
/// flushes the store, and returns.
pub async fn run(
    listener: TcpListener,
    config: RegistryConfig,
    tls: Option<TlsFiles>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    // Bad TLS files fail the start before the store is opened.
    let tls = tls.map(tls::Tls::load).transpose()?;
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
    serve_on(listener, registry, tls, shutdown).await
}

/// Serves an already open registry in plaintext; see [`run`].
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    serve_on(listener, registry, None, shutdown).await
}

/// The connections accepted on `listener`, with TCP_NODELAY and keepalive
/// set. The builder's tcp_nodelay/tcp_keepalive apply only to listeners it
/// binds itself. Without TCP_NODELAY, small answers wait for delayed ACKs
/// (40 ms stalls).
fn accepted(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CoalescingWrites>> + Send + Unpin {
    tokio_stream::StreamExt::map(
        tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60))),
        |accepted| accepted.map(CoalescingWrites::new),
    )
}

async fn serve_on(
    listener: TcpListener,
    registry: Registry,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send,
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
    let transport = match &tls {
        None => "plaintext",
        Some(tls) if tls.mutual() => "mTLS",
        Some(_) => "TLS",
    };
    tracing::info!(%listen, transport = %transport, revision = registry.revision(), "serving");
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
        .add_service(service);
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        None => Box::pin(server.serve_with_incoming_shutdown(accepted(listener), shutdown)),
        Some(tls) => {
            tls::reload_on_change(tls.clone());
            Box::pin(server.serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown))
        }
    };
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
