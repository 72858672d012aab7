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

/// Logging options shared by every command.
#[derive(Debug, Args)]
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

/// Sets up `tracing` on stderr.
pub fn init_tracing(args: &LogArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
