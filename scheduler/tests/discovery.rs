//! Kubernetes endpoint discovery end to end: the scheduler's discovery (kube's real client and
//! watcher) against a FAKE Kubernetes API server (`autoscaler/tests/support/fake_kube.rs`: an
//! in-process HTTP server speaking the API's real wire format, list and watch with
//! `labelSelector`, since no API server can be installed on these machines), with real
//! `goodput sim serve` servers (vLLM-compatible, `/metrics` and the OpenAI API) standing in as
//! the pods' containers: each "pod" gets its own loopback address (127.0.x.y) and all share
//! the pool's target port, as pods of one Deployment do. Picks go through the scheduler's
//! ext_proc gRPC service, as Envoy sends them.
//!
//! What users rely on: ready matching pods (not terminating, with an IP) become endpoints; a
//! pod that becomes not ready or is being deleted leaves; a new ready pod joins and gets
//! picks; an InferencePool's selector change re-targets the scheduler; a request in flight to
//! an endpoint that left finishes normally and then frees the endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../../autoscaler/tests/support/fake_kube.rs"]
mod fake_kube;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request,
    processing_response,
};
use fake_kube::FakeKube;
use goodput_core::catalog::Catalog;
use goodput_scheduler::server::discovery::{
    ACCELERATOR_LABEL, DiscoveryConfig, KubeSource, PoolSpec, ROLE_LABEL,
};
use goodput_scheduler::server::extproc::{DESTINATION_HEADER, Shared};
use goodput_scheduler::server::pool::{Pool, Staleness};
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

const NS: &str = "llm";
const PODS: &str = "/api/v1/pods";
const POOLS: &str = "/apis/inference.networking.k8s.io/v1/inferencepools";

/// A free port on `ip`.
fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` live servers, one per address 127.0.`net`.1.. , all on one port.
async fn pod_servers(net: u8, n: u8) -> (Vec<LiveServers>, u16) {
    let port = free_port(IpAddr::V4(Ipv4Addr::new(127, 0, net, 1)));
    let cfg = ServerConfig {
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    let mut out = Vec::new();
    for i in 1..=n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, net, i));
        out.push(
            LiveServers::start(&Catalog::builtin(), &cfg, ip, port, 1)
                .await
                .unwrap(),
        );
    }
    (out, port)
}

fn ip(net: u8, i: u8) -> String {
    format!("127.0.{net}.{i}")
}

/// A Pod object as the API server returns it.
fn pod(name: &str, ip: Option<&str>, labels: &[(&str, &str)], ready: bool) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    if let Some(ip) = ip {
        status["podIP"] = ip.into();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": status,
    })
}

fn inference_pool(name: &str, app: &str, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
    json!({
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "targetPorts": ports,
            "endpointPickerRef": {"name": "goodput-scheduler", "port": {"number": 9002}},
        },
    })
}

struct Scheduler {
    shared: Arc<Shared>,
    port: u16,
    _stop: oneshot::Sender<()>,
}

async fn start_scheduler(kube: &FakeKube, source: KubeSource, picker: &str) -> Scheduler {
    let discovery = DiscoveryConfig {
        namespace: NS.into(),
        source,
    };
    let config = ServeConfig {
        endpoints: EndpointSource::Kubernetes(discovery.clone()),
        picker: picker.into(),
        scrape_interval: Duration::from_millis(50),
        staleness: Staleness {
            stale_after: Duration::from_secs(2),
            down_after: Duration::from_secs(30),
            down_after_failures: 3,
        },
        ..Default::default()
    };
    let mut running = build(&config).unwrap();
    running.spawn_discovery(kube.client(), discovery);
    let shared = Arc::clone(&running.shared);
    let grpc = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve_running(
        running,
        config.scrape_interval,
        grpc,
        None,
        async {
            let _ = rx.await;
        },
    ));
    Scheduler {
        shared,
        port,
        _stop: tx,
    }
}

impl Scheduler {
    /// Waits until `cond` holds for the pool (20 s at most).
    async fn until(&self, what: &str, cond: impl Fn(&Pool) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let pool = self.shared.lock();
                if cond(&pool) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; endpoints {:?}, draining {}",
                    pool.endpoints(),
                    pool.draining_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the set is exactly `addrs` and all of them are ready (scraped).
    async fn until_set(&self, addrs: &[String]) {
        let mut want: Vec<String> = addrs.to_vec();
        want.sort();
        self.until(&format!("endpoints {want:?} ready"), |pool| {
            let mut got: Vec<String> = pool.endpoints().into_iter().map(|(_, a)| a).collect();
            got.sort();
            got == want && pool.health_counts(Instant::now()).0 == want.len() as i64
        })
        .await;
    }

    /// Opens one request through ext_proc, as Envoy does, and returns where it was routed.
    async fn open(&self) -> OpenRequest {
        let mut client =
            ExternalProcessorClient::connect(format!("http://127.0.0.1:{}", self.port))
                .await
                .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let mut inbound = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let headers = [
            (":method", "POST"),
            (":path", "/v1/completions"),
            ("content-type", "application/json"),
        ];
        tx.send(ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(header_map(&headers)),
                end_of_stream: false,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap();
        let body = json!({"model": "llama-3.1-8b", "prompt": "hello there", "max_tokens": 3});
        tx.send(ProcessingRequest {
            request: Some(processing_request::Request::RequestBody(HttpBody {
                body: body.to_string().into_bytes(),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap();
        let first = inbound.message().await.unwrap().unwrap();
        let dest = destination(&first).unwrap_or_else(|| panic!("not routed: {first:?}"));
        // The body comes back (full duplex) before the upstream sees it.
        let body = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            body.response,
            Some(processing_response::Response::RequestBody(_))
        ));
        OpenRequest {
            dest,
            tx,
            inbound,
            _client: client,
        }
    }

    /// One complete pick; returns its destination.
    async fn pick(&self) -> String {
        let r = self.open().await;
        let dest = r.dest.clone();
        r.finish().await;
        dest
    }
}

struct OpenRequest {
    dest: String,
    tx: mpsc::Sender<ProcessingRequest>,
    inbound: tonic::Streaming<ProcessingResponse>,
    _client: ExternalProcessorClient<tonic::transport::Channel>,
}

impl OpenRequest {
    /// Sends one message of the upstream's side and returns the scheduler's answer.
    async fn exchange(
        &mut self,
        request: processing_request::Request,
    ) -> Option<processing_response::Response> {
        self.tx
            .send(ProcessingRequest {
                request: Some(request),
                ..Default::default()
            })
            .await
            .unwrap();
        self.inbound.message().await.unwrap().unwrap().response
    }

    /// The upstream answers: response headers, one SSE chunk, end of stream. Every message
    /// is answered by the scheduler.
    async fn finish(mut self) {
        let headers = [(":status", "200"), ("content-type", "text/event-stream")];
        let h = self
            .exchange(processing_request::Request::ResponseHeaders(HttpHeaders {
                headers: Some(header_map(&headers)),
                end_of_stream: false,
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            h,
            Some(processing_response::Response::ResponseHeaders(_))
        ));
        let chunk = "data: {\"choices\":[{\"text\":\" hi\"}]}\n\ndata: [DONE]\n\n";
        let b = self
            .exchange(processing_request::Request::ResponseBody(HttpBody {
                body: chunk.as_bytes().to_vec(),
                end_of_stream: true,
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            b,
            Some(processing_response::Response::ResponseBody(_))
        ));
        drop(self.tx);
        // The scheduler ends the stream once Envoy's side closes.
        while let Ok(Some(_)) = self.inbound.message().await {}
    }
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

fn destination(r: &ProcessingResponse) -> Option<String> {
    let Some(processing_response::Response::RequestHeaders(h)) = &r.response else {
        return None;
    };
    h.response
        .as_ref()?
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == DESTINATION_HEADER)
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
}

/// A real completion from the picked address: it is a live server, not a name.
async fn complete_at(dest: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://{dest}/v1/completions"))
        .json(&json!({"model": "llama-3.1-8b", "prompt": "hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{dest}");
}

fn selector(app: &str, port: u16) -> KubeSource {
    KubeSource::Selector(PoolSpec {
        match_labels: [("app".to_string(), app.to_string())].into_iter().collect(),
        target_ports: vec![port],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_join_and_leave_the_endpoint_set_as_their_readiness_changes() {
    let net = 1;
    let (servers, port) = pod_servers(net, 3).await;
    let kube = FakeKube::start().await;
    let addr = |i: u8| format!("{}:{port}", ip(net, i));
    let app = [("app", "vllm")];
    kube.apply(PODS, pod("vllm-1", Some(&ip(net, 1)), &app, true));
    kube.apply(PODS, pod("vllm-2", Some(&ip(net, 2)), &app, false));
    kube.apply(PODS, pod("vllm-3", None, &app, true));
    kube.apply(
        PODS,
        pod("other", Some(&ip(net, 3)), &[("app", "other")], true),
    );
    // Unusable labels: skipped (and logged), the rest of the pool is unaffected.
    kube.apply(
        PODS,
        pod(
            "bad-role",
            Some(&ip(net, 9)),
            &[("app", "vllm"), (ROLE_LABEL, "both")],
            true,
        ),
    );
    let sched = start_scheduler(&kube, selector("vllm", port), "round-robin").await;

    // Only the ready, matching pod with an IP.
    sched.until_set(&[addr(1)]).await;
    assert_eq!(sched.pick().await, addr(1));

    // vllm-2 becomes ready: it joins and gets picks, and it is a live server.
    kube.apply(PODS, pod("vllm-2", Some(&ip(net, 2)), &app, true));
    sched.until_set(&[addr(1), addr(2)]).await;
    let mut picks = Vec::new();
    for _ in 0..4 {
        picks.push(sched.pick().await);
    }
    assert!(picks.contains(&addr(2)), "{picks:?}");
    assert!(picks.contains(&addr(1)), "{picks:?}");
    complete_at(&addr(2)).await;

    // vllm-3 gets its IP: it joins too.
    kube.apply(PODS, pod("vllm-3", Some(&ip(net, 3)), &app, true));
    sched.until_set(&[addr(1), addr(2), addr(3)]).await;

    // vllm-1 stops being ready: it leaves, and is never picked again.
    kube.apply(PODS, pod("vllm-1", Some(&ip(net, 1)), &app, false));
    sched.until_set(&[addr(2), addr(3)]).await;
    for _ in 0..4 {
        assert_ne!(sched.pick().await, addr(1));
    }

    // vllm-2 is being deleted (deletionTimestamp set, the first step of a pod's deletion).
    let mut deleting = pod("vllm-2", Some(&ip(net, 2)), &app, true);
    deleting["metadata"]["deletionTimestamp"] = "2026-11-26T00:00:10Z".into();
    kube.apply(PODS, deleting);
    sched.until_set(&[addr(3)]).await;

    // vllm-3's labels change so that it no longer matches: the watch reports it gone.
    kube.apply(
        PODS,
        pod("vllm-3", Some(&ip(net, 3)), &[("app", "moved")], true),
    );
    sched.until("an empty set", |p| p.active_count() == 0).await;
    assert_eq!(sched.shared.lock().draining_count(), 0);
    for s in servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inference_pool_selector_change_retargets_the_scheduler() {
    let net = 2;
    let (servers, port) = pod_servers(net, 3).await;
    let kube = FakeKube::start().await;
    let addr = |i: u8| format!("{}:{port}", ip(net, i));
    kube.apply(POOLS, inference_pool("vllm-pool", "blue", &[port]));
    // Another pool in the namespace is not ours.
    kube.apply(POOLS, inference_pool("someone-else", "green", &[port]));
    for (name, i, app) in [
        ("blue-1", 1, "blue"),
        ("blue-2", 2, "blue"),
        ("green-1", 3, "green"),
    ] {
        let labels = [("app", app), (ACCELERATOR_LABEL, "h100")];
        kube.apply(PODS, pod(name, Some(&ip(net, i)), &labels, true));
    }
    let sched = start_scheduler(
        &kube,
        KubeSource::InferencePool("vllm-pool".into()),
        "goodput",
    )
    .await;
    sched.until_set(&[addr(1), addr(2)]).await;
    assert_eq!(
        sched.shared.lock().variant_count(),
        1,
        "one variant (h100, tp 1, unified) from the pod labels"
    );
    let dest = sched.pick().await;
    assert!(dest == addr(1) || dest == addr(2), "{dest}");

    // The pool now selects the green pods.
    kube.apply(POOLS, inference_pool("vllm-pool", "green", &[port]));
    sched.until_set(&[addr(3)]).await;
    assert_eq!(sched.pick().await, addr(3));
    complete_at(&addr(3)).await;

    // Its target port moves to one nothing listens on: the endpoints follow (and are down).
    let other = free_port(IpAddr::V4(Ipv4Addr::new(127, 0, net, 3)));
    kube.apply(POOLS, inference_pool("vllm-pool", "green", &[other]));
    let moved = format!("{}:{other}", ip(net, 3));
    sched
        .until("the new target port", |p| {
            p.endpoints()
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>()
                == vec![moved.clone()]
        })
        .await;

    // A bad edit (no target ports) is refused: the last good endpoints stay.
    kube.apply(POOLS, inference_pool("vllm-pool", "blue", &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sched
            .shared
            .lock()
            .endpoints()
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>(),
        vec![moved]
    );
    for s in servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_in_flight_to_a_removed_endpoint_finishes_and_then_frees_it() {
    let net = 3;
    let (servers, port) = pod_servers(net, 3).await;
    let kube = FakeKube::start().await;
    let addr = |i: u8| format!("{}:{port}", ip(net, i));
    let app = [("app", "vllm")];
    kube.apply(PODS, pod("vllm-1", Some(&ip(net, 1)), &app, true));
    kube.apply(PODS, pod("vllm-2", Some(&ip(net, 2)), &app, true));
    let sched = start_scheduler(&kube, selector("vllm", port), "least-requests").await;
    sched.until_set(&[addr(1), addr(2)]).await;

    let open = sched.open().await;
    let busy = open.dest.clone();
    let (busy_pod, busy_ip, idle) = if busy == addr(1) {
        ("vllm-1", ip(net, 1), addr(2))
    } else {
        ("vllm-2", ip(net, 2), addr(1))
    };
    let busy_slot = sched.shared.lock().slot_of(&busy).unwrap();
    assert_eq!(sched.shared.lock().in_flight(busy_slot), 1);

    // Its pod stops being ready while the request is in flight.
    kube.apply(PODS, pod(busy_pod, Some(&busy_ip), &app, false));
    sched
        .until("the busy endpoint draining", |p| {
            p.draining_count() == 1 && p.active_count() == 1
        })
        .await;
    for _ in 0..3 {
        assert_eq!(
            sched.pick().await,
            idle,
            "a draining endpoint is not picked"
        );
    }
    // A new pod joins meanwhile: it gets its own slot, not the draining one.
    kube.apply(PODS, pod("vllm-3", Some(&ip(net, 3)), &app, true));
    sched.until_set(&[idle.clone(), addr(3)]).await;
    let new_slot = sched.shared.lock().slot_of(&addr(3)).unwrap();
    assert_ne!(new_slot, busy_slot);

    // The request completes normally, counted out of the endpoint it went to.
    open.finish().await;
    sched
        .until("the drained endpoint released", |p| {
            p.draining_count() == 0 && p.slot_of(&busy).is_none()
        })
        .await;
    assert_eq!(sched.shared.lock().in_flight(new_slot), 0);
    let mut text = String::new();
    let registry = {
        let mut r = prometheus_client::registry::Registry::with_prefix("goodput_scheduler");
        sched.shared.metrics.register(&mut r);
        r
    };
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        !text.contains(&format!("endpoint=\"{busy}\"")),
        "the released endpoint's in-flight series is gone:\n{text}"
    );
    assert!(text.contains(&format!("endpoint=\"{idle}\"")), "{text}");

    // The freed slot goes to the next joiner, which starts with nothing in flight.
    kube.apply(PODS, pod(busy_pod, Some(&busy_ip), &app, true));
    sched.until_set(&[idle, addr(3), busy.clone()]).await;
    let slot = sched.shared.lock().slot_of(&busy).unwrap();
    assert_eq!(sched.shared.lock().in_flight(slot), 0);
    for s in servers {
        s.shutdown().await;
    }
}
