//! Side-by-side comparison of goodput's picker with round-robin, least-requests and llm-d's
//! prefix+load scorer in the cluster simulator, on the same fleet and trace.
//!
//! ```sh
//! GOODPUT_SHARED_DATA=../shared/data cargo run --release -p goodput-scheduler --example sim_compare
//! ```
//! Prints one markdown table per workload: SLO attainment, TTFT p50/p95, TPOT p95, prefix hit
//! rate. `goodput (prior)` predicts from the variants' physics alone; the `trained` rows use
//! predictors trained on measured latencies, either of the `goodput (prior)` run alone or of
//! all four runs before them (the simulator's router hook has no completion callback, so
//! learning happens between runs).

use std::path::PathBuf;

use anyhow::Context;
use goodput_predictor::RetrainReason;
use goodput_scheduler::sim::{SimRouter, physics_predictors, training_samples};
use goodput_scheduler::{LatencyModel, VariantPredictors, picker_for};
use goodput_sim::cluster::{ClusterRun, RunOptions, Variant, resolve_variants, run_cluster};
use goodput_sim::policy::FixedReplicas;
use goodput_sim::run::{load_workload, summarise};
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::Workload;

const FLEET: &str = r#"
model: llama-3.1-8b
pools:
  - { accelerator: h100, capacity: 16 }
  - { accelerator: a100, capacity: 16 }
  - { accelerator: l40s, capacity: 32 }
"#;

struct Case {
    name: &'static str,
    trace: &'static str,
    slo: &'static str,
    variants: &'static str,
    max_duration_s: f64,
    rate_scale: f64,
}

const CASES: [Case; 2] = [
    Case {
        name: "mooncake-conversation (prefix reuse)",
        trace: "mooncake-conversation.jsonl",
        slo: "{ ttft_ms: 5000, itl_ms: 100, percentile: 95 }",
        variants: r#"
  - { name: h100-tp1, accelerator: h100, tp: 1, replicas: 4, max_replicas: 4 }
  - { name: a100-tp1, accelerator: a100, tp: 1, replicas: 4, max_replicas: 4 }
  - { name: l40s-tp1, accelerator: l40s, tp: 1, replicas: 4, max_replicas: 4 }
"#,
        max_duration_s: 1200.0,
        rate_scale: 1.0,
    },
    Case {
        name: "azure-2023-conv (load)",
        trace: "azure-2023-conv.csv",
        slo: "{ ttft_ms: 1000, itl_ms: 60, percentile: 95 }",
        variants: r#"
  - { name: h100-tp1, accelerator: h100, tp: 1, replicas: 1, max_replicas: 1 }
  - { name: a100-tp1, accelerator: a100, tp: 1, replicas: 1, max_replicas: 1 }
  - { name: l40s-tp1, accelerator: l40s, tp: 1, replicas: 2, max_replicas: 2 }
"#,
        max_duration_s: 1200.0,
        rate_scale: 2.0,
    },
];

fn scenario(case: &Case, data: &std::path::Path) -> anyhow::Result<Scenario> {
    let yaml = format!(
        "name: route-compare\n{FLEET}slo: {}\nvariants:{}workload:\n  trace: {{ path: {:?}, max_duration_s: {}, rate_scale: {} }}\nrouter: round-robin\ndrain_s: 600\n",
        case.slo,
        case.variants,
        data.join(case.trace).display().to_string(),
        case.max_duration_s,
        case.rate_scale,
    );
    Ok(Scenario::from_yaml(&yaml, case.name)?)
}

struct Row {
    name: String,
    slo: f64,
    ttft_p50: f64,
    ttft_p95: f64,
    tpot_p95: f64,
    hit: f64,
    unfinished: u64,
}

fn run<L: LatencyModel>(
    scenario: &Scenario,
    workload: &Workload,
    variants: &[Variant],
    label: &str,
    picker: &str,
    latency: L,
) -> anyhow::Result<(Row, SimRouter<L>, ClusterRun)> {
    let picker = picker_for(picker).context("picker")?;
    let slo = Some((scenario.slo.ttft_ms, scenario.slo.itl_ms));
    let mut router = SimRouter::new(picker, latency, variants, workload.hash_block_tokens, slo);
    let opts = RunOptions {
        mode: scenario.mode,
        progress: None,
    };
    let run = run_cluster(scenario, workload, &mut router, &mut FixedReplicas, &opts)?;
    let r = summarise(scenario, workload, &run, label, "fixed", 0.0).requests;
    Ok((
        Row {
            name: label.to_string(),
            slo: r.slo_attainment,
            ttft_p50: r.ttft_ms.p50,
            ttft_p95: r.ttft_ms.p95,
            tpot_p95: r.itl_ms.p95,
            hit: r.prefix_hit_rate,
            unfinished: r.unfinished,
        },
        router,
        run,
    ))
}

fn main() -> anyhow::Result<()> {
    let data = PathBuf::from(
        std::env::var("GOODPUT_SHARED_DATA").unwrap_or_else(|_| "../shared/data".into()),
    );
    for case in &CASES {
        let scenario = scenario(case, &data)?;
        // The scenario names the trace by its path under `data` already.
        let workload = load_workload(&scenario, std::path::Path::new("."))
            .with_context(|| format!("loading {} from {}", case.trace, data.display()))?;
        let variants = resolve_variants(&scenario, scenario.mode)?;
        let mut rows = Vec::new();
        // Every run's dispatches with its measured latencies: the "history" the trained
        // predictors learn from.
        let mut history: Vec<Vec<goodput_predictor::Sample>> = vec![Vec::new(); variants.len()];
        let mut keep = |router_dispatches: &[goodput_scheduler::sim::Dispatch],
                        run: &ClusterRun| {
            for (v, s) in training_samples(router_dispatches, &run.outcomes, variants.len())
                .into_iter()
                .enumerate()
            {
                history[v].extend(s);
            }
        };
        for (label, p) in [
            ("round-robin", "round-robin"),
            ("least-requests", "least-requests"),
            ("prefix+load (llm-d default 2/2/3)", "prefix-load"),
        ] {
            let (row, router, cluster) = run(
                &scenario,
                &workload,
                &variants,
                label,
                p,
                goodput_scheduler::NoPredictions,
            )?;
            keep(router.dispatches(), &cluster);
            rows.push(row);
        }
        let prior = VariantPredictors::new(physics_predictors(&variants));
        let (row, router, cluster) = run(
            &scenario,
            &workload,
            &variants,
            "goodput (prior)",
            "goodput",
            prior,
        )?;
        rows.push(row);
        let own = training_samples(router.dispatches(), &cluster.outcomes, variants.len());
        keep(router.dispatches(), &cluster);
        let fit = |samples: &[Vec<goodput_predictor::Sample>]| {
            let trained = VariantPredictors::new(physics_predictors(&variants));
            let mut fitted = 0;
            for (v, s) in samples.iter().enumerate() {
                if let Some(p) = trained.get(v) {
                    p.add_samples(s, 0.0);
                    if p.retrain(RetrainReason::Manual, 1.0).is_some() {
                        fitted += 1;
                    }
                }
            }
            (trained, fitted)
        };
        let (trained, _) = fit(&own);
        rows.push(
            run(
                &scenario,
                &workload,
                &variants,
                "goodput (trained on its own run)",
                "goodput",
                trained,
            )?
            .0,
        );
        let (trained, fitted) = fit(&history);
        rows.push(
            run(
                &scenario,
                &workload,
                &variants,
                "goodput (trained on all four runs)",
                "goodput",
                trained,
            )?
            .0,
        );
        println!(
            "\n### {} — {} requests over {:.0} s, fleet {}, SLO TTFT {} ms / TPOT {} ms ({} of {} variant models fitted)\n",
            case.name,
            workload.requests.len(),
            workload.duration_s(),
            variants
                .iter()
                .map(|v| format!("{}x{}", v.initial_replicas, v.name))
                .collect::<Vec<_>>()
                .join(" + "),
            scenario.slo.ttft_ms,
            scenario.slo.itl_ms,
            fitted,
            variants.len()
        );
        println!(
            "| picker | SLO attainment | TTFT p50 (ms) | TTFT p95 (ms) | TPOT p95 (ms) | prefix hit rate | unfinished |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in rows {
            println!(
                "| {} | {:.1} % | {:.0} | {:.0} | {:.1} | {:.1} % | {} |",
                r.name,
                r.slo * 100.0,
                r.ttft_p50,
                r.ttft_p95,
                r.tpot_p95,
                r.hit * 100.0,
                r.unfinished
            );
        }
    }
    Ok(())
}
