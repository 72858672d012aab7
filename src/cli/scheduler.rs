//! `goodput scheduler ...`: the endpoint picker's commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use goodput_scheduler::GoodputConfig;
use goodput_scheduler::server::pool::Staleness;
use goodput_scheduler::server::{EndpointSource, ServeConfig};

#[derive(Debug, Subcommand)]
pub enum SchedulerCommand {
    /// Serve Envoy's ext_proc protocol as an endpoint picker (the Gateway API Inference
    /// Extension's EPP protocol): each request gets `x-gateway-destination-endpoint` and the
    /// `envoy.lb` metadata, 503 when no endpoint is ready, 429 when a sheddable request is shed.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// ext_proc gRPC port.
    #[arg(long, env = "GOODPUT_SCHEDULER_PORT", default_value_t = 9002)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "GOODPUT_SCHEDULER_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Endpoints, comma-separated: `host:port` with optional space-separated attributes
    /// `role=prefill|decode|unified`, `accelerator=ID` (enables the physics prior), `tp=N`.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_ENDPOINTS",
        conflicts_with = "endpoints_file",
        required_unless_present = "endpoints_file"
    )]
    pub endpoints: Option<String>,
    /// File with one endpoint per line (same syntax as --endpoints; `#` comments).
    #[arg(long, env = "GOODPUT_SCHEDULER_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// Port of the Prometheus /metrics endpoint (none when absent).
    #[arg(long, env = "GOODPUT_SCHEDULER_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Picker: goodput, round-robin, least-requests or prefix-load.
    #[arg(long, env = "GOODPUT_SCHEDULER_PICKER", default_value = "goodput")]
    pub picker: String,
    /// Milliseconds between scrapes of each endpoint's /metrics.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_SCRAPE_INTERVAL_MS",
        default_value_t = 50
    )]
    pub scrape_interval_ms: u64,
    /// Metrics older than this (ms) make an endpoint stale: used only when none is ready.
    #[arg(long, env = "GOODPUT_SCHEDULER_STALE_AFTER_MS", default_value_t = 2000)]
    pub stale_after_ms: u64,
    /// Metrics older than this (ms), or 3 failed scrapes in a row, make an endpoint down.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_DOWN_AFTER_MS",
        default_value_t = 30_000
    )]
    pub down_after_ms: u64,
    /// Catalog model the endpoints serve (physics priors for endpoints with an accelerator).
    #[arg(long, env = "GOODPUT_SCHEDULER_MODEL", default_value = "llama-3.1-8b")]
    pub model: String,
    /// Run without the in-process predictor (every pick is a load-based fallback).
    #[arg(long, env = "GOODPUT_SCHEDULER_NO_PREDICTOR")]
    pub no_predictor: bool,
    /// Uncached prompt tokens from which a request is split onto a prefill endpoint.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_PD_MIN_UNCACHED_TOKENS",
        default_value_t = 1024
    )]
    pub pd_min_uncached_tokens: u32,
    /// Endpoints whose latencies are predicted per pick (the rest are ranked by load/prefix).
    #[arg(long, env = "GOODPUT_SCHEDULER_SHORTLIST", default_value_t = 16)]
    pub shortlist: usize,
    /// Seconds between scheduled retrainings of the predictors.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_RETRAIN_INTERVAL_S",
        default_value_t = 10.0
    )]
    pub retrain_interval_s: f64,
}

pub fn run(cmd: SchedulerCommand) -> anyhow::Result<()> {
    match cmd {
        SchedulerCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let endpoints = match (args.endpoints, args.endpoints_file) {
        (Some(list), _) => EndpointSource::List(list),
        (None, Some(file)) => EndpointSource::File(file),
        (None, None) => anyhow::bail!("give --endpoints or --endpoints-file"),
    };
    let config = ServeConfig {
        endpoints,
        picker: args.picker,
        goodput: GoodputConfig {
            pd_min_uncached_tokens: args.pd_min_uncached_tokens,
            shortlist: args.shortlist.max(1),
            ..Default::default()
        },
        scrape_interval: Duration::from_millis(args.scrape_interval_ms.max(1)),
        staleness: Staleness {
            stale_after: Duration::from_millis(args.stale_after_ms),
            down_after: Duration::from_millis(args.down_after_ms.max(args.stale_after_ms)),
            down_after_failures: 3,
        },
        model: args.model,
        predictions: !args.no_predictor,
        retrain_interval_s: args.retrain_interval_s,
    };
    // Fail fast on a bad endpoint list before binding anything.
    goodput_scheduler::server::load_endpoints(&config.endpoints)?;
    let ip: std::net::IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host `{}` is not an IP address", args.host))?;
    let grpc = SocketAddr::new(ip, args.port);
    let metrics = args.metrics_port.map(|p| SocketAddr::new(ip, p));
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        tracing::info!(%grpc, ?metrics, "goodput scheduler serving ext_proc");
        goodput_scheduler::server::serve(config, grpc, metrics, shutdown).await
    })?;
    Ok(())
}
