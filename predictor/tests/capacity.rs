//! The performance model's per-replica capacity at an SLO against what the simulator shows for
//! the same variant: the highest Poisson rate into one replica whose p95 TTFT and p95
//! per-request mean ITL meet the SLO, found by bisection over simulated runs.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed set-up should panic

use goodput_core::catalog::EngineLimits;
use goodput_core::perf::kv_capacity_tokens;
use goodput_core::{Catalog, StepCost, VariantLoad};
use goodput_predictor::perf::{PerfModel, Prior, ReplicaLoad};
use goodput_sim::run::{load_workload, simulate};
use goodput_sim::scenario::Scenario;

const TTFT_S: f64 = 1.0;
const ITL_S: f64 = 0.06;

fn scenario(acc: &str, rate: f64) -> Scenario {
    let yaml = format!(
        r#"
name: capacity
model: llama-3.1-8b
slo: {{ ttft_ms: {}, itl_ms: {}, percentile: 95 }}
pools:
  - {{ accelerator: {acc}, capacity: 8 }}
variants:
  - {{ name: v, accelerator: {acc}, tp: 1, replicas: 1, max_replicas: 1 }}
workload:
  generator:
    rate: {rate}
    duration_s: 600
    lengths: {{ fixed: {{ input: 1000, output: 200 }} }}
    seed: 5
drain_s: 300
"#,
        TTFT_S * 1e3,
        ITL_S * 1e3
    );
    Scenario::from_yaml(&yaml, "capacity").expect("scenario")
}

/// (p50, p90, p95, p99) TTFT and ITL of one simulated run, seconds, as a VariantLoad.
fn observe(acc: &str, rate: f64) -> VariantLoad {
    let s = scenario(acc, rate);
    let w = load_workload(&s, std::path::Path::new(".")).expect("workload");
    let r = simulate(&s, &w, None, None, None).expect("run");
    let t = &r.report.requests.ttft_ms;
    let i = &r.report.requests.itl_ms;
    VariantLoad {
        replicas_reporting: 1,
        request_rate: rate,
        mean_prompt_tokens: 1000.0,
        mean_output_tokens: 200.0,
        ttft_p50_s: Some(t.p50 / 1e3),
        ttft_p90_s: Some(t.p90 / 1e3),
        ttft_p95_s: Some(t.p95 / 1e3),
        ttft_p99_s: Some(t.p99 / 1e3),
        itl_p50_s: Some(i.p50 / 1e3),
        itl_p90_s: Some(i.p90 / 1e3),
        itl_p95_s: Some(i.p95 / 1e3),
        itl_p99_s: Some(i.p99 / 1e3),
        ..Default::default()
    }
}

fn meets(acc: &str, rate: f64) -> bool {
    let o = observe(acc, rate);
    o.ttft_p95_s.is_some_and(|x| x <= TTFT_S) && o.itl_p95_s.is_some_and(|x| x <= ITL_S)
}

fn simulated_capacity(acc: &str) -> f64 {
    let (mut lo, mut hi) = (0.25, 0.5);
    while meets(acc, hi) {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..7 {
        let mid = 0.5 * (lo + hi);
        if meets(acc, mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn model(acc: &str) -> PerfModel {
    let c = Catalog::builtin();
    let m = c.model("llama-3.1-8b").expect("model");
    let a = c.accelerator(acc).expect("accelerator");
    let limits = EngineLimits::vllm_defaults(a);
    PerfModel::new(Prior {
        cost: StepCost::new(m, a, 1, &Default::default()),
        limits,
        kv_capacity_tokens: kv_capacity_tokens(m, a, 1, &limits),
    })
}

const SHAPE: ReplicaLoad = ReplicaLoad {
    rate: 0.0,
    mean_input_tokens: 1000.0,
    mean_output_tokens: 200.0,
    prefix_hit_rate: 0.0,
};

#[test]
fn capacity_at_the_slo_matches_the_simulator() {
    // Observed variant: corrected with simulated observations at a few loads.
    let sim_h100 = simulated_capacity("h100");
    let mut h100 = model("h100");
    let prior_h100 = h100.capacity(&SHAPE, TTFT_S, ITL_S, 95.0);
    for f in [0.3, 0.5, 0.7, 0.85] {
        h100.observe(&observe("h100", f * sim_h100));
    }
    let fitted_h100 = h100.capacity(&SHAPE, TTFT_S, ITL_S, 95.0);
    // Prior only.
    let sim_l40s = simulated_capacity("l40s");
    let prior_l40s = model("l40s").capacity(&SHAPE, TTFT_S, ITL_S, 95.0);
    eprintln!(
        "h100: simulator {sim_h100:.2} req/s, prior {prior_h100:.2}, corrected {fitted_h100:.2}; \
         l40s: simulator {sim_l40s:.2}, prior {prior_l40s:.2}"
    );
    let err = |a: f64, b: f64| (a / b - 1.0).abs();
    assert!(err(fitted_h100, sim_h100) <= 0.10, "h100 corrected");
    assert!(err(prior_l40s, sim_l40s) <= 0.10, "l40s prior only");
}
