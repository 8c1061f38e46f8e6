//! Telemetry: logs (text or JSON with trace ids), OpenTelemetry traces over
//! OTLP/gRPC, Prometheus metrics, and the tower layer that gives every RPC a
//! span and its metrics.
//!
//! Traces are configured only by the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_RESOURCE_ATTRIBUTES`). Without an endpoint
//! no OpenTelemetry layer is installed at all: no export, no cost. Export
//! runs on the SDK's batch processor, off the request path, so a collector
//! that is down never slows or fails a request.

mod json_log;
pub mod metrics;
mod rpc_layer;

pub use rpc_layer::RpcLayer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    Text,
    Json,
}

/// Keeps the trace exporter alive; flushes it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("promptreg: flushing traces at exit failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber (and, with an OTLP endpoint, the trace
/// pipeline). Must run inside the tokio runtime.
pub fn init(style: LogStyle) -> Telemetry {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match style {
        LogStyle::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogStyle::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(json_log::JsonWithTrace)
            .boxed(),
    };
    // The per-RPC span is for traces and its attributes are recorded on
    // every request; the log layer would format them into a string each
    // time (a third of a resolve's handler time) only to prefix log lines.
    // Log lines get the trace and span ids instead (JSON style). (Not a
    // per-layer filter: see `WithoutRpcSpan`.)
    let fmt = WithoutRpcSpan(fmt);
    let provider = trace_provider();
    TRACES.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("promptreg")));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Already initialised (tests in one process): keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

/// Whether a trace pipeline is installed. Without one the per-RPC span
/// would be read by nobody (the log layer is blind to it, see
/// `WithoutRpcSpan`), so `RpcLayer` does not open it at all.
static TRACES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn traces_on() -> bool {
    TRACES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The log layer, blind to the RPC span (see `init`). A per-layer filter
/// would say the same, but tracing does not consult it for callsites that
/// the global filter always enables, and the span's fields were formatted
/// on every request regardless. Everything else is passed through.
struct WithoutRpcSpan<L>(L);

impl<L> WithoutRpcSpan<L> {
    fn is_rpc<S>(id: &tracing::span::Id, ctx: &tracing_subscriber::layer::Context<'_, S>) -> bool
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        ctx.metadata(id)
            .is_some_and(|meta| meta.name() == rpc_layer::RPC_SPAN)
    }
}

impl<S, L> tracing_subscriber::Layer<S> for WithoutRpcSpan<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != rpc_layer::RPC_SPAN {
            self.0.on_new_span(attrs, id, ctx)
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if !Self::is_rpc(id, &ctx) {
            self.0.on_record(id, values, ctx)
        }
    }

    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_follows_from(span, follows, ctx)
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_event(event, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_enter(id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_exit(id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.0.on_close(id, ctx)
    }

    fn on_id_change(
        &self,
        old: &tracing::span::Id,
        new: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.on_id_change(old, new, ctx)
    }

    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // SAFETY: the inner layer answers for its own types.
            unsafe { self.0.downcast_raw(id) }
        }
    }
}

/// The OTLP trace pipeline, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
/// traces-specific variable) is set.
fn trace_provider() -> Option<SdkTracerProvider> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("promptreg: OTLP trace export is off: {error}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("promptreg");
    }
    // The sampler comes from OTEL_TRACES_SAMPLER / _ARG (the SDK reads them).
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}
