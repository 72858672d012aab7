//! Command-line parsing and dispatch. Every flag can also be set through the environment
//! variable named in `--help`.

mod autoscaler;
mod crd;
mod predictor;
mod scheduler;
mod sim;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// goodput: keeps LLM inference inside its latency objectives at the lowest accelerator cost.
#[derive(Debug, Parser)]
#[command(name = "goodput", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging and tracing options shared by every command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging and tracing")]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "GOODPUT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax, e.g. `info,goodput_sim=debug`).
    #[arg(long, global = true, env = "GOODPUT_LOG", default_value = "warn")]
    pub log: String,
    /// Export spans over OTLP/gRPC to this collector (e.g. `http://otel-collector:4317`); no
    /// export when unset. The controller traces each reconcile pass (metrics collection,
    /// decision, status write, actuation) and `advise` each step.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans [default: goodput-controller for `autoscaler run`,
    /// goodput-advise, goodput-scheduler, goodput-predictor, goodput-sim].
    #[arg(long, global = true, env = "OTEL_SERVICE_NAME")]
    pub otlp_service_name: Option<String>,
    /// Which spans are exported (tracing env-filter syntax; goodput's own by default).
    #[arg(
        long,
        global = true,
        env = "GOODPUT_TRACE_FILTER",
        default_value = "goodput=info"
    )]
    pub trace_filter: String,
}

impl Cli {
    /// The logging and tracing set-up this invocation asks for.
    pub fn telemetry(&self) -> crate::telemetry::TelemetryConfig {
        let log = &self.log;
        let service = match &self.command {
            Command::Sim(_) => "goodput-sim",
            Command::Predictor(_) => "goodput-predictor",
            Command::Scheduler(_) => "goodput-scheduler",
            Command::Autoscaler(autoscaler::AutoscalerCommand::Run(_)) => "goodput-controller",
            Command::Autoscaler(autoscaler::AutoscalerCommand::Advise(_)) => "goodput-advise",
            Command::Crd => "goodput",
        };
        crate::telemetry::TelemetryConfig {
            log_filter: log.log.clone(),
            json: matches!(log.log_format, LogFormat::Json),
            otlp_endpoint: log.otlp_endpoint.clone().filter(|e| !e.is_empty()),
            service_name: log
                .otlp_service_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| service.into()),
            trace_filter: log.trace_filter.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a heterogeneous vLLM fleet: run scenarios, profile the engine model.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Learn and serve TTFT/TPOT predictions (a drop-in for llm-d's latency predictor).
    #[command(subcommand)]
    Predictor(predictor::PredictorCommand),
    /// Pick the endpoint for every request behind Envoy (ext_proc), SLO-aware.
    #[command(subcommand)]
    Scheduler(scheduler::SchedulerCommand),
    /// The Kubernetes controller (`run`) and recommendations from Prometheus (`advise`).
    #[command(subcommand)]
    Autoscaler(autoscaler::AutoscalerCommand),
    /// Print goodput's CustomResourceDefinitions (ModelAutoscaler, AcceleratorPool) as YAML.
    Crd,
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends a pod it stops), so that the
/// long-running commands shut down cleanly: Lease released, connections drained, spans flushed.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the chosen command.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sim(cmd) => sim::run(cmd),
        Command::Predictor(cmd) => predictor::run(cmd),
        Command::Scheduler(cmd) => scheduler::run(cmd),
        Command::Autoscaler(cmd) => autoscaler::run(cmd),
        Command::Crd => crd::run(),
    }
}

/// Writes command output to stdout; a closed pipe (`goodput ... | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
