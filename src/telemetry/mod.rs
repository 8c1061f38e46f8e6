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
    // Log lines get the trace and span ids instead (JSON style).
    let fmt = fmt.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.name() == rpc_layer::RPC_SPAN)
    }));
    let provider = trace_provider();
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
