//! The metrics pipeline end to end: simulated vLLM servers of two variants under load, scraped
//! by a real Prometheus (Debian's `prometheus`, started here with its own config and temporary
//! storage), queried through Prometheus' HTTP API by goodput's PromQL module. Every query must
//! return what the servers actually did, within histogram resolution; and `promtool check
//! metrics`, Prometheus' own parser, accepts the servers' exposition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use goodput_autoscaler::metrics::{Grouping, PromHttp, Scope, collect};
use goodput_core::Catalog;
use goodput_core::vllm::{ITL_BUCKETS, TTFT_BUCKETS};
use goodput_sim::live::load::{LoadConfig, RequestSample, run_load};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use goodput_sim::workload::generate::{GeneratorSpec, LengthProfile, PrefixProfile};

#[path = "support/prom.rs"]
mod prom;
use prom::Prometheus;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Sums every sample of `name` (any labels) in a text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the bucket holding `v`, as an index.
fn bucket(bounds: &[f64], v: f64) -> usize {
    bounds.partition_point(|b| *b < v)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_returns_what_the_servers_did() {
    let catalog = Catalog::builtin();
    // Real time: latencies on the servers are the latencies clients see.
    let h100_cfg = ServerConfig {
        time_scale: 1.0,
        ..ServerConfig::default()
    };
    let l40s_cfg = ServerConfig {
        accelerator: "l40s".into(),
        ..h100_cfg.clone()
    };
    let h100 = LiveServers::start(&catalog, &h100_cfg, LOCAL, 0, 2)
        .await
        .unwrap();
    let l40s = LiveServers::start(&catalog, &l40s_cfg, LOCAL, 0, 1)
        .await
        .unwrap();
    let prom = Prometheus::start(&[("h100", &h100.addrs), ("l40s", &l40s.addrs)]).await;
    // Let every target be scraped at zero before the load starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 256-token prompts (the first 128 shared by one of two groups) and 32 output tokens.
    let workload = GeneratorSpec {
        rate: 6.0,
        duration_s: 15.0,
        arrival: Default::default(),
        envelope: Default::default(),
        lengths: LengthProfile::Fixed {
            input: 256,
            output: 32,
        },
        prefix: Some(PrefixProfile {
            groups: 2,
            prefix_tokens: 128,
            zipf_exponent: 0.0,
        }),
        seed: 11,
    }
    .generate()
    .unwrap();
    let urls: Vec<String> = h100.urls().into_iter().chain(l40s.urls()).collect();
    let load = LoadConfig {
        urls: urls.clone(),
        max_duration_s: 30.0,
        request_timeout_s: 60.0,
        ..LoadConfig::default()
    };
    let client = PromHttp::new(&prom.url, Duration::from_secs(5)).unwrap();
    let mut scope = Scope::new("llama-3.1-8b");
    scope.window = "2m".into();
    scope.pod_label = "instance".into();

    // While the load runs, Prometheus sees requests running.
    let load_task = tokio::spawn(async move { run_load(&load, &workload).await });
    let mut running_seen = 0.0f64;
    while !load_task.is_finished() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Ok(obs) = collect(&client, &scope, Grouping::Variant).await {
            running_seen = running_seen.max(obs.values().map(|l| l.running).sum());
        }
    }
    let (report, samples) = load_task.await.unwrap().unwrap();
    assert_eq!((report.failed, report.dropped), (0, 0), "{report:?}");
    assert!(
        running_seen >= 1.0,
        "Prometheus never saw a running request"
    );
    // Two more scrapes so the last requests are in.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Ground truth: the servers' own counters, summed per variant.
    let http = reqwest::Client::new();
    let mut truth: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (variant, servers) in [("h100", &h100), ("l40s", &l40s)] {
        for url in servers.urls() {
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for name in [
                "vllm:request_success_total",
                "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total",
                "vllm:prefix_cache_hits_total",
                "vllm:prefix_cache_queries_total",
                "vllm:num_preemptions_total",
            ] {
                *truth.entry(variant).or_default().entry(name).or_default() +=
                    metric_sum(&text, name);
            }
        }
    }

    let obs = collect(&client, &scope, Grouping::Variant).await.unwrap();
    let window_s = 120.0;
    for (variant, replicas, targets) in [("h100", 2, 0..2usize), ("l40s", 1, 2..3usize)] {
        let load = &obs[&vec![variant.to_string()]];
        let t = &truth[variant];
        let finished = t["vllm:request_success_total"];
        assert!(finished > 10.0, "{variant}: only {finished} requests");
        assert_eq!(load.replicas_reporting, replicas, "{variant}");
        // Rates over the window, times the window, are the counts (Prometheus extrapolates
        // at most about one scrape interval at each end).
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= 0.15 * want + 1.0,
                "{variant} {what}: {got} vs {want}"
            );
        };
        close(load.request_rate * window_s, finished, "requests");
        close(
            load.prompt_token_rate * window_s,
            t["vllm:prompt_tokens_total"],
            "prompt tokens",
        );
        close(
            load.generation_token_rate * window_s,
            t["vllm:generation_tokens_total"],
            "generated tokens",
        );
        // Means are ratios of sums: exact.
        let mean_in = t["vllm:prompt_tokens_total"] / finished;
        assert!(
            (load.mean_prompt_tokens - mean_in).abs() < 1e-6 * mean_in,
            "{variant}"
        );
        assert!(
            (load.mean_prompt_tokens - 256.0).abs() < 1.0,
            "{}",
            load.mean_prompt_tokens
        );
        assert!(
            (load.mean_output_tokens - 32.0).abs() < 1e-6,
            "{}",
            load.mean_output_tokens
        );
        // Tail lengths within histogram resolution: 256 lies in vLLM's (200, 500] bucket.
        let p90_in = load.p90_prompt_tokens.unwrap();
        assert!(
            p90_in > 200.0 && p90_in <= 500.0,
            "{variant} p90 prompt {p90_in}"
        );
        let p90_out = load.p90_output_tokens.unwrap();
        assert!(
            p90_out > 20.0 && p90_out <= 50.0,
            "{variant} p90 output {p90_out}"
        );
        // Prefix hits: the exact ratio of the servers' counters.
        let hit = t["vllm:prefix_cache_hits_total"] / t["vllm:prefix_cache_queries_total"];
        assert!(
            hit > 0.1,
            "{variant}: shared prefixes should hit, got {hit}"
        );
        close(
            load.prefix_hit_rate * 1000.0,
            hit * 1000.0,
            "prefix hit rate (x1000)",
        );
        assert_eq!(t["vllm:num_preemptions_total"], 0.0);
        assert_eq!(load.preemption_rate, 0.0);
        // Latency quantiles within one histogram bucket of what the clients measured.
        let mine: Vec<&RequestSample> = samples
            .iter()
            .filter(|s| targets.contains(&s.target))
            .collect();
        let mut ttft: Vec<f64> = mine.iter().filter_map(|s| s.ttft_s).collect();
        let mut itl: Vec<f64> = mine.iter().flat_map(|s| s.itl_s.iter().copied()).collect();
        for (q, got) in [(0.5, load.ttft_p50_s), (0.9, load.ttft_p90_s)] {
            let (got, want) = (got.unwrap(), percentile(&mut ttft, q));
            let (a, b) = (bucket(TTFT_BUCKETS, got), bucket(TTFT_BUCKETS, want));
            assert!(
                a.abs_diff(b) <= 1,
                "{variant} TTFT p{q}: prometheus {got} vs clients {want}"
            );
        }
        for (q, got) in [(0.5, load.itl_p50_s), (0.9, load.itl_p90_s)] {
            let (got, want) = (got.unwrap(), percentile(&mut itl, q));
            let (a, b) = (bucket(ITL_BUCKETS, got), bucket(ITL_BUCKETS, want));
            assert!(
                a.abs_diff(b) <= 1,
                "{variant} ITL p{q}: prometheus {got} vs clients {want}"
            );
        }
        // Nothing left queued or running, no KV held, and the data is fresh.
        assert_eq!((load.waiting, load.running), (0.0, 0.0), "{variant}");
        assert_eq!(load.kv_usage, 0.0, "{variant}");
        assert!(load.age_s < 5.0, "{variant} age {}", load.age_s);
    }

    // Per pod: one observation per server.
    let pods = collect(&client, &scope, Grouping::Pod).await.unwrap();
    assert_eq!(pods.len(), 3, "{:?}", pods.keys());

    // Prometheus' own parser accepts the exposition.
    let text = http
        .get(format!("{}/metrics", urls[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let promtool = std::env::var("GOODPUT_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{promtool}` not found ({e}): install Debian's prometheus"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // promtool parses the page, then lints names. vLLM's own names draw exactly two lint
    // remarks (the `vllm:` colon, and `iteration_tokens_total` being a histogram); anything
    // else, a parse error above all, fails.
    let unexpected: Vec<&str> = complaints
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !l.ends_with("metric names should not contain ':'")
                && !l.ends_with("non-counter metrics should not have \"_total\" suffix")
        })
        .collect();
    assert!(unexpected.is_empty(), "promtool: {unexpected:?}");
    assert!(
        complaints.contains("vllm:time_to_first_token_seconds"),
        "promtool saw no metrics"
    );

    // A replica that goes away goes stale: its series vanish from instant queries.
    l40s.shutdown().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = collect(&client, &scope, Grouping::Variant).await.unwrap();
    assert!(
        !after.contains_key(&vec!["l40s".to_string()]),
        "{:?}",
        after.keys()
    );
    assert_eq!(after[&vec!["h100".to_string()]].replicas_reporting, 2);
    h100.shutdown().await;
}
