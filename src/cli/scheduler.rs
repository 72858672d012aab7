//! `goodput scheduler ...`: the endpoint picker's commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use goodput_scheduler::GoodputConfig;
use goodput_scheduler::server::discovery::{
    DiscoveryConfig, KubeSource, PoolSpec, parse_selector, parse_target_ports,
};
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
#[command(group(
    ArgGroup::new("endpoint_source")
        .required(true)
        .args(["endpoints", "endpoints_file", "selector", "inference_pool"])
))]
pub struct ServeArgs {
    /// ext_proc gRPC port.
    #[arg(long, env = "GOODPUT_SCHEDULER_PORT", default_value_t = 9002)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "GOODPUT_SCHEDULER_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Endpoints, comma-separated: `host:port` with optional space-separated attributes
    /// `role=prefill|decode|unified`, `accelerator=ID` (enables the physics prior), `tp=N`.
    /// Exactly one of --endpoints, --endpoints-file, --selector, --inference-pool.
    #[arg(long, env = "GOODPUT_SCHEDULER_ENDPOINTS")]
    pub endpoints: Option<String>,
    /// File with one endpoint per line (same syntax as --endpoints; `#` comments), read at start.
    #[arg(long, env = "GOODPUT_SCHEDULER_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// Discover the endpoints in Kubernetes: the ready pods in --namespace matching this label
    /// selector, `key=value[,key=value]` (equality only), one endpoint per pod and
    /// --target-ports entry, followed as pods come and go. Pod labels `goodput.dev/role`,
    /// `goodput.dev/accelerator` and `goodput.dev/tensor-parallel` give each endpoint's
    /// attributes. Needs get/list/watch on pods.
    #[arg(long, env = "GOODPUT_SCHEDULER_SELECTOR")]
    pub selector: Option<String>,
    /// With --selector: the pods' ports serving the model, `8000[,8001]` (1 to 8); 8000 when
    /// not given.
    // No clap default and no `requires`: clap skips `requires` of an argument with a default,
    // and of one whose required argument conflicts with a present one (the group), so
    // `endpoint_source` checks it.
    #[arg(long, env = "GOODPUT_SCHEDULER_TARGET_PORTS")]
    pub target_ports: Option<String>,
    /// Discover the endpoints from this InferencePool (inference.networking.k8s.io/v1) in
    /// --namespace: the ready pods its spec.selector.matchLabels selects, on its
    /// spec.targetPorts, following changes to the pool. Needs get/list/watch on pods and
    /// inferencepools.
    #[arg(long, env = "GOODPUT_SCHEDULER_INFERENCE_POOL")]
    pub inference_pool: Option<String>,
    /// Namespace of the pods and the InferencePool (--selector, --inference-pool).
    #[arg(long, env = "GOODPUT_SCHEDULER_NAMESPACE", default_value = "default")]
    pub namespace: String,
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
    /// Share of the request's objectives (0-1) within which an endpoint's predicted TTFT and
    /// TPOT count as comfortable: among comfortable endpoints the best prefix+load score wins,
    /// which spreads load over every variant that serves the request well. 0: always the
    /// lowest predicted latency.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_COMFORT_SHARE",
        default_value_t = goodput_scheduler::goodput::DEFAULT_COMFORT,
        value_parser = share_in_unit_range
    )]
    pub comfort_share: f64,
    /// Seconds between scheduled retrainings of the predictors.
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_RETRAIN_INTERVAL_S",
        default_value_t = 10.0
    )]
    pub retrain_interval_s: f64,
    /// Seconds a request waits for an endpoint when none can take it (a fleet scaled to zero,
    /// or every replica still starting) before it is answered 503; 0 answers at once. Held
    /// requests are exported as `goodput_scheduler_requests_waiting`, the signal the
    /// autoscaler wakes a fleet at zero on (ModelAutoscaler `metrics.gateway`). Set it above
    /// the replicas' start-up time, and run Envoy's ext_proc in FULL_DUPLEX_STREAMED mode (in
    /// BUFFERED mode Envoy's `message_timeout` ends the wait first).
    #[arg(
        long,
        env = "GOODPUT_SCHEDULER_HOLD_WHEN_NO_ENDPOINT_S",
        default_value_t = 0.0,
        value_parser = non_negative_seconds
    )]
    pub hold_when_no_endpoint_s: f64,
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && (0.0..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` must be between 0 and 86400 seconds"))
    }
}

pub fn run(cmd: SchedulerCommand) -> anyhow::Result<()> {
    match cmd {
        SchedulerCommand::Serve(args) => serve(args),
    }
}

/// The endpoint source the flags name (clap's group guarantees exactly one).
fn endpoint_source(args: &ServeArgs) -> anyhow::Result<EndpointSource> {
    let kube = |source| {
        EndpointSource::Kubernetes(DiscoveryConfig {
            namespace: args.namespace.clone(),
            source,
        })
    };
    anyhow::ensure!(
        args.target_ports.is_none() || args.selector.is_some(),
        "--target-ports is for --selector (an InferencePool names its own ports)"
    );
    Ok(
        match (
            &args.endpoints,
            &args.endpoints_file,
            &args.selector,
            &args.inference_pool,
        ) {
            (Some(list), ..) => EndpointSource::List(list.clone()),
            (None, Some(file), ..) => EndpointSource::File(file.clone()),
            (None, None, Some(sel), _) => kube(KubeSource::Selector(PoolSpec {
                match_labels: parse_selector(sel).context("--selector")?,
                target_ports: parse_target_ports(args.target_ports.as_deref().unwrap_or("8000"))
                    .context("--target-ports")?,
            })),
            (None, None, None, Some(pool)) => {
                anyhow::ensure!(!pool.trim().is_empty(), "--inference-pool is empty");
                kube(KubeSource::InferencePool(pool.trim().to_string()))
            }
            (None, None, None, None) => {
                anyhow::bail!("give --endpoints, --endpoints-file, --selector or --inference-pool")
            }
        },
    )
}

/// A share between 0 and 1, for `--comfort-share`.
fn share_in_unit_range(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x} is not between 0 and 1"))
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let endpoints = endpoint_source(&args)?;
    let config = ServeConfig {
        endpoints,
        picker: args.picker,
        goodput: GoodputConfig {
            pd_min_uncached_tokens: args.pd_min_uncached_tokens,
            shortlist: args.shortlist.max(1),
            comfort: args.comfort_share,
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
        hold_when_no_endpoint: Duration::from_secs_f64(args.hold_when_no_endpoint_s),
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
            super::shutdown_signal().await;
        };
        tracing::info!(%grpc, ?metrics, "goodput scheduler serving ext_proc");
        goodput_scheduler::server::serve(config, grpc, metrics, shutdown).await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn exactly_one_endpoint_source() {
        assert!(parse(&[]).is_err(), "a source is required");
        for two in [
            &["--endpoints", "a:1", "--selector", "app=x"][..],
            &["--selector", "app=x", "--inference-pool", "p"],
            &["--endpoints-file", "f", "--inference-pool", "p"],
        ] {
            assert!(parse(two).is_err(), "{two:?}");
        }
        for without_selector in [
            &["--endpoints", "a:1", "--target-ports", "8001"][..],
            &["--inference-pool", "p", "--target-ports", "8001"],
        ] {
            let e = endpoint_source(&parse(without_selector).unwrap()).unwrap_err();
            assert!(e.to_string().contains("--target-ports"), "{e}");
        }
        let a = parse(&["--selector", "app=vllm"]).unwrap();
        match endpoint_source(&a).unwrap() {
            EndpointSource::Kubernetes(DiscoveryConfig {
                source: KubeSource::Selector(s),
                ..
            }) => assert_eq!(s.target_ports, vec![8000], "the default port"),
            other => panic!("{other:?}"),
        }
        let a = parse(&["--selector", "app=vllm", "--target-ports", "8000,8001"]).unwrap();
        match endpoint_source(&a).unwrap() {
            EndpointSource::Kubernetes(d) => {
                assert_eq!(d.namespace, "default");
                assert_eq!(
                    d.source,
                    KubeSource::Selector(PoolSpec {
                        match_labels: [("app".to_string(), "vllm".to_string())]
                            .into_iter()
                            .collect(),
                        target_ports: vec![8000, 8001],
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        let a = parse(&["--inference-pool", "vllm-pool", "--namespace", "llm"]).unwrap();
        assert!(matches!(
            endpoint_source(&a).unwrap(),
            EndpointSource::Kubernetes(DiscoveryConfig { ref namespace, source: KubeSource::InferencePool(ref p) })
                if namespace == "llm" && p == "vllm-pool"
        ));
    }

    #[test]
    fn bad_selectors_and_ports_say_which_flag() {
        let a = parse(&["--selector", "app"]).unwrap();
        let e = format!("{:#}", endpoint_source(&a).unwrap_err());
        assert!(e.contains("--selector") && e.contains("`app`"), "{e}");
        let a = parse(&["--selector", "app=x", "--target-ports", "0"]).unwrap();
        let e = format!("{:#}", endpoint_source(&a).unwrap_err());
        assert!(e.contains("--target-ports") && e.contains("`0`"), "{e}");
    }
}
