//! `goodput autoscaler ...`: the Kubernetes controller (`run`) and recommendations from a real
//! Prometheus without a cluster (`advise`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use goodput_autoscaler::advise::{AdviseConfig, Advisor, render};
use goodput_autoscaler::controller::http::{HttpState, serve};
use goodput_autoscaler::controller::run::{RunConfig, run as run_controller};
use goodput_autoscaler::export::{ControllerMetrics, registry};
use goodput_autoscaler::metrics::PromHttp;

#[derive(Debug, Subcommand)]
pub enum AutoscalerCommand {
    /// Run the controller in a cluster: watch ModelAutoscalers and AcceleratorPools, decide
    /// every interval from Prometheus, write status and Events, actuate (metrics, KEDA, /scale).
    Run(RunArgs),
    /// Recommend replicas from a real Prometheus for one ModelAutoscaler spec (no cluster).
    Advise(AdviseArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Prometheus base URL.
    #[arg(
        long,
        env = "GOODPUT_PROMETHEUS_URL",
        default_value = "http://prometheus:9090"
    )]
    pub prometheus: String,
    /// Seconds before a Prometheus query gives up.
    #[arg(long, env = "GOODPUT_PROMETHEUS_TIMEOUT_S", default_value_t = 10.0)]
    pub prometheus_timeout_s: f64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "GOODPUT_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Also export WVA's `wva_desired_replicas{variant_name,namespace,accelerator_type}`.
    #[arg(long, env = "GOODPUT_WVA_METRICS", default_value_t = false)]
    pub wva_metrics: bool,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, env = "GOODPUT_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Serve KEDA's external scaler gRPC on this address (for actuation `keda`).
    #[arg(long, env = "GOODPUT_KEDA_ADDR")]
    pub keda_addr: Option<SocketAddr>,
    /// Disable leader election (only safe with a single replica).
    #[arg(long, env = "GOODPUT_NO_LEADER_ELECTION", default_value_t = false)]
    pub no_leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(
        long,
        env = "GOODPUT_LEASE_NAMESPACE",
        default_value = "goodput-system"
    )]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "GOODPUT_LEASE_NAME", default_value = "goodput-controller")]
    pub lease_name: String,
    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, env = "GOODPUT_LEASE_DURATION_S", default_value_t = 15)]
    pub lease_duration_s: u64,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "goodput-controller")]
    pub identity: String,
}

#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// Prometheus base URL.
    #[arg(long, env = "GOODPUT_PROMETHEUS_URL")]
    pub prometheus: String,
    /// YAML file: `spec:` (a ModelAutoscaler spec) and `pools:` (AcceleratorPool specs by name).
    #[arg(long, env = "GOODPUT_ADVISE_CONFIG")]
    pub config: PathBuf,
    /// Serve /metrics (goodput_* gauges), /healthz and /readyz on this port and keep advising.
    #[arg(long, env = "GOODPUT_ADVISE_PORT")]
    pub serve: Option<u16>,
    /// Advise every this many seconds (default: once, or the spec's interval with --serve).
    #[arg(long, env = "GOODPUT_ADVISE_INTERVAL_S")]
    pub interval: Option<f64>,
    /// Seconds before a Prometheus query gives up.
    #[arg(long, env = "GOODPUT_PROMETHEUS_TIMEOUT_S", default_value_t = 10.0)]
    pub prometheus_timeout_s: f64,
}

pub fn run(cmd: AutoscalerCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cmd {
        AutoscalerCommand::Run(args) => runtime.block_on(run_cmd(args)),
        AutoscalerCommand::Advise(args) => runtime.block_on(advise(args)),
    }
}

fn timeout(s: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        s.is_finite() && s > 0.0,
        "--prometheus-timeout-s must be positive, got {s}"
    );
    Ok(Duration::from_secs_f64(s))
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.lease_duration_s > 0,
        "--lease-duration-s must be positive"
    );
    let client = goodput_autoscaler::controller::run::infer_client()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let cfg = RunConfig {
        prometheus_url: args.prometheus,
        prometheus_timeout: timeout(args.prometheus_timeout_s)?,
        namespace: args.namespace,
        wva_metrics: args.wva_metrics,
        http_addr: args.http_addr,
        keda_addr: args.keda_addr,
        lease: (!args.no_leader_election).then_some((args.lease_namespace, args.lease_name)),
        lease_duration: Duration::from_secs(args.lease_duration_s),
        identity: args.identity,
        controller_name: "goodput-controller".into(),
    };
    run_controller(client, cfg, super::shutdown_signal())
        .await
        .context("controller")
}

async fn advise(args: AdviseArgs) -> anyhow::Result<()> {
    let config = AdviseConfig::from_file(&args.config)?;
    let prom = PromHttp::new(&args.prometheus, timeout(args.prometheus_timeout_s)?)?;
    let name = config.name.clone();
    let spec_interval = config.spec.policy.interval_seconds as f64;
    if let Some(i) = args.interval {
        anyhow::ensure!(
            i.is_finite() && i > 0.0,
            "--interval must be positive, got {i}"
        );
    }
    let mut http = None;
    let metrics = match args.serve {
        Some(port) => {
            let mut reg = registry();
            let m = ControllerMetrics::register(&mut reg, None);
            let state = HttpState::new(vec![reg]);
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .with_context(|| format!("binding port {port}"))?;
            let served = state.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(listener, served).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            });
            http = Some(state);
            Some(m)
        }
        None => None,
    };
    let mut advisor = Advisor::new(prom, config, metrics);
    let repeat = args.interval.or_else(|| args.serve.map(|_| spec_interval));
    loop {
        let out = advisor
            .step(goodput_autoscaler::controller::run::now())
            .await;
        super::emit(&render(&name, &out))?;
        if let Some(h) = &http {
            h.set_ready(true);
        }
        match repeat {
            Some(s) => tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(s)) => {}
                () = super::shutdown_signal() => return Ok(()),
            },
            // A one-shot advice without metrics is no advice: say so in the exit status.
            None if out.error.is_some() => {
                anyhow::bail!("no recommendation: {}", out.status.reason)
            }
            None => return Ok(()),
        }
    }
}
