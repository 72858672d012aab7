//! `goodput sim ...`: the simulator's commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use goodput_core::Catalog;
use goodput_sim::engine::StepMode;
use goodput_sim::policy::{Autoscaler, Router};
use goodput_sim::report::{html, table};
use goodput_sim::run::{load_workload, router_for, simulate_with_router};
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
    /// Live vLLM-compatible servers on localhost (OpenAI API, streaming, `/metrics`), each
    /// driven by the engine model in real time. Runs until interrupted.
    Serve(ServeArgs),
    /// Open-loop streaming load against OpenAI-compatible servers, from a trace or a synthetic
    /// workload; reports client-side TTFT/ITL/e2e percentiles, errors and SLO attainment.
    Load(LoadArgs),
    /// The same workload under several autoscaling policies: a table of SLO attainment, cost,
    /// accelerator-hours and scale events, plus DIR/compare.json and DIR/compare.html.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Scenario YAML (default: the built-in scenario).
    #[arg(long, env = "GOODPUT_SIM_SCENARIO")]
    pub scenario: Option<PathBuf>,
    /// Replay this trace instead of the scenario's workload.
    #[arg(long, env = "GOODPUT_SIM_TRACE")]
    pub trace: Option<PathBuf>,
    /// Play the workload this many times in a row before the other transforms, each copy as
    /// other users (fresh prefix hash ids): with `--repeat 24 --envelope-period-s 86400` a
    /// one-hour trace fills a day under a day-long envelope.
    #[arg(long, env = "GOODPUT_SIM_REPEAT", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: Option<u32>,
    /// Lay a daily envelope over the workload with this peak-to-trough ratio (thinning).
    #[arg(long, env = "GOODPUT_SIM_ENVELOPE_PEAK_TO_TROUGH")]
    pub envelope_peak_to_trough: Option<f64>,
    /// Period of that envelope, seconds.
    #[arg(long, env = "GOODPUT_SIM_ENVELOPE_PERIOD_S", default_value_t = 3600.0)]
    pub envelope_period_s: f64,
    /// Multiply the arrival rate by this factor after the envelope, keeping the duration
    /// (extra copies of requests, or random thinning below 1).
    #[arg(long, env = "GOODPUT_SIM_RATE_FACTOR")]
    pub rate_factor: Option<f64>,
    /// Replay only the first this many seconds of the workload.
    #[arg(long, env = "GOODPUT_SIM_MAX_DURATION_S")]
    pub max_duration_s: Option<f64>,
    /// Seed of the random draws that shape the replay: the envelope's thinning uses it, the
    /// rate factor's copies or thinning the next integer. Other seeds give other replays of
    /// the same trace, for spread across runs.
    #[arg(long, env = "GOODPUT_SIM_REPLAY_SEED", default_value_t = 1)]
    pub replay_seed: u64,
    /// Comma-separated policies. `static-peak` is the cheapest fixed fleet that reaches 99 %
    /// SLO attainment on this workload, found by simulating candidate fleets (a dozen or two
    /// extra runs), or the best fleet when none does.
    #[arg(
        long,
        env = "GOODPUT_SIM_POLICIES",
        value_delimiter = ',',
        default_value = "goodput,keda-slo,wva-saturation,dynamo-planner,static-peak,hpa-kv"
    )]
    pub policies: Vec<String>,
    /// Request router every policy runs behind (the static fleet is sized behind it too):
    /// `scenario` (the default: the scenario's own `router:`, least-loaded in the shipped
    /// scenarios, so that only the autoscaler differs), or one of the scheduler's pickers:
    /// goodput (the whole of goodput when the policy is goodput), least-requests, prefix-load
    /// (llm-d's default prefix + load scorer), round-robin. goodput's autoscaler plans its mix
    /// of variants for it (count-balanced behind least-loaded, least-requests, round-robin).
    #[arg(long, env = "GOODPUT_SIM_ROUTER", default_value = "scenario")]
    pub router: String,
    /// Directory for compare.json and compare.html.
    #[arg(long, env = "GOODPUT_SIM_OUT", default_value = "goodput-compare")]
    pub out: PathBuf,
    /// Also write DIR/<policy>.requests.csv for each policy: one row per request (arrival,
    /// TTFT, mean ITL, tokens, cached tokens, the variant that served it, whether it met the
    /// SLO), as `sim run` writes requests.csv, to see where and on what a policy missed.
    #[arg(long, env = "GOODPUT_SIM_REQUESTS")]
    pub requests: bool,
    /// Policies simulated at a time, each on a core of its own (default: the cores this process
    /// may use). The figures do not depend on it; memory grows with it, one run of the workload
    /// per job.
    #[arg(long, env = "GOODPUT_SIM_JOBS", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Number of servers (replicas).
    #[arg(long, env = "GOODPUT_SERVE_REPLICAS", default_value_t = 1)]
    pub replicas: u16,
    /// Port of the first server; the others follow (0: ephemeral ports, printed at start).
    #[arg(long, env = "GOODPUT_SERVE_PORT_BASE", default_value_t = 8000)]
    pub port_base: u16,
    /// Address to listen on.
    #[arg(long, env = "GOODPUT_SERVE_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Catalog model id.
    #[arg(long, env = "GOODPUT_SERVE_MODEL", default_value = "llama-3.1-8b")]
    pub model: String,
    /// Name clients use in `model` (default: the catalog id).
    #[arg(long, env = "GOODPUT_SERVE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Catalog accelerator id.
    #[arg(long, env = "GOODPUT_SERVE_ACCELERATOR", default_value = "h100")]
    pub accelerator: String,
    /// Tensor-parallel degree.
    #[arg(long, env = "GOODPUT_SERVE_TP", default_value_t = 1)]
    pub tp: u32,
    /// unified, prefill or decode (a decode server also plays llm-d's routing sidecar).
    #[arg(long, env = "GOODPUT_SERVE_ROLE", default_value = "unified", value_parser = parse_role)]
    pub role: goodput_core::Role,
    /// Simulated seconds per wall second (10 runs the model ten times faster than real).
    #[arg(long, env = "GOODPUT_SERVE_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// vLLM's --max-num-seqs (default: vLLM's for the device).
    #[arg(long, env = "GOODPUT_SERVE_MAX_NUM_SEQS")]
    pub max_num_seqs: Option<u32>,
    /// vLLM's --max-num-batched-tokens (default: vLLM's for the device).
    #[arg(long, env = "GOODPUT_SERVE_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: Option<u32>,
    /// vLLM's --max-model-len (default: the model's context).
    #[arg(long, env = "GOODPUT_SERVE_MAX_MODEL_LEN")]
    pub max_model_len: Option<u64>,
    /// Also expose the deprecated metric names (vllm:time_per_output_token_seconds,
    /// vllm:gpu_cache_usage_perc, vllm:gpu_prefix_cache_*).
    #[arg(long, env = "GOODPUT_SERVE_DEPRECATED_METRICS")]
    pub deprecated_metrics: bool,
    /// Share of generation requests answered with HTTP 500 (fault injection).
    #[arg(long, env = "GOODPUT_SERVE_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Every this many wall seconds the server stops answering ...
    #[arg(long, env = "GOODPUT_SERVE_STALL_EVERY_S")]
    pub stall_every_s: Option<f64>,
    /// ... for this many seconds.
    #[arg(long, env = "GOODPUT_SERVE_STALL_FOR_S", default_value_t = 2.0)]
    pub stall_for_s: f64,
    /// After this many wall seconds up, a server dies (connections reset, engine state lost) ...
    #[arg(long, env = "GOODPUT_SERVE_CRASH_EVERY_S")]
    pub crash_every_s: Option<f64>,
    /// ... and comes back this many seconds later.
    #[arg(long, env = "GOODPUT_SERVE_DOWN_FOR_S", default_value_t = 5.0)]
    pub down_for_s: f64,
    /// Contact prefill servers named by x-prefiller-host-port on non-loopback addresses too.
    #[arg(long, env = "GOODPUT_SERVE_ALLOW_REMOTE_PREFILLERS")]
    pub allow_remote_prefillers: bool,
    /// Seed of output-length draws and injected errors.
    #[arg(long, env = "GOODPUT_SERVE_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Extra catalog YAML (accelerators, models).
    #[arg(long, env = "GOODPUT_CATALOG")]
    pub catalog: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of a server (repeat for several: requests go round-robin).
    #[arg(
        long = "url",
        env = "GOODPUT_LOAD_URL",
        value_delimiter = ',',
        required = true
    )]
    pub urls: Vec<String>,
    /// Replay this trace (Azure CSV or Mooncake JSONL) at its own timestamps.
    #[arg(long, env = "GOODPUT_LOAD_TRACE", conflicts_with = "rate")]
    pub trace: Option<PathBuf>,
    /// Synthetic Poisson arrivals at this rate (requests per second).
    #[arg(long, env = "GOODPUT_LOAD_RATE", requires = "duration")]
    pub rate: Option<f64>,
    /// Length of the synthetic workload, seconds.
    #[arg(long, env = "GOODPUT_LOAD_DURATION")]
    pub duration: Option<f64>,
    /// Length preset of the synthetic workload (azure-conv, azure-code, mooncake-conv, sharegpt,
    /// arxiv) or `fixed:INPUT:OUTPUT`.
    #[arg(long, env = "GOODPUT_LOAD_LENGTHS", default_value = "sharegpt")]
    pub lengths: String,
    /// completions or chat.
    #[arg(long, env = "GOODPUT_LOAD_API", default_value = "completions")]
    pub api: String,
    /// `model` field to send (default: none, which vLLM accepts).
    #[arg(long, env = "GOODPUT_LOAD_MODEL")]
    pub model: Option<String>,
    /// TTFT objective, ms (with --slo-itl-ms: report SLO attainment).
    #[arg(long, env = "GOODPUT_LOAD_SLO_TTFT_MS", requires = "slo_itl_ms")]
    pub slo_ttft_ms: Option<f64>,
    /// Inter-token latency objective (per-request mean), ms.
    #[arg(long, env = "GOODPUT_LOAD_SLO_ITL_MS", requires = "slo_ttft_ms")]
    pub slo_itl_ms: Option<f64>,
    /// Send at most this many requests.
    #[arg(long, env = "GOODPUT_LOAD_MAX_REQUESTS", default_value_t = 100_000)]
    pub max_requests: usize,
    /// Issue no request after this many seconds.
    #[arg(long, env = "GOODPUT_LOAD_MAX_DURATION_S", default_value_t = 3600.0)]
    pub max_duration_s: f64,
    /// Give up on a request after this many seconds.
    #[arg(long, env = "GOODPUT_LOAD_TIMEOUT_S", default_value_t = 300.0)]
    pub timeout_s: f64,
    /// At most this many requests outstanding (later arrivals are dropped and counted).
    #[arg(long, env = "GOODPUT_LOAD_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Seed of the synthetic workload and of the prompt text.
    #[arg(long, env = "GOODPUT_LOAD_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long, env = "GOODPUT_LOAD_JSON")]
    pub json: bool,
}

fn parse_role(s: &str) -> Result<goodput_core::Role, String> {
    match s {
        "unified" => Ok(goodput_core::Role::Unified),
        "prefill" => Ok(goodput_core::Role::Prefill),
        "decode" => Ok(goodput_core::Role::Decode),
        other => Err(format!("unknown role `{other}` (unified, prefill, decode)")),
    }
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
    /// Autoscaling policy: goodput (the default: replicas of each variant sized for the SLOs
    /// at the least cost), `fixed` (the scenario's replica counts, never changed), or a peer's
    /// policy as a baseline: keda-slo, wva-saturation, dynamo-planner, static-peak, hpa-kv.
    #[arg(long, env = "GOODPUT_SIM_POLICY", default_value = "goodput")]
    pub policy: String,
    /// Request router, one of the scheduler's pickers (the code that runs behind Envoy):
    /// goodput (the default: SLO-aware, predicting each replica's TTFT and TPOT from its
    /// variant's physics), least-requests, prefix-load (llm-d's default prefix + load scorer),
    /// round-robin; or `scenario` for the scenario's own `router:` (least-loaded or
    /// round-robin). goodput's autoscaler plans its mix of variants for it: behind
    /// least-loaded, least-requests and round-robin as for a router that balances counts.
    #[arg(long, env = "GOODPUT_SIM_ROUTER", default_value = "goodput")]
    pub router: String,
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
        SimCommand::Serve(args) => serve(args),
        SimCommand::Load(args) => load(args),
        SimCommand::Compare(args) => compare(args),
    }
}

/// Makes the router of one run (see [`router_factory`]).
type MakeRouter = Box<dyn Fn(&Scenario) -> Result<Box<dyn Router>, String> + Sync>;

/// A fresh router per run, as `sim run` and `sim compare` name it (`--router`): one of
/// goodput's scheduler pickers on physics predictions, or None for `scenario` (the simulator's
/// router the scenario names). An unknown name is an error here, before anything runs.
fn router_factory(name: &str, block_tokens: u32) -> anyhow::Result<Option<MakeRouter>> {
    use goodput_scheduler::sim::{SimRouter, physics_predictors};
    if name == "scenario" {
        return Ok(None);
    }
    if goodput_scheduler::picker_for(name).is_none() {
        anyhow::bail!(
            "unknown router `{name}` (one of {}, scenario)",
            goodput_scheduler::PICKERS.join(", ")
        );
    }
    let name = name.to_string();
    Ok(Some(Box::new(
        move |scenario: &Scenario| -> Result<Box<dyn Router>, String> {
            let picker = goodput_scheduler::picker_for(&name)
                .ok_or_else(|| format!("unknown router `{name}`"))?;
            let variants = goodput_sim::cluster::resolve_variants(scenario, scenario.mode)
                .map_err(|e| e.to_string())?;
            let latency = goodput_scheduler::VariantPredictors::new(physics_predictors(&variants));
            Ok(Box::new(SimRouter::new(
                picker,
                latency,
                &variants,
                block_tokens,
                Some((scenario.slo.ttft_ms, scenario.slo.itl_ms)),
            )))
        },
    )))
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
    let workload = load_workload(&scenario, &base)?;
    let factory = router_factory(&args.router, workload.hash_block_tokens)?;
    let factory_ref = factory.as_deref();
    let mut prepared = goodput_autoscaler::compare::prepare_with(
        &args.policy,
        &scenario,
        &workload,
        None,
        factory_ref,
    )?;
    let scenario = prepared.scenario.clone();
    let mut router = match factory_ref {
        Some(make) => make(&scenario).map_err(anyhow::Error::msg)?,
        None => router_for(&scenario.router),
    };
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
    let sim = simulate_with_router(
        &scenario,
        &workload,
        router.as_mut(),
        prepared
            .policy
            .as_deref_mut()
            .map(|a| a as &mut dyn Autoscaler),
        mode,
        progress_ref,
    )?;
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

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    use goodput_sim::workload::generate::Envelope;
    use goodput_sim::workload::transform;
    let (mut scenario, base) = match &args.scenario {
        Some(p) => (
            Scenario::from_file(p)?,
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (Scenario::builtin()?, PathBuf::from(".")),
    };
    let base = if let Some(trace) = &args.trace {
        scenario.workload = WorkloadSpec::Trace {
            path: trace.display().to_string(),
            rate_scale: None,
            max_duration_s: None,
        };
        PathBuf::from(".")
    } else {
        base
    };
    let mut workload = load_workload(&scenario, &base)?;
    if let Some(n) = args.repeat {
        workload = transform::repeat(workload, n)?;
    }
    if let Some(r) = args.envelope_peak_to_trough {
        let env = Envelope::Daily {
            peak_to_trough: r,
            period_s: args.envelope_period_s,
            phase: 0.0,
        };
        workload = transform::apply_envelope(workload, &env, args.replay_seed)?;
    }
    if let Some(f) = args.rate_factor {
        workload = transform::thin_or_replicate(workload, f, args.replay_seed.wrapping_add(1))?;
    }
    if let Some(d) = args.max_duration_s {
        workload = transform::truncate(workload, d)?;
    }
    let factory = router_factory(&args.router, workload.hash_block_tokens)?;
    let mut written = Vec::new();
    let mut keep_requests = |policy: &str, sim: &goodput_sim::run::Simulation| {
        if !args.requests {
            return Ok(());
        }
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
        let path = args.out.join(format!("{policy}.requests.csv"));
        std::fs::write(&path, sim.requests_csv())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let reports = goodput_autoscaler::compare::compare_each(
        &scenario,
        &workload,
        &args.policies,
        factory.as_deref(),
        args.jobs
            .map_or_else(goodput_autoscaler::compare::default_jobs, |j| j as usize),
        &mut keep_requests,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let json = args.out.join("compare.json");
    let value = goodput_autoscaler::compare::compare_json(&reports);
    std::fs::write(&json, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let page = args.out.join("compare.html");
    std::fs::write(&page, html::render_compare_html(&reports))
        .with_context(|| format!("cannot write {}", page.display()))?;
    let router = reports.first().map_or("", |r| r.router.as_str());
    let per_request = written
        .iter()
        .map(|p| format!("wrote {}\n", p.display()))
        .collect::<String>();
    super::emit(&format!(
        "router: {router}\n{}wrote {} and {}\n{per_request}",
        table::compare_table(&reports),
        json.display(),
        page.display()
    ))
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use goodput_sim::live::{FaultConfig, LiveServers, ServerConfig};
    let mut catalog = Catalog::builtin();
    if let Some(p) = &args.catalog {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        catalog
            .extend_from_yaml(&text)
            .with_context(|| format!("in {}", p.display()))?;
    }
    let cfg = ServerConfig {
        model: args.model,
        served_model_name: args.served_model_name,
        accelerator: args.accelerator,
        tp: args.tp,
        role: args.role,
        time_scale: args.time_scale,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_model_len: args.max_model_len,
        deprecated_metrics: args.deprecated_metrics,
        faults: FaultConfig {
            error_rate: args.error_rate,
            stall_every_s: args.stall_every_s,
            stall_for_s: args.stall_for_s,
            crash_every_s: args.crash_every_s,
            down_for_s: args.down_for_s,
            seed: args.seed,
        },
        allow_remote_prefillers: args.allow_remote_prefillers,
        seed: args.seed,
        ..ServerConfig::default()
    };
    runtime()?.block_on(async move {
        let servers =
            LiveServers::start(&catalog, &cfg, args.host, args.port_base, args.replicas).await?;
        let mut lines = String::new();
        for url in servers.urls() {
            lines.push_str(&format!("serving {} ({}) at {url}\n", cfg.model, cfg.role));
        }
        super::emit(&lines)?;
        super::shutdown_signal().await;
        servers.shutdown().await;
        Ok(())
    })
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    use goodput_sim::live::load::{LoadConfig, render_text, run_load};
    use goodput_sim::live::protocol::Api;
    use goodput_sim::workload::generate::{GeneratorSpec, LengthProfile};
    let workload = match (&args.trace, args.rate, args.duration) {
        (Some(path), _, _) => goodput_sim::workload::trace::load_trace(path)?,
        (None, Some(rate), Some(duration_s)) => {
            let lengths = match args.lengths.strip_prefix("fixed:") {
                Some(rest) => {
                    let (i, o) = rest
                        .split_once(':')
                        .context("--lengths fixed:INPUT:OUTPUT needs two numbers")?;
                    LengthProfile::Fixed {
                        input: i.parse().context("--lengths fixed: bad input length")?,
                        output: o.parse().context("--lengths fixed: bad output length")?,
                    }
                }
                None => args
                    .lengths
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--lengths: {e}"))?,
            };
            GeneratorSpec {
                rate,
                duration_s,
                arrival: Default::default(),
                envelope: Default::default(),
                lengths,
                prefix: None,
                seed: args.seed,
            }
            .generate()?
        }
        _ => anyhow::bail!("give --trace FILE, or --rate R and --duration S"),
    };
    let api = match args.api.as_str() {
        "completions" => Api::Completions,
        "chat" => Api::Chat,
        other => anyhow::bail!("unknown --api `{other}` (completions, chat)"),
    };
    let slo = match (args.slo_ttft_ms, args.slo_itl_ms) {
        (Some(ttft_ms), Some(itl_ms)) => Some(goodput_core::Slo {
            ttft_ms,
            itl_ms,
            percentile: 100.0,
        }),
        _ => None,
    };
    let cfg = LoadConfig {
        urls: args.urls,
        api,
        model: args.model,
        slo,
        max_requests: args.max_requests,
        max_duration_s: args.max_duration_s,
        request_timeout_s: args.timeout_s,
        max_in_flight: args.max_in_flight,
        seed: args.seed,
    };
    let (report, _) = runtime()?.block_on(run_load(&cfg, &workload))?;
    if args.json {
        super::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        super::emit(&render_text(&report))
    }
}
