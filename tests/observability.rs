//! Observability end to end: spans received over OTLP by a collector inside
//! the test, Prometheus metrics scraped over HTTP, JSON logs with trace ids,
//! FindByDigest / whois, and a collector that is down.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use promptreg::grpc::pb;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::metrics::{free_port, sample, scrape};
use support::*;

const PATIENCE: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP trace receiver: keeps every span with its resource's service name.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, url)
    }

    /// Waits for a span named `name` (`promptreg.v1.Registry/Method`).
    async fn span(&self, name: &str) -> (String, Span) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(found) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| s.name == name)
            {
                return found.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no span {name} was exported"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN}-01").parse().unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_carry_prompt_attributes() {
    let (collector, endpoint) = Collector::start().await;
    let temp = tempfile::tempdir().unwrap();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--metrics-listen",
            &metrics_address,
            "--data-dir",
        ])
        .arg(temp.path().join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "promptreg-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("\"listen\":\"").nth(1) {
                let _ = tx.send(rest.split('"').next().unwrap_or_default().to_string());
            }
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let address =
        tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE).expect("server address"))
            .await
            .unwrap();
    let server = KillOnDrop(child);
    let url = format!("http://{address}");
    let token = read_admin_token(&temp.path().join("data")).expect("admin token");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = client_with(channel, Some(&token));

    let published = client
        .publish_version(traced(publish_text(
            "agents/support",
            "Hi {{name}}",
            &["name"],
        )))
        .await
        .unwrap()
        .into_inner();
    client
        .publish_version(publish_text("agents/support", "Hello {{name}}", &["name"]))
        .await
        .unwrap();
    let moved = client
        .set_label(traced(set_label("agents/support", "production", 1, None)))
        .await
        .unwrap()
        .into_inner();
    let missing = client
        .get_version(pb::GetVersionRequest {
            name: "agents/nope".into(),
            selector: None,
            ..Default::default()
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    // The publish span: a child of the caller's span, with our attributes.
    let (service, span) = collector.span("promptreg.v1.Registry/PublishVersion").await;
    assert_eq!(service, "promptreg-under-test");
    assert_eq!(hex::encode(&span.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&span.parent_span_id), PARENT_SPAN);
    let attr = |key: &str| attribute(&span.attributes, key);
    assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr("rpc.service").as_deref(),
        Some("promptreg.v1.Registry")
    );
    assert_eq!(attr("rpc.method").as_deref(), Some("PublishVersion"));
    assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(
        attr("gen_ai.prompt.name").as_deref(),
        Some("agents/support")
    );
    assert_eq!(attr("gen_ai.prompt.version").as_deref(), Some("1"));
    assert_eq!(
        attr("promptreg.prompt.digest").as_deref(),
        Some(published.digest.as_str())
    );
    assert_eq!(attr("promptreg.revision").as_deref(), Some("1"));

    // The label move: attributes and a span event with versions and reason.
    let (_, span) = collector.span("promptreg.v1.Registry/SetLabel").await;
    assert_eq!(hex::encode(&span.trace_id), TRACE_ID);
    assert_eq!(
        attribute(&span.attributes, "promptreg.label").as_deref(),
        Some("production")
    );
    assert_eq!(
        attribute(&span.attributes, "promptreg.revision"),
        Some(moved.revision.to_string())
    );
    let event = span
        .events
        .iter()
        .find(|e| e.name == "label moved")
        .expect("a label-moved event");
    assert_eq!(
        attribute(&event.attributes, "from_version").as_deref(),
        Some("0")
    );
    assert_eq!(
        attribute(&event.attributes, "to_version").as_deref(),
        Some("1")
    );
    assert_eq!(
        attribute(&event.attributes, "reason").as_deref(),
        Some("promote v1")
    );

    // A failed call: its status code on a span of a new trace.
    let (_, span) = collector.span("promptreg.v1.Registry/GetVersion").await;
    assert_eq!(
        attribute(&span.attributes, "rpc.grpc.status_code").as_deref(),
        Some("5")
    );
    assert_ne!(hex::encode(&span.trace_id), TRACE_ID);

    // The ledger and the label history keep the trace id.
    let history = client
        .label_history(pb::LabelHistoryRequest {
            name: "agents/support".into(),
            label: "production".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .moves;
    assert_eq!(history[0].trace_id, TRACE_ID);

    // JSON logs written inside the traced request carry its ids.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = log.lock().unwrap().clone();
        let line = text.lines().find(|l| l.contains("\"label moved\""));
        if let Some(line) = line {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["trace_id"], TRACE_ID, "{line}");
            assert_eq!(json["span_id"].as_str().map(str::len), Some(16), "{line}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no label-moved log line:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Metrics move with the requests.
    let body = tokio::task::spawn_blocking({
        let address = metrics_address.clone();
        move || scrape(&address)
    })
    .await
    .unwrap();
    let publishes = sample(
        &body,
        "promptreg_rpc_requests_total",
        &["method=\"PublishVersion\"", "code=\"Ok\""],
    );
    assert_eq!(publishes, Some(2.0), "{body}");
    assert_eq!(
        sample(
            &body,
            "promptreg_rpc_requests_total",
            &["method=\"GetVersion\"", "code=\"NotFound\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "promptreg_label_moves_total",
            &["label=\"production\"", "kind=\"promote\""]
        ),
        Some(1.0)
    );
    assert!(
        body.contains("promptreg_flush_duration_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("promptreg_rpc_duration_seconds_bucket"),
        "{body}"
    );
    client
        .rollback(rollback("agents/support", "production", Some(2)))
        .await
        .unwrap();
    let mut stream = client
        .watch(pb::WatchRequest {
            names: vec!["agents/support".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    let body = tokio::task::spawn_blocking({
        let address = metrics_address.clone();
        move || scrape(&address)
    })
    .await
    .unwrap();
    assert_eq!(
        sample(
            &body,
            "promptreg_label_moves_total",
            &["label=\"production\"", "kind=\"rollback\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "promptreg_watch_streams", &[]),
        Some(1.0),
        "{body}"
    );
    // The client closes its Watch: counted as cancelled, not as OK.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let address = metrics_address.clone();
        let body = tokio::task::spawn_blocking(move || scrape(&address))
            .await
            .unwrap();
        let watch = |code: &str| {
            sample(
                &body,
                "promptreg_rpc_requests_total",
                &["method=\"Watch\"", &format!("code=\"{code}\"")],
            )
        };
        if watch("Cancelled") == Some(1.0) {
            assert_eq!(watch("Ok"), None, "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a cancelled Watch is not counted as cancelled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cache gauges (set every 5 s): the version read above is held,
    // within the default 16 MiB bound; the label cache reports its bound.
    client
        .get_version(pb::GetVersionRequest {
            name: "agents/support".into(),
            selector: Some(pb::get_version_request::Selector::Label(
                "production".into(),
            )),
            ..Default::default()
        })
        .await
        .expect("resolve production");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let address = metrics_address.clone();
        let body = tokio::task::spawn_blocking(move || scrape(&address))
            .await
            .unwrap();
        let cache =
            |metric: &str, cache: &str| sample(&body, metric, &[&format!("cache=\"{cache}\"")]);
        // The first sample may predate the read; the next comes 5 s later.
        if cache("promptreg_cache_entries", "version").is_some_and(|n| n >= 1.0) {
            let bytes = cache("promptreg_cache_bytes", "version").expect("version bytes");
            assert!(bytes > 0.0 && bytes <= 16.0 * 1024.0 * 1024.0, "{body}");
            assert_eq!(
                cache("promptreg_cache_capacity", "version"),
                Some(16.0 * 1024.0 * 1024.0),
                "{body}"
            );
            assert_eq!(
                cache("promptreg_cache_capacity", "label"),
                Some(100_000.0),
                "{body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cache gauges in /metrics: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_fails_a_request() {
    // Port 1 on loopback: nothing listens there.
    let temp = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp.path().join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listen=").nth(1) {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
    });
    let address =
        tokio::task::spawn_blocking(move || rx.recv_timeout(PATIENCE).expect("server address"))
            .await
            .unwrap();
    let url = format!("http://{address}");
    let token = read_admin_token(&temp.path().join("data")).expect("admin token");
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = client_with(channel, Some(&token));
    for i in 0..30 {
        let answer = tokio::time::timeout(
            PATIENCE,
            client.publish_version(traced(publish_text("p", &format!("v{i}"), &[]))),
        )
        .await;
        assert!(answer.expect("answered despite the dead collector").is_ok());
    }
}

#[tokio::test]
async fn whois_names_the_version_and_the_labels_that_pointed_to_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let v1 = publish(&mut client, "agents/support", "one").await;
    publish(&mut client, "agents/support", "two").await;
    client
        .set_label(traced(set_label("agents/support", "production", 1, None)))
        .await
        .unwrap();
    let away = client
        .set_label(set_label("agents/support", "production", 2, None))
        .await
        .unwrap()
        .into_inner();
    client
        .set_label(set_label("agents/support", "staging", 1, None))
        .await
        .unwrap();

    let found = client
        .find_by_digest(pb::FindByDigestRequest {
            digest: v1.digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches.len(), 1);
    let m = &found.matches[0];
    assert_eq!(
        m.version.as_ref().map(|v| (v.name.as_str(), v.version)),
        Some(("agents/support", 1))
    );
    let periods: Vec<(&str, u64)> = m
        .labels
        .iter()
        .map(|p| (p.label.as_str(), p.until_revision))
        .collect();
    assert_eq!(
        periods,
        [("latest", 2), ("production", away.revision), ("staging", 0)]
    );
    assert_eq!(m.labels[1].trace_id, TRACE_ID);

    let url = server.url.clone();
    let digest = v1.digest.clone();
    let (found, missing) = tokio::task::spawn_blocking(move || {
        let run = |d: &str| {
            support::cli_command(&url)
                .args(["whois", d, "--output", "json"])
                .output()
                .unwrap()
        };
        (run(&digest), run(&format!("sha256:{}", "0".repeat(64))))
    })
    .await
    .unwrap();
    assert_eq!(found.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(json["labels"][1]["label"], "production");
    assert_eq!(json["labels"][2]["until"], serde_json::Value::Null);
    assert_eq!(missing.status.code(), Some(1));
    assert_status(
        client
            .find_by_digest(pb::FindByDigestRequest {
                digest: "nope".into(),
            })
            .await,
        tonic::Code::InvalidArgument,
        "digest:",
    );
}
