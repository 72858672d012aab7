//! OTLP trace export, end to end: the `goodput` binary, given `--otlp-endpoint`, sends its spans
//! over gRPC to a collector. The collector here is an in-process OTLP `TraceService` built from
//! the OTLP protos (`opentelemetry-proto`'s generated server), recording what it receives.
//!
//! What users rely on: with an endpoint set, one `advise` step arrives as an `advise` span with
//! its `collect_metrics` and `decide` children in one trace, under the configured
//! `service.name`, before the process exits; a long-running command stopped with SIGTERM (as
//! Kubernetes stops pods) exits cleanly and still delivers its spans; a malformed endpoint is
//! refused with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

const CONFIG: &str = r#"
name: llama
namespace: llm
spec:
  model: llama-3.1-8b
  slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 40 } }
  variants:
    - name: h100
      pool: h100
      acceleratorsPerReplica: 1
      scaleTargetRef: { name: llama }
      minReplicas: 1
      maxReplicas: 8
  policy: { intervalSeconds: 10, startupSeconds: 30 }
pools:
  h100: { acceleratorType: h100, devices: 8 }
"#;

/// Starts the collector; returns what it receives and its address.
async fn collector() -> (Collector, std::net::SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (collector, addr)
}

/// Every span received, checking each batch's `service.name`.
fn spans_of(collector: &Collector, service_name: &str) -> Vec<Span> {
    let received = collector.0.lock().unwrap().clone();
    let mut spans = Vec::new();
    for request in &received {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().expect("a resource");
            assert_eq!(
                string_attr(&resource.attributes, "service.name").as_deref(),
                Some(service_name)
            );
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    spans
}

fn write_config(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("goodput-otlp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("advise.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    config
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string_attr(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    })
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_spans_reach_an_otlp_collector() {
    let (collector, addr) = collector().await;
    let config = write_config("once");
    // Prometheus is down: advise still runs its step (and exits 2 saying there is no
    // recommendation), which is a trace worth having.
    let prometheus = format!("http://127.0.0.1:{}", closed_port());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_goodput"))
            .args(["autoscaler", "advise", "--prometheus", &prometheus])
            .arg("--config")
            .arg(&config)
            .args(["--prometheus-timeout-s", "2"])
            .args(["--otlp-endpoint", &format!("http://{addr}")])
            .env("OTEL_SERVICE_NAME", "goodput-otlp-test")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("GOODPUT_TRACE_FILTER")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no recommendation"), "{stderr}");

    // The process flushed before exiting: everything is here already.
    let spans = spans_of(&collector, "goodput-otlp-test");
    let by_name: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let advise = by_name
        .get("advise")
        .unwrap_or_else(|| panic!("no advise span in {:?}", by_name.keys()));
    assert!(advise.parent_span_id.is_empty(), "advise is a root span");
    assert_eq!(
        string_attr(&advise.attributes, "model").as_deref(),
        Some("llama-3.1-8b")
    );
    assert_eq!(
        string_attr(&advise.attributes, "namespace").as_deref(),
        Some("llm")
    );
    assert!(string_attr(&advise.attributes, "reason").is_some());
    for child in ["collect_metrics", "decide"] {
        let span = by_name
            .get(child)
            .unwrap_or_else(|| panic!("no {child} span in {:?}", by_name.keys()));
        assert_eq!(
            span.trace_id, advise.trace_id,
            "{child} in the advise trace"
        );
        assert_eq!(span.parent_span_id, advise.span_id, "{child} under advise");
        assert!(span.start_time_unix_nano >= advise.start_time_unix_nano);
        assert!(span.end_time_unix_nano <= advise.end_time_unix_nano);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_server_cleanly_and_flushes_its_spans() {
    use std::io::{BufRead, BufReader};
    let (collector, addr) = collector().await;
    let config = write_config("serve");
    let prometheus = format!("http://127.0.0.1:{}", closed_port());
    let metrics_port = closed_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_goodput"))
        .args(["autoscaler", "advise", "--prometheus", &prometheus])
        .arg("--config")
        .arg(&config)
        .args(["--prometheus-timeout-s", "2", "--interval", "3600"])
        .args(["--serve", &metrics_port.to_string()])
        .args(["--otlp-endpoint", &format!("http://{addr}")])
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("GOODPUT_TRACE_FILTER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first step's report is printed; the next is an hour away, and the SDK's batch delay
    // (5 s) has most likely not passed: the flush at shutdown delivers the span.
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines
            .find(|l| l.as_ref().is_ok_and(|l| l.contains("variant")))
            .is_some()
    })
    .await
    .unwrap();
    assert!(first, "advise printed no report");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The default service name says which goodput this is.
    let spans = spans_of(&collector, "goodput-advise");
    assert!(spans.iter().any(|s| s.name == "advise"), "{spans:?}");
}

#[test]
fn a_malformed_endpoint_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_goodput"))
        .args(["--otlp-endpoint", "otel-collector:4317", "crd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--otlp-endpoint `otel-collector:4317`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
