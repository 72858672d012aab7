//! The live-stack comparison: the same trace slice replayed by `goodput sim load` through a
//! real Envoy and the scheduler (one run per picker: goodput, round-robin, least-requests,
//! llm-d's prefix+load) to fresh `goodput sim serve` servers of two speeds (2 H100 + 2 L40S).
//!
//! ```sh
//! bash scripts/tools.sh
//! GOODPUT_SHARED_DATA=../shared/data cargo run --release -p goodput-scheduler --features server --example live_compare
//! ```
//! Servers run at `--time-scale 10` and the trace is compressed by the same factor (times the
//! rate scale below), so the servers see the trace's load in simulated time; latencies and SLOs
//! are reported in simulated milliseconds (wall × 10). The goodput picker uses the variants'
//! physics priors (retraining is off: the measured wall-clock latencies are on another scale).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context;
use goodput_core::Slo;
use goodput_core::catalog::Catalog;
use goodput_scheduler::server::envoy::{BodyMode, EnvoyProcess, Upstream, envoy_binary};
use goodput_scheduler::server::{EndpointSource, ServeConfig, build, serve_running};
use goodput_sim::live::{LiveServers, LoadConfig, ServerConfig, run_load};
use goodput_sim::workload::{trace, transform};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIME_SCALE: f64 = 10.0;

struct Case {
    name: &'static str,
    trace: &'static str,
    /// Seconds of the trace replayed.
    slice_s: f64,
    /// Arrival-rate multiplier on top of the time scale.
    rate_scale: f64,
    slo: Slo,
}

async fn one_run(
    case: &Case,
    workload: &goodput_sim::workload::Workload,
    picker: &str,
    bin: &std::path::Path,
) -> anyhow::Result<String> {
    let catalog = Catalog::builtin();
    let fast_cfg = ServerConfig {
        accelerator: "h100".into(),
        time_scale: TIME_SCALE,
        ..ServerConfig::default()
    };
    let slow_cfg = ServerConfig {
        accelerator: "l40s".into(),
        ..fast_cfg.clone()
    };
    let fast = LiveServers::start(&catalog, &fast_cfg, LOCAL, 0, 2).await?;
    let slow = LiveServers::start(&catalog, &slow_cfg, LOCAL, 0, 2).await?;
    let list = fast
        .addrs
        .iter()
        .map(|a| format!("{a} accelerator=h100"))
        .chain(slow.addrs.iter().map(|a| format!("{a} accelerator=l40s")))
        .collect::<Vec<_>>()
        .join(",");
    let config = ServeConfig {
        endpoints: EndpointSource::List(list),
        picker: picker.into(),
        retrain_interval_s: 1e9,
        ..Default::default()
    };
    let running = build(&config)?;
    let grpc = TcpListener::bind((LOCAL, 0)).await?;
    let port = grpc.local_addr()?.port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_running(
        running,
        config.scrape_interval,
        grpc,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let envoy = EnvoyProcess::start(
        bin,
        &Upstream::Picker {
            ext_proc_port: port,
            mode: BodyMode::FullDuplex,
        },
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let load = LoadConfig {
        urls: vec![envoy.url.clone()],
        model: Some("llama-3.1-8b".into()),
        slo: Some(Slo {
            ttft_ms: case.slo.ttft_ms / TIME_SCALE,
            itl_ms: case.slo.itl_ms / TIME_SCALE,
            percentile: case.slo.percentile,
        }),
        request_timeout_s: 120.0,
        ..Default::default()
    };
    let (report, _) = run_load(&load, workload).await?;
    drop(envoy);
    let _ = stop.send(());
    let _ = server.await;
    fast.shutdown().await;
    slow.shutdown().await;
    let p = |x: Option<goodput_sim::live::load::Percentiles>,
             f: fn(&goodput_sim::live::load::Percentiles) -> f64| {
        x.as_ref()
            .map_or("-".into(), |x| format!("{:.0}", f(x) * TIME_SCALE))
    };
    Ok(format!(
        "| {picker} | {:.1} % | {} | {} | {} | {}/{} |",
        report.slo.map_or(0.0, |s| s.attainment * 100.0),
        p(report.ttft_ms, |x| x.p50),
        p(report.ttft_ms, |x| x.p95),
        p(report.tpot_ms, |x| x.p95),
        report.completed,
        report.sent,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = PathBuf::from(
        std::env::var("GOODPUT_SHARED_DATA").unwrap_or_else(|_| "../shared/data".into()),
    );
    let bin = envoy_binary(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))?;
    let cases = [
        Case {
            name: "mooncake-conversation (prefix reuse)",
            trace: "mooncake-conversation.jsonl",
            slice_s: 150.0,
            rate_scale: 1.0 / 3.0,
            slo: Slo {
                ttft_ms: 5000.0,
                itl_ms: 100.0,
                percentile: 95.0,
            },
        },
        Case {
            name: "azure-2023-conv (load)",
            trace: "azure-2023-conv.csv",
            slice_s: 300.0,
            rate_scale: 2.0,
            slo: Slo {
                ttft_ms: 1000.0,
                itl_ms: 60.0,
                percentile: 95.0,
            },
        },
    ];
    // Optional filters: `live_compare [CASE_SUBSTRING] [PICKER,...]`.
    let args: Vec<String> = std::env::args().collect();
    let only_case = args.get(1).cloned().unwrap_or_default();
    let pickers: Vec<String> = args.get(2).map_or_else(
        || {
            ["round-robin", "least-requests", "prefix-load", "goodput"]
                .map(String::from)
                .to_vec()
        },
        |p| p.split(',').map(String::from).collect(),
    );
    for case in cases.iter().filter(|c| c.name.contains(&only_case)) {
        let w = trace::load_trace(&data.join(case.trace))
            .with_context(|| format!("{} in {}", case.trace, data.display()))?;
        let w = transform::truncate(w, case.slice_s)?;
        let w = transform::compress_time(w, TIME_SCALE * case.rate_scale)?;
        println!(
            "\n### {} — first {} s of the trace at {:.2}x rate: {} requests, 2 H100 + 2 L40S, SLO TTFT {} ms / TPOT {} ms (simulated ms)\n",
            case.name,
            case.slice_s,
            case.rate_scale,
            w.requests.len(),
            case.slo.ttft_ms,
            case.slo.itl_ms
        );
        println!(
            "| picker | SLO attainment | TTFT p50 (ms) | TTFT p95 (ms) | TPOT p95 (ms) | completed/sent |"
        );
        println!("|---|---|---|---|---|---|");
        for picker in &pickers {
            println!("{}", one_run(case, &w, picker, &bin).await?);
        }
    }
    Ok(())
}
