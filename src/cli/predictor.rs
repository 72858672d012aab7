//! `goodput predictor ...`: the latency predictor's commands.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use goodput_predictor::server::{AppState, Objective, ServerConfig};
use goodput_predictor::{Predictor, PredictorConfig};

#[derive(Debug, Subcommand)]
pub enum PredictorCommand {
    /// Serve llm-d's latency-predictor HTTP API (training and prediction servers in one):
    /// /predict, /predict/bulk, /predict/bulk/strict, /add_training_data_bulk, /status,
    /// /healthz, /readyz, /metrics, /model/download/info.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ObjectiveArg {
    Mean,
    Quantile,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TCP port.
    #[arg(long, env = "PREDICT_PORT", default_value_t = 8001)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "PREDICT_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// What ttft_ms/tpot_ms mean: the point prediction or a calibrated quantile.
    #[arg(long, env = "LATENCY_OBJECTIVE_TYPE", default_value = "quantile")]
    pub objective: ObjectiveArg,
    /// Quantile served in quantile mode (0 < q < 1).
    #[arg(long, env = "LATENCY_QUANTILE_ALPHA", default_value_t = 0.9)]
    pub quantile: f64,
    /// Seconds between scheduled retrainings (drift retrains at once).
    #[arg(long, env = "LATENCY_RETRAINING_INTERVAL_SEC", default_value_t = 10.0)]
    pub retrain_interval_s: f64,
    /// Training rows kept per state-space bucket and target.
    #[arg(
        long,
        env = "LATENCY_MAX_TRAINING_DATA_SIZE_PER_BUCKET",
        default_value_t = 200
    )]
    pub per_bucket: usize,
    /// Fewest training rows before a target is fitted.
    #[arg(long, env = "LATENCY_MIN_SAMPLES_FOR_RETRAIN", default_value_t = 100)]
    pub min_samples: usize,
    /// Largest request body, bytes.
    #[arg(long, env = "GOODPUT_PREDICTOR_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Most rows in one bulk prediction.
    #[arg(long, env = "GOODPUT_PREDICTOR_MAX_ROWS", default_value_t = 100_000)]
    pub max_rows: usize,
    /// Catalog model id of the endpoints this predictor serves. With `--accelerator` (and
    /// `--tp`) it gives the models the variant's roofline physics as prior features; without,
    /// the models learn from the llm-d features alone.
    #[arg(long, env = "GOODPUT_PREDICTOR_MODEL", requires = "accelerator")]
    pub model: Option<String>,
    /// Catalog accelerator id of the endpoints (h100, a100, l40s, tpu-v5e, ...).
    #[arg(long, env = "GOODPUT_PREDICTOR_ACCELERATOR", requires = "model")]
    pub accelerator: Option<String>,
    /// Tensor-parallel degree of the endpoints.
    #[arg(long, env = "GOODPUT_PREDICTOR_TP", default_value_t = 1)]
    pub tp: u32,
}

pub fn run(cmd: PredictorCommand) -> anyhow::Result<()> {
    match cmd {
        PredictorCommand::Serve(args) => serve(args),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.quantile > 0.0 && args.quantile < 1.0,
        "--quantile must be between 0 and 1, got {}",
        args.quantile
    );
    anyhow::ensure!(
        args.retrain_interval_s > 0.0,
        "--retrain-interval-s must be positive"
    );
    let mut config = PredictorConfig {
        retrain_interval_s: args.retrain_interval_s,
        ..Default::default()
    };
    if let (Some(model), Some(acc)) = (&args.model, &args.accelerator) {
        anyhow::ensure!(
            args.tp > 0 && args.tp.is_power_of_two(),
            "--tp must be a power of two, got {}",
            args.tp
        );
        let catalog = goodput_core::Catalog::builtin();
        config.physics = Some(goodput_predictor::physics::VariantPhysics::new(
            catalog.model(model)?,
            catalog.accelerator(acc)?,
            args.tp,
        ));
    }
    config.window.per_bucket = args.per_bucket.max(1);
    config.fit.min_training_rows = args.min_samples.max(2);
    let predictor = Arc::new(Predictor::new(config));
    let _trainer = predictor
        .spawn_trainer(unix_now)
        .context("starting the trainer thread")?;
    let state = Arc::new(AppState::new(
        Arc::clone(&predictor),
        ServerConfig {
            objective: match args.objective {
                ObjectiveArg::Mean => Objective::Mean,
                ObjectiveArg::Quantile => Objective::Quantile,
            },
            quantile: args.quantile,
            max_body_bytes: args.max_body_bytes,
            max_rows: args.max_rows.max(1),
        },
    ));
    let addr = format!("{}:{}", args.host, args.port);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, "latency predictor listening");
        goodput_predictor::server::serve(listener, state)
            .await
            .context("serving HTTP")
    })
}
