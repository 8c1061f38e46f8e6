//! One span and one set of metrics per RPC, as a tower layer in front of
//! every gRPC service: the caller's W3C `traceparent` becomes the span's
//! parent, and the gRPC status of the answer becomes the span's
//! `rpc.grpc.status_code` and the metrics' `code` label.
//!
//! The request counter counts an RPC once it has ended: at the headers for a
//! trailers-only answer (an error), otherwise when the body's trailers carry
//! the final status. A body dropped before its end (the client cancelled: a
//! Watch stream that was closed, a call whose deadline passed) is counted as
//! `Cancelled`, never as `Ok`.
//!
//! Handlers add the prompt attributes (`gen_ai.prompt.name`, …) to the
//! current span; the fields are declared here, empty, so that they can.

use super::metrics::{RPC_DURATION, RPC_REQUESTS};
use opentelemetry::propagation::Extractor;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The name of the per-RPC span.
pub(crate) const RPC_SPAN: &str = "rpc";

/// The layer; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct RpcLayer;

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Unpin + Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone is the service that was not polled ready; use the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let path = request.uri().path().to_string();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path.as_str()));
        let span = if super::traces_on() {
            rpc_span(&path, service, method, request.headers())
        } else {
            // Nobody reads it: `annotate` and the records below see a
            // disabled span and skip their work.
            tracing::Span::none()
        };
        let method = method.to_string();
        let started = Instant::now();
        let future = inner.call(request).instrument(span.clone());
        Box::pin(async move {
            let mut response = future.await?;
            too_large_is_resource_exhausted(&mut response);
            // Errors from unary handlers are trailers-only responses: their
            // status is in the headers. No status header means OK so far (a
            // unary success or an open stream): the body's end tells.
            let code = status_in(response.headers());
            span.record("rpc.grpc.status_code", code.map_or(0, |c| c as i64));
            if code.is_some_and(|c| c != tonic::Code::Ok) {
                span.record("otel.status_code", "ERROR");
            }
            metrics::histogram!(RPC_DURATION, "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            let mut tally = Some(Tally { method });
            if let Some(code) = code {
                if let Some(t) = tally.take() {
                    t.count(code);
                }
            }
            Ok(response.map(|inner| CountedBody { inner, tally }))
        })
    }
}

/// The per-RPC span, its parent the caller's `traceparent`.
fn rpc_span(path: &str, service: &str, method: &str, headers: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        RPC_SPAN,
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        gen_ai.prompt.name = tracing::field::Empty,
        gen_ai.prompt.version = tracing::field::Empty,
        promptreg.prompt.digest = tracing::field::Empty,
        promptreg.label = tracing::field::Empty,
        promptreg.revision = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
    span
}

/// The gRPC status in headers or trailers, when there is one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// The request counter's sample for one RPC, counted once.
struct Tally {
    method: String,
}

impl Tally {
    fn count(self, code: tonic::Code) {
        let code_name = format!("{code:?}");
        metrics::counter!(RPC_REQUESTS, "method" => self.method, "code" => code_name).increment(1);
    }
}

/// A response body that counts its RPC when it ends (see the module docs).
pub struct CountedBody<B> {
    inner: B,
    /// `None` once counted.
    tally: Option<Tally>,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| status_in(trailers).unwrap_or(tonic::Code::Ok)),
            // The stream broke on this side.
            Poll::Ready(Some(Err(_))) => Some(tonic::Code::Unknown),
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => Some(tonic::Code::Ok),
            Poll::Pending => None,
        };
        if let Some(code) = ended {
            if let Some(tally) = this.tally.take() {
                tally.count(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away.
        if let Some(tally) = self.tally.take() {
            tally.count(tonic::Code::Cancelled);
        }
    }
}

/// tonic answers a request over `--max-request-bytes` with OUT_OF_RANGE;
/// a request over a limit is RESOURCE_EXHAUSTED, naming the limit.
fn too_large_is_resource_exhausted<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if too_large {
        let original = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        let message = format!("request%20too%20large%20(--max-request-bytes):%20{original}");
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
