//! Real Envoy (1.40, from `scripts/tools.sh`) -> goodput's scheduler (ext_proc) -> several
//! `goodput sim serve` servers of different speeds, all real processes or in-process servers
//! speaking the real protocols; nothing is imitated.
//!
//! Envoy's config is written by the test: the ext_proc filter in FULL_DUPLEX_STREAMED mode for
//! request and response bodies with trailers SEND (what gateways configure), or BUFFERED, and
//! an ORIGINAL_DST cluster reading `x-gateway-destination-endpoint`. "Picked endpoint
//! honoured" is checked by comparing the scheduler's per-endpoint dispatch counts with each
//! server's own `vllm:request_success_total`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use goodput_core::catalog::Catalog;
use goodput_scheduler::server::extproc::Shared;
use goodput_scheduler::server::pool::Staleness;
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn envoy_bin() -> PathBuf {
    let dir = std::env::var("GOODPUT_TOOLS").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin"),
        PathBuf::from,
    );
    let bin = dir.join("envoy");
    assert!(
        bin.is_file(),
        "envoy not found at {}: run `bash scripts/tools.sh` (or set GOODPUT_TOOLS)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCAL, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    FullDuplex,
    Buffered,
}

fn envoy_config(listen: u16, admin: u16, ext_proc: u16, mode: Mode) -> String {
    let processing = match mode {
        Mode::FullDuplex => {
            "request_header_mode: SEND\n                response_header_mode: SEND\n                request_body_mode: FULL_DUPLEX_STREAMED\n                response_body_mode: FULL_DUPLEX_STREAMED\n                request_trailer_mode: SEND\n                response_trailer_mode: SEND"
        }
        Mode::Buffered => {
            "request_header_mode: SEND\n                response_header_mode: SEND\n                request_body_mode: BUFFERED\n                response_body_mode: NONE\n                request_trailer_mode: SKIP\n                response_trailer_mode: SKIP"
        }
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: inference
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inference
          route_config:
            name: inference
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: original_destination_cluster
                  timeout: 86400s
                  idle_timeout: 86400s
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: ext_proc}}
                timeout: 10s
              failure_mode_allow: false
              message_timeout: 10s
              metadata_options:
                receiving_namespaces: {{untyped: ["envoy.lb"]}}
              processing_mode:
                {processing}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  clusters:
  - name: original_destination_cluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    original_dst_lb_config:
      use_http_header: true
      http_header_name: x-gateway-destination-endpoint
  - name: ext_proc
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: ext_proc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {ext_proc}}}}}
"#
    )
}

/// Envoy as a child process, killed on drop.
struct Envoy {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_envoy(ext_proc: u16, mode: Mode) -> Envoy {
    let (listen, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("goodput-envoy-{}-{listen}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, envoy_config(listen, admin, ext_proc, mode)).unwrap();
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&cfg)
        .args([
            "--use-dynamic-base-id",
            "--concurrency",
            "2",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn envoy");
    let mut envoy = Envoy {
        child,
        url: format!("http://127.0.0.1:{listen}"),
        _dir: TempDir(dir.clone()),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = envoy.child.try_wait() {
            let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
            panic!("envoy exited ({status}):\n{log}");
        }
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
            && r.status().is_success()
        {
            return envoy;
        }
        assert!(Instant::now() < deadline, "envoy not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scheduler in-process on an ephemeral port.
struct Scheduler {
    shared: Arc<Shared>,
    port: u16,
    metrics_url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn staleness() -> Staleness {
    Staleness {
        stale_after: Duration::from_secs(2),
        down_after: Duration::from_secs(30),
        down_after_failures: 3,
    }
}

async fn start_scheduler(endpoints: String, picker: &str) -> Scheduler {
    let config = ServeConfig {
        endpoints: EndpointSource::List(endpoints),
        picker: picker.into(),
        scrape_interval: Duration::from_millis(50),
        staleness: staleness(),
        retrain_interval_s: 1.0,
        ..Default::default()
    };
    let running = build(&config).unwrap();
    let shared = Arc::clone(&running.shared);
    let grpc = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let metrics = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let metrics_url = format!("http://{}/metrics", metrics.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(serve_running(
        running,
        config.scrape_interval,
        grpc,
        Some(metrics),
        async {
            let _ = rx.await;
        },
    ));
    Scheduler {
        shared,
        port,
        metrics_url,
        stop: Some(tx),
    }
}

impl Scheduler {
    async fn wait_ready(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.shared.lock().health_counts(Instant::now()).0;
            if ready >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {ready} of {n} endpoints ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn dispatched(&self) -> Vec<u64> {
        let pool = self.shared.lock();
        (0..pool.len()).map(|i| pool.dispatched(i)).collect()
    }

    fn in_flight(&self) -> Vec<u32> {
        let pool = self.shared.lock();
        (0..pool.len()).map(|i| pool.in_flight(i)).collect()
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let text = reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line_prefix}` in scheduler metrics:\n{text}"))
    }
}

async fn servers(accelerator: &str, n: u16) -> LiveServers {
    let cfg = ServerConfig {
        accelerator: accelerator.into(),
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, 0, n)
        .await
        .unwrap()
}

async fn served(addr: SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("vllm:request_success_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The outcome of one streamed completion through Envoy.
#[derive(Debug)]
struct Streamed {
    status: u16,
    body: String,
    text_chunks: usize,
    done: bool,
}

async fn stream_completion(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    max_tokens: u32,
    headers: &[(&str, &str)],
) -> Result<Streamed, String> {
    let body = serde_json::json!({
        "model": "llama-3.1-8b",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": true,
    });
    let mut req = client.post(format!("{url}/v1/completions")).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut text = String::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(None) => break,
            Err(e) => return Err(format!("stream broke after {} bytes: {e}", text.len())),
        }
    }
    let text_chunks = text
        .split("data: ")
        .filter(|e| e.starts_with('{') && e.contains("\"text\":\" "))
        .count();
    Ok(Streamed {
        status,
        done: text.contains("data: [DONE]"),
        body: text,
        text_chunks,
    })
}

fn prompt(group: usize, turn: usize) -> String {
    // A shared 1 KiB system prompt per group, then a per-request question.
    format!(
        "{}{}",
        format!("system prompt of group {group:04} ").repeat(32),
        format!(" question {turn} please answer").repeat(4)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_routes_every_request_to_the_picked_endpoint_with_streams_intact() {
    let fast = servers("h100", 2).await;
    let slow = servers("l40s", 1).await;
    let addrs: Vec<SocketAddr> = fast.addrs.iter().chain(&slow.addrs).copied().collect();
    let list = format!(
        "{} accelerator=h100, {} accelerator=h100, {} accelerator=l40s",
        addrs[0], addrs[1], addrs[2]
    );
    let sched = start_scheduler(list, "goodput").await;
    sched.wait_ready(3).await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let client = reqwest::Client::new();

    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, url) = (client.clone(), envoy.url.clone());
        tasks.push(tokio::spawn(async move {
            let slo: &[(&str, &str)] = if i % 2 == 0 {
                &[
                    ("x-llm-d-slo-ttft-ms", "2000"),
                    ("x-llm-d-slo-tpot-ms", "200"),
                ]
            } else {
                &[("x-slo-ttft-ms", "2000")]
            };
            stream_completion(&client, &url, &prompt(i % 5, i), 12, slo).await
        }));
    }
    for t in tasks {
        let s = t.await.unwrap().expect("stream");
        assert_eq!(s.status, 200, "{}", s.body);
        assert!(s.done, "stream not terminated by [DONE]: {}", s.body);
        assert_eq!(s.text_chunks, 12, "one chunk per token: {}", s.body);
    }

    // A chat request and a non-streaming request take the same path.
    let chat = client
        .post(format!("{}/v1/chat/completions", envoy.url))
        .json(&serde_json::json!({
            "model": "llama-3.1-8b",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 5,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let v: serde_json::Value = chat.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");

    // Every request reached the endpoint the scheduler picked: per-server counts agree.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dispatched = sched.dispatched();
    let mut served_counts = Vec::new();
    for a in &addrs {
        served_counts.push(served(*a).await);
    }
    assert_eq!(dispatched.iter().sum::<u64>(), 41);
    assert_eq!(
        dispatched, served_counts,
        "scheduler picks vs servers' own counts"
    );
    assert!(
        dispatched[0] + dispatched[1] > dispatched[2],
        "the faster H100s take more than the L40S: {dispatched:?}"
    );
    assert_eq!(
        sched.in_flight(),
        vec![0, 0, 0],
        "every request left flight"
    );
    assert!(
        sched
            .metric("goodput_scheduler_picks_total{outcome=\"scored\"}")
            .await
            >= 41.0
    );
    assert!(
        sched
            .metric("goodput_scheduler_training_samples_total")
            .await
            >= 40.0
    );
    assert!(
        sched
            .metric("goodput_scheduler_observed_ttft_seconds_count")
            .await
            >= 40.0
    );

    fast.shutdown().await;
    slow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_bodies_are_routed_too() {
    let s = servers("h100", 2).await;
    let list = format!("{}, {}", s.addrs[0], s.addrs[1]);
    let sched = start_scheduler(list, "round-robin").await;
    sched.wait_ready(2).await;
    let envoy = start_envoy(sched.port, Mode::Buffered).await;
    let client = reqwest::Client::new();
    for i in 0..6 {
        let r = stream_completion(&client, &envoy.url, &prompt(i, i), 4, &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.done && r.text_chunks == 4, "{}", r.body);
    }
    let dispatched = sched.dispatched();
    assert_eq!(dispatched, vec![3, 3], "round-robin over both");
    assert_eq!(
        dispatched,
        vec![served(s.addrs[0]).await, served(s.addrs[1]).await]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reliability_malformed_bodies_shedding_predictor_down_and_no_endpoint() {
    let s = servers("h100", 1).await;
    let dead = free_port(); // listed but never listening: down
    let list = format!("{} accelerator=h100, 127.0.0.1:{dead}", s.addrs[0]);
    let sched = start_scheduler(list, "goodput").await;
    sched.wait_ready(1).await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", envoy.url);

    // Malformed bodies: an immediate 400 naming the problem; nothing routed.
    for (body, needle) in [
        ("{not json", "not valid JSON"),
        (r#"{"prompt":"x"}"#, "model"),
        (
            r#"{"model":"m","prompt":"x","max_tokens":-1}"#,
            "max_tokens",
        ),
    ] {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    let r = client
        .post(&url)
        .header("x-llm-d-slo-ttft-ms", "soon")
        .json(&serde_json::json!({"model": "llama-3.1-8b", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(sched.dispatched(), vec![0, 0]);

    // A sheddable request no endpoint can serve in time: 429. Not sheddable: served.
    let impossible = [
        ("x-llm-d-slo-ttft-ms", "0.001"),
        ("x-goodput-priority", "-1"),
    ];
    let r = stream_completion(&client, &envoy.url, "hello", 2, &impossible)
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    let r = stream_completion(&client, &envoy.url, "hello", 2, &impossible[..1])
        .await
        .unwrap();
    assert_eq!((r.status, r.done), (200, true), "{}", r.body);

    // Predictor unavailable: picks fall back to load and requests are still served.
    let fallback_before = sched
        .metric("goodput_scheduler_picks_total{outcome=\"fallback\"}")
        .await;
    sched.shared.latency.set_disabled(true);
    for _ in 0..3 {
        let r = stream_completion(&client, &envoy.url, "hello again", 3, &[])
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.done, r.text_chunks),
            (200, true, 3),
            "{}",
            r.body
        );
    }
    let fallback_after = sched
        .metric("goodput_scheduler_picks_total{outcome=\"fallback\"}")
        .await;
    assert_eq!(fallback_after - fallback_before, 3.0);
    assert_eq!(sched.dispatched(), vec![4, 0], "never the down endpoint");

    // The only live server goes away: 503 once its scrapes fail, no crash.
    s.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.shared.lock().health_counts(Instant::now()).0 > 0 {
        assert!(Instant::now() < deadline, "endpoint never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stream_completion(&client, &envoy.url, "anyone?", 2, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        sched
            .metric("goodput_scheduler_picks_total{outcome=\"no_endpoint\"}")
            .await
            >= 1.0
    );
    assert!(
        sched
            .metric("goodput_scheduler_picks_total{outcome=\"error\"}")
            .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_dying_mid_stream_and_stale_metrics() {
    let doomed = servers("h100", 1).await;
    let spare_port = free_port();
    let list = format!("{}, 127.0.0.1:{spare_port}", doomed.addrs[0]);
    let sched = start_scheduler(list, "goodput").await;
    sched.wait_ready(1).await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let client = reqwest::Client::new();

    // A long stream to the only ready endpoint; the server dies while it streams.
    let long = {
        let (client, url) = (client.clone(), envoy.url.clone());
        tokio::spawn(async move {
            stream_completion(&client, &url, "tell a long story", 4000, &[]).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.in_flight()[0] == 0 {
        assert!(Instant::now() < deadline, "long request never dispatched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.shutdown().await;
    match long.await.unwrap() {
        Ok(s) => assert!(
            !s.done,
            "a stream cut mid-way must not look complete: {}",
            &s.body[..s.body.len().min(300)]
        ),
        Err(_) => {} // the client saw the break
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.in_flight() != vec![0, 0] {
        assert!(
            Instant::now() < deadline,
            "in flight stuck at {:?}",
            sched.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A replacement comes up on the spare endpoint; traffic moves there.
    let cfg = ServerConfig {
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    let spare = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, spare_port, 1)
        .await
        .unwrap();
    sched.wait_ready(1).await;
    let r = stream_completion(&client, &envoy.url, "are you there", 3, &[])
        .await
        .unwrap();
    assert_eq!((r.status, r.done), (200, true), "{}", r.body);
    assert_eq!(sched.dispatched(), vec![1, 1]);

    // Stale metrics: five seconds without a good scrape makes the spare stale (the doomed
    // one stays down); a stale endpoint is still used when nothing is ready, never a down one.
    let later = Instant::now() + Duration::from_secs(5);
    let req = goodput_scheduler::PickRequest {
        prompt_tokens: 10,
        block_tokens: 16,
        ..Default::default()
    };
    {
        let mut pool = sched.shared.lock();
        assert_eq!(pool.health(1, later), goodput_scheduler::Health::Stale);
        assert_eq!(pool.health(0, later), goodput_scheduler::Health::Down);
        let (d, t) = pool.pick(&req, &goodput_scheduler::NoPredictions, later);
        assert!(matches!(d, goodput_scheduler::Decision::Route(_)));
        let t = t.unwrap();
        assert_eq!(t.slot, 1);
        pool.finished(&t, false);
    }
    spare.shutdown().await;
}
