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
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use goodput_core::catalog::Catalog;
use goodput_scheduler::GoodputConfig;
use goodput_scheduler::server::envoy::{self, BodyMode, EnvoyProcess, Upstream};
use goodput_scheduler::server::extproc::Shared;
use goodput_scheduler::server::pool::Staleness;
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_port() -> u16 {
    envoy::free_port().unwrap()
}

/// A loopback port for a server that the test starts only later. A port from [`free_port`]
/// comes from the kernel's ephemeral range, where outgoing connections take their local ports
/// too: one took such a port before the late server bound it (`AddrInUse`, seen once on a CI
/// run). Below that range only a listener binds a port, so the port stays free until the test
/// binds it (each call in this process gets another one).
fn port_for_later() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(LOWEST);
    assert!(
        span > 0,
        "no ports below the ephemeral range ({ephemeral_start})"
    );
    // Another test binary may run beside this one: start at a place of this process's own.
    let start = std::process::id() % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(LOWEST + offset).unwrap();
        if std::net::TcpListener::bind((LOCAL, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_start}");
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    FullDuplex,
    Buffered,
}

/// Envoy from `scripts/tools.sh`; a missing binary fails the test with a message naming it.
async fn start_envoy(ext_proc_port: u16, mode: Mode) -> EnvoyProcess {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = envoy::envoy_binary(&root).unwrap_or_else(|e| panic!("{e}"));
    let mode = match mode {
        Mode::FullDuplex => BodyMode::FullDuplex,
        Mode::Buffered => BodyMode::Buffered,
    };
    EnvoyProcess::start(
        &bin,
        &Upstream::Picker {
            ext_proc_port,
            mode,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
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
    start_scheduler_holding(endpoints, picker, Duration::ZERO).await
}

async fn start_scheduler_holding(endpoints: String, picker: &str, hold: Duration) -> Scheduler {
    start_scheduler_with(endpoints, picker, hold, GoodputConfig::default()).await
}

async fn start_scheduler_with(
    endpoints: String,
    picker: &str,
    hold: Duration,
    goodput: GoodputConfig,
) -> Scheduler {
    let config = ServeConfig {
        endpoints: EndpointSource::List(endpoints),
        picker: picker.into(),
        goodput,
        scrape_interval: Duration::from_millis(50),
        staleness: staleness(),
        retrain_interval_s: 1.0,
        hold_when_no_endpoint: hold,
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
    servers_on(accelerator, 0, n).await
}

/// `n` servers on ports `port_base..` (ephemeral ports when 0), 20x real speed.
async fn servers_on(accelerator: &str, port_base: u16, n: u16) -> LiveServers {
    let cfg = ServerConfig {
        accelerator: accelerator.into(),
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, port_base, n)
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
    // Latency first (no comfortable tier): at this light load every endpoint would be
    // comfortable and the picks balanced, and this test shows that the predictions, not the
    // load, steer what Envoy routes. The tier itself is covered beside the picker and in the
    // simulator.
    let latency_first = GoodputConfig {
        comfort: 0.0,
        ..Default::default()
    };
    let sched = start_scheduler_with(list, "goodput", Duration::ZERO, latency_first).await;
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
    eprintln!("dispatched per endpoint (h100, h100, l40s): {dispatched:?}");
    assert_eq!(dispatched.iter().sum::<u64>(), 41);
    assert_eq!(
        dispatched, served_counts,
        "scheduler picks vs servers' own counts"
    );
    // Round-robin would split 14/14/13; the picker's predictions see the L40S as ~3x slower.
    assert!(
        dispatched[0] > 2 * dispatched[2] && dispatched[1] > 2 * dispatched[2],
        "each faster H100 takes more than twice the L40S's share: {dispatched:?}"
    );
    assert_eq!(
        sched.in_flight(),
        vec![0, 0, 0],
        "every request left flight"
    );
    for probe in ["healthz", "readyz"] {
        let url = sched.metrics_url.replace("metrics", probe);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200, "{url}");
    }
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
    let readyz = sched.metrics_url.replace("metrics", "readyz");
    assert_eq!(
        reqwest::get(&readyz).await.unwrap().status(),
        503,
        "no endpoint ready"
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
    let spare_port = port_for_later();
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
    // The client sees the break (an error), or a body that never completes.
    if let Ok(s) = long.await.unwrap() {
        assert!(
            !s.done && s.text_chunks < 4000,
            "a stream cut mid-way must not look complete: {}",
            &s.body[..s.body.len().min(300)]
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_uncached_prompts_are_split_onto_a_prefill_server() {
    let catalog = Catalog::builtin();
    let role = |role| ServerConfig {
        role,
        time_scale: 20.0,
        ..ServerConfig::default()
    };
    let decode = LiveServers::start(&catalog, &role(goodput_core::Role::Decode), LOCAL, 0, 1)
        .await
        .unwrap();
    let prefill = LiveServers::start(&catalog, &role(goodput_core::Role::Prefill), LOCAL, 0, 1)
        .await
        .unwrap();
    let list = format!(
        "{} role=decode accelerator=h100, {} role=prefill accelerator=h100",
        decode.addrs[0], prefill.addrs[0]
    );
    let sched = start_scheduler(list, "goodput").await;
    sched.wait_ready(2).await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let client = reqwest::Client::new();

    // Short prompt: decode server alone.
    let r = stream_completion(&client, &envoy.url, "short prompt", 3, &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.done, r.text_chunks),
        (200, true, 3),
        "{}",
        r.body
    );
    assert_eq!(served(prefill.addrs[0]).await, 0);
    // About 2000 uncached tokens (over the 1024 default): prefilled on the prefill server,
    // named to the decode server in `x-prefiller-host-port`.
    let long = "a long document to summarise ".repeat(280);
    let r = stream_completion(&client, &envoy.url, &long, 3, &[])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.done, r.text_chunks),
        (200, true, 3),
        "{}",
        r.body
    );
    assert_eq!(
        served(prefill.addrs[0]).await,
        1,
        "the prefill server ran the prompt"
    );
    assert_eq!(served(decode.addrs[0]).await, 2);
    assert_eq!(
        sched.dispatched(),
        vec![2, 0],
        "the client's request goes to the decode pod"
    );
    decode.shutdown().await;
    prefill.shutdown().await;
}

/// Scale from zero as the gateway sees it: with no endpoint ready, a request is held (and
/// counted in `requests_waiting`) rather than answered 503, and is served once a replica comes
/// up; past the hold time it gets the 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_waits_for_a_replica_to_come_up() {
    let port = port_for_later(); // the replica that is not there yet
    let list = format!("127.0.0.1:{port} accelerator=h100");
    let sched = start_scheduler_holding(list, "goodput", Duration::from_secs(30)).await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let client = reqwest::Client::new();
    assert_eq!(
        sched.metric("goodput_scheduler_requests_waiting ").await,
        0.0
    );
    // Ready although no endpoint is: it takes requests to hold them.
    let readyz = sched.metrics_url.replace("metrics", "readyz");
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    let held = {
        let (client, url) = (client.clone(), envoy.url.clone());
        tokio::spawn(async move { stream_completion(&client, &url, "wake up", 3, &[]).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.metric("goodput_scheduler_requests_waiting ").await < 1.0 {
        assert!(Instant::now() < deadline, "the request was never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held for a while, not answered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!held.is_finished(), "answered with nothing to serve it");
    assert_eq!(
        sched.metric("goodput_scheduler_requests_waiting ").await,
        1.0
    );
    // The replica comes up on the listed port: the held request is served by it.
    let replica = servers_on("h100", port, 1).await;
    let r = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the held request was not served after the replica came up")
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.done, r.text_chunks),
        (200, true, 3),
        "{}",
        r.body
    );
    assert_eq!(served(replica.addrs[0]).await, 1);
    assert_eq!(
        sched.metric("goodput_scheduler_requests_waiting ").await,
        0.0
    );
    assert_eq!(
        sched
            .metric("goodput_scheduler_picks_total{outcome=\"no_endpoint\"}")
            .await,
        0.0
    );
    replica.shutdown().await;

    // With a short hold and no replica coming, the wait ends in a 503.
    let sched = start_scheduler_holding(
        format!("127.0.0.1:{} accelerator=h100", free_port()),
        "goodput",
        Duration::from_millis(500),
    )
    .await;
    let envoy = start_envoy(sched.port, Mode::FullDuplex).await;
    let t0 = Instant::now();
    let r = stream_completion(&client, &envoy.url, "anyone?", 2, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(t0.elapsed() >= Duration::from_millis(500), "not held");
    assert_eq!(
        sched.metric("goodput_scheduler_requests_waiting ").await,
        0.0
    );
}
