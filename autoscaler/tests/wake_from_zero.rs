//! Scale to zero and wake on the first request, end to end outside a cluster: goodput's
//! scheduler (in-process) behind a real Envoy holds requests while no replica is up and exports
//! them as `goodput_scheduler_requests_waiting`; a real Prometheus (Debian's binary) scrapes it
//! and the (absent) replica; `advise` with `policy.scaleToZero` and `metrics.gateway` takes the
//! idle fleet to zero, and recommends a replica again once a request waits at the gateway.
//! Without `metrics.gateway` the same spec never goes to zero. The held request is served when
//! the replica comes up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/prom.rs"]
mod prom;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use goodput_autoscaler::advise::{AdviseConfig, Advisor, gateway_demand};
use goodput_autoscaler::controller::run::now;
use goodput_autoscaler::metrics::PromHttp;
use goodput_core::Catalog;
use goodput_scheduler::server::envoy::{self, BodyMode, EnvoyProcess, Upstream};
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::net::TcpListener;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const CONFIG: &str = r#"
name: llama
namespace: llm
spec:
  model: llama-3.1-8b
  slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 60 } }
  variants:
    - name: h100
      pool: h100
      scaleTargetRef: { name: llama }
      minReplicas: 0
      maxReplicas: 8
  policy:
    intervalSeconds: 10
    startupSeconds: 30
    scaleDownStabilizationSeconds: 60
    scaleToZero: true
  metrics:
    window: 20s
    gateway: { matchers: { job: gateway } }
pools:
  h100: { acceleratorType: h100, devices: 8, pricePerDeviceHour: 4.0 }
"#;

fn at(t0: Timestamp, s: i64) -> Timestamp {
    t0.checked_add(SignedDuration::from_secs(s)).unwrap()
}

async fn desired(advisor: &mut Advisor<PromHttp>, t: Timestamp) -> (u32, String) {
    let out = advisor.step(t).await;
    let v = &out.status.variants[0];
    (v.desired_replicas, v.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_fleet_goes_to_zero_and_wakes_on_a_held_request() {
    // The replica's port: nothing listens there until the end.
    let replica_port = envoy::free_port().unwrap();
    let config = ServeConfig {
        endpoints: EndpointSource::List(format!("127.0.0.1:{replica_port} accelerator=h100")),
        scrape_interval: Duration::from_millis(50),
        hold_when_no_endpoint: Duration::from_secs(120),
        ..Default::default()
    };
    let running = build(&config).unwrap();
    let grpc = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let metrics = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let grpc_port = grpc.local_addr().unwrap().port();
    let metrics_addr = metrics.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_running(
        running,
        config.scrape_interval,
        grpc,
        Some(metrics),
        async {
            let _ = stop_rx.await;
        },
    ));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = envoy::envoy_binary(&root).unwrap_or_else(|e| panic!("{e}"));
    let envoy = EnvoyProcess::start(
        &bin,
        &Upstream::Picker {
            ext_proc_port: grpc_port,
            mode: BodyMode::FullDuplex,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let replica: SocketAddr = (LOCAL, replica_port).into();
    let mut prometheus =
        prom::Prometheus::start(&[("h100", &[replica]), ("gateway", &[metrics_addr])]).await;
    let prom_url = prometheus.url.clone();
    let client = || PromHttp::new(&prom_url, Duration::from_secs(5)).unwrap();
    let with_gateway = AdviseConfig::from_yaml(CONFIG, "test").unwrap();
    let mut without_gateway = with_gateway.clone();
    without_gateway.spec.metrics.gateway = None;

    // Wait for the first scrape of the scheduler: the signal is there, and zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway_demand(&client(), &with_gateway.spec).await != Some(0) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the scheduler"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Idle for longer than the 60 s stabilisation window (the advisor's clock is given).
    let t0 = now();
    let mut woken = Advisor::new(client(), with_gateway.clone(), None);
    let mut kept = Advisor::new(client(), without_gateway, None);
    for s in [0, 30, 70] {
        desired(&mut woken, at(t0, s)).await;
        desired(&mut kept, at(t0, s)).await;
    }
    let (zero, reason) = desired(&mut woken, at(t0, 80)).await;
    assert_eq!(zero, 0, "idle with a gateway signal: to zero ({reason})");
    let (one, reason) = desired(&mut kept, at(t0, 80)).await;
    assert_eq!(one, 1, "no gateway signal: one replica kept ({reason})");

    // A request arrives with no replica: the scheduler holds it, Prometheus sees it waiting,
    // and advise asks for a replica again.
    let url = format!("{}/v1/completions", envoy.url);
    let held = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(
                &serde_json::json!({"model": "llama-3.1-8b", "prompt": "wake up", "max_tokens": 3}),
            )
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway_demand(&client(), &with_gateway.spec)
        .await
        .unwrap_or(0)
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the held request never showed in Prometheus"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (wake, reason) = desired(&mut woken, at(t0, 90)).await;
    assert!(wake >= 1, "a request waits at the gateway: wake ({reason})");
    assert!(!held.is_finished(), "answered with no replica up");

    // The replica comes up where the scheduler expects it: the held request is served.
    let cfg = ServerConfig {
        accelerator: "h100".into(),
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    let servers = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, replica_port, 1)
        .await
        .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held request was not served once the replica came up")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    servers.shutdown().await;
    prometheus.stop();
    let _ = stop_tx.send(());
}
