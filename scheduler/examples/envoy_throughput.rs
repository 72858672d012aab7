//! Request rate Envoy sustains with goodput's picker (ext_proc, FULL_DUPLEX_STREAMED,
//! ORIGINAL_DST) against the same Envoy with a plain round-robin cluster, same servers, one
//! run: closed-loop clients, phases alternating between the two Envoys.
//!
//! ```sh
//! bash scripts/tools.sh   # Envoy 1.40
//! cargo run --release -p goodput-scheduler --features server --example envoy_throughput -- [CLIENTS] [PHASE_S] [ROUNDS] [no-predictor] [request-only] [realistic]
//! ```
//! `realistic`: the servers run at the engine model's real speed (time scale 1) and requests are
//! 512-token prompts with 128 streamed output tokens, so the model servers, not the gateway,
//! bound the request rate, as in a deployment.
//! The servers are `goodput sim serve` replicas (H100, time scale 1000, so the engine model
//! costs nothing and the HTTP path is what is measured); requests are streamed completions of
//! a 32-token prompt and 2 output tokens. Everything shares the machine's cores, so the example
//! also accounts the CPU time each part spends per completed request (Linux `/proc`): each
//! Envoy process, the picker (its own runtime, threads named `picker`) and the rest of this
//! process (clients and model servers). That says what each part would sustain on cores of its
//! own, which a shared two-core machine cannot show directly.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use goodput_core::catalog::Catalog;
use goodput_scheduler::server::envoy::{BodyMode, EnvoyProcess, Upstream, envoy_binary};
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use tokio::net::TcpListener;

/// CPU seconds (user + system) of a process, or of this process's threads named `picker`
/// (`Some(tid filter)`), from `/proc`. Zero where `/proc` is unavailable.
fn cpu_seconds(pid: u32, picker_threads: Option<bool>) -> f64 {
    // Fields 14 and 15 of `stat` (after the parenthesised command name) are utime and stime in
    // clock ticks; Linux's USER_HZ is 100 on every mainstream architecture.
    let ticks = |stat: &str| -> f64 {
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (n(11) + n(12)) / 100.0
    };
    match picker_threads {
        None => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| ticks(&s))
            .unwrap_or(0.0),
        Some(want_picker) => {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return 0.0;
            };
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                .filter(|s| s.contains("(picker") == want_picker)
                .map(|s| ticks(&s))
                .sum()
        }
    }
}

/// CPU seconds of (Envoy with the picker, plain Envoy, picker threads, rest of this process).
fn cpu_now(picker_envoy: u32, plain_envoy: u32) -> [f64; 4] {
    let me = std::process::id();
    [
        cpu_seconds(picker_envoy, None),
        cpu_seconds(plain_envoy, None),
        cpu_seconds(me, Some(true)),
        cpu_seconds(me, Some(false)),
    ]
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What each request asks for.
#[derive(Debug, Clone, Copy)]
struct RequestShape {
    /// Prompt length in characters (about four per token).
    prompt_chars: usize,
    max_tokens: u32,
}

/// Completed and failed requests of `clients` closed-loop clients for `secs` against `url`.
async fn phase(url: &str, clients: usize, secs: f64, shape: RequestShape) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        let url = format!("{url}/v1/completions");
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                let body = serde_json::json!({
                    "model": "llama-3.1-8b",
                    "prompt": format!("{:0<w$}", format!("client {c} request {i} "), w = shape.prompt_chars),
                    "max_tokens": shape.max_tokens,
                    "stream": true,
                });
                let r = client.post(&url).json(&body).send().await;
                let good = match r {
                    Ok(mut r) if r.status().is_success() => {
                        let mut text = Vec::new();
                        loop {
                            match r.chunk().await {
                                Ok(Some(c)) => text.extend_from_slice(&c),
                                Ok(None) => break,
                                Err(_) => {
                                    text.clear();
                                    break;
                                }
                            }
                        }
                        String::from_utf8_lossy(&text).contains("[DONE]")
                    }
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    // `no-predictor`: the picker without its predictor; `request-only`: the ext_proc filter
    // sees request headers and body and response headers, not the response body.
    let flag = |f: &str| args.iter().skip(4).any(|a| a == f);
    let predictions = !flag("no-predictor");
    let mode = if flag("request-only") {
        BodyMode::RequestOnly
    } else {
        BodyMode::FullDuplex
    };

    let realistic = flag("realistic");
    let shape = if realistic {
        RequestShape {
            prompt_chars: 2048,
            max_tokens: 128,
        }
    } else {
        RequestShape {
            prompt_chars: 128,
            max_tokens: 2,
        }
    };
    let cfg = ServerConfig {
        time_scale: if realistic { 1.0 } else { 1000.0 },
        ..ServerConfig::default()
    };
    let servers = LiveServers::start(&Catalog::builtin(), &cfg, LOCAL, 0, 4).await?;
    let endpoints: Vec<String> = servers.addrs.iter().map(|a| a.to_string()).collect();
    let list = endpoints
        .iter()
        .map(|e| format!("{e} accelerator=h100"))
        .collect::<Vec<_>>()
        .join(",");
    let config = ServeConfig {
        endpoints: EndpointSource::List(list),
        predictions,
        ..Default::default()
    };
    let running = build(&config)?;
    // The picker on a runtime of its own, its threads named so that their CPU time is
    // accounted apart from the clients' and the model servers'.
    let picker_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("picker")
        .enable_all()
        .build()?;
    let grpc = {
        let _in_picker_runtime = picker_runtime.enter();
        std::net::TcpListener::bind((LOCAL, 0))?
    };
    grpc.set_nonblocking(true)?;
    let ext_proc_port = grpc.local_addr()?.port();
    let scrape_interval = config.scrape_interval;
    picker_runtime.spawn(async move {
        match TcpListener::from_std(grpc) {
            Ok(grpc) => {
                let _ = serve_running(running, scrape_interval, grpc, None, std::future::pending())
                    .await;
            }
            Err(e) => eprintln!("picker listener: {e}"),
        }
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = envoy_binary(&root)?;
    let picker = EnvoyProcess::start(
        &bin,
        &Upstream::Picker {
            ext_proc_port,
            mode,
        },
    )
    .await
    .context("envoy with the picker")?;
    let plain = EnvoyProcess::start(&bin, &Upstream::RoundRobin { endpoints })
        .await
        .context("envoy with round-robin")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Warm-up of both paths.
    phase(&picker.url, clients, 1.0, shape).await;
    phase(&plain.url, clients, 1.0, shape).await;

    println!(
        "| phase | Envoy | completed | failed | req/s | Envoy CPU µs/req | picker CPU µs/req | clients+servers CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut a, mut b) = (0u64, 0u64);
    // CPU seconds per path: [Envoy, picker, clients+servers].
    let (mut cpu_picker, mut cpu_plain) = ([0.0f64; 3], [0.0f64; 3]);
    let mut n = 0;
    for _ in 0..rounds {
        for (name, url) in [("round-robin", &plain.url), ("goodput picker", &picker.url)] {
            n += 1;
            let before = cpu_now(picker.pid(), plain.pid());
            let (ok, failed) = phase(url, clients, secs, shape).await;
            let after = cpu_now(picker.pid(), plain.pid());
            let d: Vec<f64> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
            let plain_path = name == "round-robin";
            let spent = [if plain_path { d[1] } else { d[0] }, d[2], d[3]];
            let per = |s: f64| s * 1e6 / ok.max(1) as f64;
            println!(
                "| {n} | {name} | {ok} | {failed} | {:.0} | {:.0} | {:.0} | {:.0} |",
                ok as f64 / secs,
                per(spent[0]),
                per(spent[1]),
                per(spent[2]),
            );
            let (count, cpu) = if plain_path {
                (&mut b, &mut cpu_plain)
            } else {
                (&mut a, &mut cpu_picker)
            };
            *count += ok;
            for (c, s) in cpu.iter_mut().zip(spent) {
                *c += s;
            }
        }
    }
    let total = secs * rounds as f64;
    println!(
        "\n{clients} clients, {rounds} x {secs} s per Envoy: picker {:.0} req/s, round-robin {:.0} req/s, ratio {:.2}",
        a as f64 / total,
        b as f64 / total,
        a as f64 / b.max(1) as f64
    );
    let per = |s: f64, k: u64| s * 1e6 / k.max(1) as f64;
    let (envoy_p, picker_p, rest_p) = (
        per(cpu_picker[0], a),
        per(cpu_picker[1], a),
        per(cpu_picker[2], a),
    );
    let (envoy_r, rest_r) = (per(cpu_plain[0], b), per(cpu_plain[2], b));
    println!(
        "CPU per request: Envoy {envoy_p:.0} µs with the picker vs {envoy_r:.0} µs plain; picker {picker_p:.0} µs; clients+servers {rest_p:.0} vs {rest_r:.0} µs"
    );
    println!(
        "Gateway alone (Envoy + picker, each on cores of its own), requests per CPU-second: {:.0} with the picker vs {:.0} plain (ratio {:.2}); one picker core: {:.0} req/s",
        1e6 / (envoy_p + picker_p),
        1e6 / envoy_r,
        envoy_r / (envoy_p + picker_p),
        1e6 / picker_p.max(1.0),
    );
    servers.shutdown().await;
    // Dropping a runtime inside another's async context panics; let its threads go instead.
    picker_runtime.shutdown_background();
    Ok(())
}
