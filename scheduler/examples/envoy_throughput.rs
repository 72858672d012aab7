//! Request rate Envoy sustains with goodput's picker (ext_proc, FULL_DUPLEX_STREAMED,
//! ORIGINAL_DST) against the same Envoy with a plain round-robin cluster, same servers, one
//! run: closed-loop clients, phases alternating between the two Envoys.
//!
//! ```sh
//! bash scripts/tools.sh   # Envoy 1.40
//! cargo run --release -p goodput-scheduler --features server --example envoy_throughput -- [CLIENTS] [PHASE_S] [ROUNDS] [no-predictor] [request-only]
//! ```
//! The servers are `goodput sim serve` replicas (H100, time scale 1000, so the engine model
//! costs nothing and the HTTP path is what is measured); requests are streamed completions of
//! a 32-token prompt and 2 output tokens. Everything shares the machine's cores.

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

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Completed and failed requests of `clients` closed-loop clients for `secs` against `url`.
async fn phase(url: &str, clients: usize, secs: f64) -> (u64, u64) {
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
                    "prompt": format!("{:0>128}", format!("client {c} request {i}")),
                    "max_tokens": 2,
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

    let cfg = ServerConfig {
        time_scale: 1000.0,
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
    let grpc = TcpListener::bind((LOCAL, 0)).await?;
    let ext_proc_port = grpc.local_addr()?.port();
    tokio::spawn(serve_running(
        running,
        config.scrape_interval,
        grpc,
        None,
        std::future::pending(),
    ));
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
    phase(&picker.url, clients, 1.0).await;
    phase(&plain.url, clients, 1.0).await;

    println!("| phase | Envoy | completed | failed | req/s |");
    println!("|---|---|---|---|---|");
    let (mut a, mut b) = (0u64, 0u64);
    let mut n = 0;
    for _ in 0..rounds {
        for (name, url) in [("round-robin", &plain.url), ("goodput picker", &picker.url)] {
            n += 1;
            let (ok, failed) = phase(url, clients, secs).await;
            println!(
                "| {n} | {name} | {ok} | {failed} | {:.0} |",
                ok as f64 / secs
            );
            if name == "round-robin" {
                b += ok;
            } else {
                a += ok;
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
    servers.shutdown().await;
    Ok(())
}
