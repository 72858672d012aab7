//! The load generator against live servers: client-measured TTFT/ITL agree with the servers'
//! own histograms (within their resolution), queues build when load exceeds capacity, errors
//! are reported per kind, and trace files replay. Everything runs on loopback, in-process.

// Helpers outside #[test] functions unwrap too: this whole crate is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod live_common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use goodput_core::{Catalog, Slo};
use goodput_sim::live::load::{LoadConfig, run_load};
use goodput_sim::live::{FaultConfig, LiveServers, ServerConfig};
use goodput_sim::workload::generate::{GeneratorSpec, LengthProfile};
use goodput_sim::workload::trace::load_trace;
use live_common::{bucket_of, count_sum, quantile, scrape, value};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn workload(
    rate: f64,
    duration_s: f64,
    input: u32,
    output: u32,
) -> goodput_sim::workload::Workload {
    GeneratorSpec {
        rate,
        duration_s,
        arrival: Default::default(),
        envelope: Default::default(),
        lengths: LengthProfile::Fixed { input, output },
        prefix: None,
        seed: 7,
    }
    .generate()
    .unwrap()
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_latencies_agree_with_server_histograms() {
    // Llama-3.1-8B on an L40S in real time: decode steps of ~20 ms and prefills of tens of ms,
    // large against the loopback HTTP overhead.
    let scale = 1.0;
    let cfg = ServerConfig {
        accelerator: "l40s".into(),
        time_scale: scale,
        ..ServerConfig::default()
    };
    let servers = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, 0, 1)
        .await
        .unwrap();
    let base = servers.urls()[0].clone();
    let load = LoadConfig {
        urls: vec![base.clone()],
        max_duration_s: 10.0,
        request_timeout_s: 30.0,
        slo: Some(Slo {
            ttft_ms: 10_000.0,
            itl_ms: 1_000.0,
            percentile: 100.0,
        }),
        ..LoadConfig::default()
    };
    let (report, samples) = run_load(&load, &workload(6.0, 3.0, 512, 24)).await.unwrap();
    assert!(report.sent >= 5, "{report:?}");
    assert_eq!(report.completed, report.sent, "{:?}", report.errors);
    assert_eq!(report.slo.unwrap().attainment, 1.0);

    let m = scrape(&reqwest::Client::new(), &base).await;
    // Every request and every token was seen by both sides.
    let (ttft_count, _) = count_sum(&m, "vllm:time_to_first_token_seconds");
    assert_eq!(ttft_count as usize, report.completed);
    let (itl_count, _) = count_sum(&m, "vllm:inter_token_latency_seconds");
    let tokens: u32 = samples.iter().map(|s| s.output_tokens).sum();
    assert_eq!(tokens, 24 * report.completed as u32);
    assert_eq!(itl_count as u32, tokens - report.completed as u32);

    // Client quantiles (in simulated seconds) fall where the server's histograms put them, to
    // within one bucket of the histogram.
    let mut ttft: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.ttft_s)
        .map(|t| t * scale)
        .collect();
    let mut itl: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.itl_s.clone())
        .map(|t| t * scale)
        .collect();
    for (name, values) in [
        ("vllm:time_to_first_token_seconds", &mut ttft),
        ("vllm:inter_token_latency_seconds", &mut itl),
    ] {
        let fam = &m[name];
        for q in [0.5, 0.9] {
            let server = quantile(fam, name, q).unwrap();
            let client = percentile(values, q);
            let (lo, hi) = bucket_of(fam, name, server);
            let width = hi - lo;
            assert!(
                (client - server).abs() <= width,
                "{name} p{}: client {client:.4} s vs server {server:.4} s (bucket {lo}..{hi})",
                q * 100.0
            );
        }
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_rise_when_load_exceeds_capacity() {
    // Two sequences at a time, long outputs, many arrivals: the queue must build.
    let cfg = ServerConfig {
        time_scale: 10.0,
        max_num_seqs: Some(2),
        ..ServerConfig::default()
    };
    let servers = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, 0, 1)
        .await
        .unwrap();
    let base = servers.urls()[0].clone();
    let load = LoadConfig {
        urls: vec![base.clone()],
        request_timeout_s: 60.0,
        ..LoadConfig::default()
    };
    let w = workload(40.0, 1.0, 128, 200);
    let runner = tokio::spawn(async move { run_load(&load, &w).await });
    let client = reqwest::Client::new();
    let mut max_waiting = 0.0f64;
    let mut max_running = 0.0f64;
    while !runner.is_finished() {
        let m = scrape(&client, &base).await;
        max_waiting = max_waiting.max(value(&m, "vllm:num_requests_waiting"));
        max_running = max_running.max(value(&m, "vllm:num_requests_running"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (report, _) = runner.await.unwrap().unwrap();
    assert_eq!(report.completed, report.sent);
    assert!(max_running <= 2.0, "running {max_running}");
    assert!(max_waiting >= 5.0, "waiting peaked at {max_waiting}");
    let m = scrape(&client, &base).await;
    assert_eq!(value(&m, "vllm:num_requests_waiting"), 0.0);
    // Queueing shows in the server's own queue-time histogram too.
    let (n, sum) = count_sum(&m, "vllm:request_queue_time_seconds");
    assert!(n > 0.0 && sum / n > 0.1, "mean queue time {}", sum / n);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_load_reports_errors_by_kind_and_replays_traces() {
    let catalog = Catalog::builtin();
    let good = LiveServers::start(
        &catalog,
        &ServerConfig {
            time_scale: 20.0,
            ..ServerConfig::default()
        },
        LOCAL,
        0,
        1,
    )
    .await
    .unwrap();
    let bad = LiveServers::start(
        &catalog,
        &ServerConfig {
            time_scale: 20.0,
            faults: FaultConfig {
                error_rate: 1.0,
                ..FaultConfig::default()
            },
            ..ServerConfig::default()
        },
        LOCAL,
        0,
        1,
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("goodput-live-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("mini.csv");
    let mut csv = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for i in 0..10 {
        csv.push_str(&format!(
            "2023-11-16 18:15:46.{:03}0000,{},{}\n",
            i * 50,
            100 + i * 10,
            5 + i
        ));
    }
    std::fs::write(&trace, csv).unwrap();
    let w = load_trace(&trace).unwrap();
    assert_eq!(w.requests.len(), 10);
    let load = LoadConfig {
        urls: vec![good.urls()[0].clone(), bad.urls()[0].clone()],
        request_timeout_s: 30.0,
        slo: Some(Slo {
            ttft_ms: 60_000.0,
            itl_ms: 60_000.0,
            percentile: 100.0,
        }),
        ..LoadConfig::default()
    };
    let (report, samples) = run_load(&load, &w).await.unwrap();
    assert_eq!(report.sent, 10);
    assert_eq!(report.completed, 5);
    assert_eq!(report.errors.get("http 500"), Some(&5));
    assert_eq!(report.slo.unwrap().attainment, 0.5);
    for s in &samples {
        assert_eq!(s.error.is_some(), s.target == 1);
        if s.error.is_none() {
            assert_eq!(s.output_tokens, w.requests[s.id as usize].output_tokens);
        }
    }
    let m = scrape(&reqwest::Client::new(), &good.urls()[0]).await;
    let prompt: u32 = w.requests.iter().step_by(2).map(|r| r.input_tokens).sum();
    assert_eq!(value(&m, "vllm:prompt_tokens_total") as u32, prompt);
    let _ = std::fs::remove_dir_all(&dir);
    good.shutdown().await;
    bad.shutdown().await;
}
