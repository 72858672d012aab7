//! `goodput sim ...`: the simulator's commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use goodput_core::Catalog;
use goodput_sim::engine::StepMode;
use goodput_sim::report::{html, table};
use goodput_sim::run::{load_workload, simulate};
use goodput_sim::scenario::{Scenario, WorkloadSpec};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one closed-loop simulation and write a report.
    ///
    /// With no arguments it runs the built-in heterogeneous scenario (Llama-3.1-8B on H100, A100,
    /// L40S and TPU v5e replicas under a bursty chat workload) in seconds.
    Run(RunArgs),
    /// The engine model's prefill time for a batch and its decode iteration time, in ms.
    Profile(ProfileArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario YAML (pools, model, variants, SLOs, workload). Default: the built-in scenario.
    #[arg(long, env = "GOODPUT_SIM_SCENARIO")]
    pub scenario: Option<PathBuf>,
    /// Replay this trace (Azure CSV `TIMESTAMP,ContextTokens,GeneratedTokens` or Mooncake
    /// JSONL) instead of the scenario's workload.
    #[arg(long, env = "GOODPUT_SIM_TRACE")]
    pub trace: Option<PathBuf>,
    /// Autoscaling policy. `fixed` keeps the scenario's replica counts.
    #[arg(long, env = "GOODPUT_SIM_POLICY", default_value = "fixed")]
    pub policy: String,
    /// Directory for summary.json, report.html and requests.csv (one row per request).
    #[arg(long, env = "GOODPUT_SIM_OUT", default_value = "goodput-report")]
    pub out: PathBuf,
    /// Execute every engine step instead of jumping over runs of decode steps (slower; the
    /// results agree).
    #[arg(long, env = "GOODPUT_SIM_STEP_BY_STEP")]
    pub step_by_step: bool,
    /// Print the summary as JSON instead of a table.
    #[arg(long, env = "GOODPUT_SIM_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Catalog model id (llama-3.1-8b, llama-3.1-70b, llama-2-70b, qwen3-32b, bloom-176b).
    #[arg(long, env = "GOODPUT_PROFILE_MODEL")]
    pub model: String,
    /// Catalog accelerator id (h100, a100, l40s, mi300x, mi250, tpu-v5e, tpu-v6e, gaudi3,
    /// max1550).
    #[arg(long, env = "GOODPUT_PROFILE_ACCELERATOR")]
    pub accelerator: String,
    /// Tensor-parallel degree (devices per replica).
    #[arg(long, env = "GOODPUT_PROFILE_TP", default_value_t = 1)]
    pub tp: u32,
    /// Prompt tokens per sequence (also the decode context).
    #[arg(long, env = "GOODPUT_PROFILE_PROMPT")]
    pub prompt: u32,
    /// Sequences in the batch.
    #[arg(long, env = "GOODPUT_PROFILE_BATCH", default_value_t = 1)]
    pub batch: u32,
    /// Extra catalog YAML (accelerators, models, prices).
    #[arg(long, env = "GOODPUT_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Print `{"prefill_ms": .., "decode_ms": ..}`.
    #[arg(long, env = "GOODPUT_PROFILE_JSON")]
    pub json: bool,
}

pub fn run(cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Run(args) => run_scenario(args),
        SimCommand::Profile(args) => profile(args),
    }
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    let (mut scenario, base) = match &args.scenario {
        Some(p) => (
            Scenario::from_file(p)?,
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (Scenario::builtin()?, PathBuf::from(".")),
    };
    if let Some(trace) = &args.trace {
        scenario.workload = WorkloadSpec::Trace {
            path: trace.display().to_string(),
            rate_scale: None,
            max_duration_s: None,
        };
    }
    let base = if args.trace.is_some() {
        PathBuf::from(".")
    } else {
        base
    };
    if args.policy != "fixed" {
        anyhow::bail!("unknown --policy `{}` (available: fixed)", args.policy);
    }
    let workload = load_workload(&scenario, &base)?;
    let mode = args.step_by_step.then_some(StepMode::StepByStep);
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif_bar();
        bar.set_message(format!("{} requests", workload.requests.len()));
        bar
    });
    let progress = bar.as_ref().map(|b| {
        let b = b.clone();
        move |f: f64| b.set_position((f * 1000.0) as u64)
    });
    let progress_ref: Option<&dyn Fn(f64)> = progress.as_ref().map(|p| p as &dyn Fn(f64));
    let sim = simulate(&scenario, &workload, None, mode, progress_ref)?;
    let report = &sim.report;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let summary = args.out.join("summary.json");
    std::fs::write(&summary, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", summary.display()))?;
    let page = args.out.join("report.html");
    std::fs::write(&page, html::render_html(report))
        .with_context(|| format!("cannot write {}", page.display()))?;
    let requests = args.out.join("requests.csv");
    std::fs::write(&requests, sim.requests_csv())
        .with_context(|| format!("cannot write {}", requests.display()))?;
    if args.json {
        super::emit(&format!("{}\n", serde_json::to_string_pretty(report)?))
    } else {
        super::emit(&format!(
            "{}wrote {}, {} and {}\n",
            table::summary_table(report),
            summary.display(),
            page.display(),
            requests.display()
        ))
    }
}

fn indicatif_bar() -> goodput_sim::ProgressBar {
    goodput_sim::progress_bar(1000)
}

fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    let mut catalog = Catalog::builtin();
    if let Some(p) = &args.catalog {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        catalog
            .extend_from_yaml(&text)
            .with_context(|| format!("in {}", p.display()))?;
    }
    let p = goodput_sim::profile::profile(
        &catalog,
        &args.model,
        &args.accelerator,
        args.tp,
        args.prompt,
        args.batch,
        None,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"prefill_ms": p.prefill_ms, "decode_ms": p.decode_ms})
        );
    } else {
        println!(
            "{} on {} x {}, batch {} x {} tokens\n  prefill  {:>10.2} ms  ({} steps)\n  decode   {:>10.2} ms  per iteration\n  KV cache {:>10} tokens per replica",
            args.model,
            args.tp,
            args.accelerator,
            args.batch,
            args.prompt,
            p.prefill_ms,
            p.prefill_steps,
            p.decode_ms,
            p.kv_capacity_tokens
        );
    }
    Ok(())
}
