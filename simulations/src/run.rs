//! One simulation from scenario to [`RunReport`]: builds the workload, runs the cluster with the
//! chosen policies, and summarises per-request outcomes, cost and time series.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::cluster::{ClusterRun, RunOptions, percentile, run_cluster};
use crate::engine::StepMode;
use crate::policy::{Autoscaler, FixedReplicas, LeastLoaded, RoundRobin, Router};
use crate::report::{Percentiles, RequestStats, RunReport, TimeSeries, VariantStats};
use crate::scenario::{Scenario, ScenarioError, WorkloadSpec};
use crate::workload::{Workload, trace, transform};

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    #[error("workload generator: {0}")]
    Generate(String),
    #[error("workload transform: {0}")]
    Transform(String),
    #[error("the workload has no requests")]
    EmptyWorkload,
}

/// Builds the scenario's workload; relative trace paths resolve from `base_dir`.
pub fn load_workload(scenario: &Scenario, base_dir: &Path) -> Result<Workload, RunError> {
    let w = match &scenario.workload {
        WorkloadSpec::Trace {
            path,
            rate_scale,
            max_duration_s,
        } => {
            let p = Path::new(path);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            };
            let mut w = trace::load_trace(&p)?;
            if let Some(d) = max_duration_s {
                w = transform::truncate(w, *d).map_err(|e| RunError::Transform(e.to_string()))?;
            }
            if let Some(f) = rate_scale {
                w = transform::compress_time(w, *f)
                    .map_err(|e| RunError::Transform(e.to_string()))?;
            }
            w
        }
        WorkloadSpec::Generator(g) => g
            .generate()
            .map_err(|e| RunError::Generate(e.to_string()))?,
    };
    if w.requests.is_empty() {
        return Err(RunError::EmptyWorkload);
    }
    Ok(w)
}

/// The router a scenario names.
pub fn router_for(name: &str) -> Box<dyn Router> {
    match name {
        "least-loaded" => Box::new(LeastLoaded),
        _ => Box::new(RoundRobin::default()),
    }
}

/// Runs `scenario` over `workload` with its router and the given autoscaler (the fixed replica
/// counts of the scenario when None).
pub fn simulate(
    scenario: &Scenario,
    workload: &Workload,
    autoscaler: Option<&mut dyn Autoscaler>,
    mode: Option<StepMode>,
    progress: Option<&dyn Fn(f64)>,
) -> Result<Simulation, RunError> {
    let mut router = router_for(&scenario.router);
    simulate_with_router(
        scenario,
        workload,
        router.as_mut(),
        autoscaler,
        mode,
        progress,
    )
}

/// [`simulate`] with a router of the caller's instead of the scenario's (goodput's scheduler
/// brings its pickers this way; the simulator does not depend on it).
pub fn simulate_with_router(
    scenario: &Scenario,
    workload: &Workload,
    router: &mut dyn Router,
    autoscaler: Option<&mut dyn Autoscaler>,
    mode: Option<StepMode>,
    progress: Option<&dyn Fn(f64)>,
) -> Result<Simulation, RunError> {
    let mut fixed = FixedReplicas;
    let autoscaler: &mut dyn Autoscaler = match autoscaler {
        Some(a) => a,
        None => &mut fixed,
    };
    let options = RunOptions {
        mode: mode.unwrap_or(scenario.mode),
        progress,
    };
    let started = Instant::now();
    let run = run_cluster(scenario, workload, router, autoscaler, &options)?;
    let wall = started.elapsed().as_secs_f64();
    let report = summarise(
        scenario,
        workload,
        &run,
        router.name(),
        autoscaler.name(),
        wall,
    );
    Ok(Simulation { report, run })
}

/// A finished simulation: the summary and the raw per-request outcomes behind it.
#[derive(Debug)]
pub struct Simulation {
    pub report: RunReport,
    pub run: ClusterRun,
}

impl Simulation {
    /// One CSV row per request: arrival, TTFT, mean ITL, end-to-end latency (ms), tokens, the
    /// prompt tokens served from the prefix cache, the variant that produced its tokens, and
    /// whether it met the SLO. Unfinished requests have empty latency cells.
    pub fn requests_csv(&self) -> String {
        use std::fmt::Write;
        let slo = self.report.slo;
        let mut out = String::from(
            "id,arrival_s,ttft_ms,itl_ms,e2e_ms,output_tokens,cached_tokens,variant,met_slo,rejected\n",
        );
        let cell = |x: Option<f64>| x.map(|v| format!("{:.3}", v * 1e3)).unwrap_or_default();
        for (id, o) in self.run.outcomes.iter().enumerate() {
            let e2e = o.finish_s.map(|f| f - o.arrival_s);
            let met = match (o.ttft_s(), o.mean_itl_s()) {
                (Some(t), Some(i)) if o.finish_s.is_some() => slo.met_by(t, i),
                _ => false,
            };
            let variant = o
                .variant
                .and_then(|v| self.run.variants.get(v))
                .map_or("", |v| v.name.as_str());
            let _ = writeln!(
                out,
                "{id},{:.6},{},{},{},{},{},{variant},{met},{}",
                o.arrival_s,
                cell(o.ttft_s()),
                cell(o.mean_itl_s().filter(|_| o.finish_s.is_some())),
                cell(e2e),
                o.output_tokens,
                o.cached_tokens,
                o.rejected
            );
        }
        out
    }
}

fn pct(values: &mut [f64]) -> Percentiles {
    if values.is_empty() {
        let nan = f64::NAN;
        return Percentiles {
            mean: nan,
            p50: nan,
            p90: nan,
            p95: nan,
            p99: nan,
            max: nan,
        };
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    Percentiles {
        mean,
        p50: percentile(values, 0.5),
        p90: percentile(values, 0.9),
        p95: percentile(values, 0.95),
        p99: percentile(values, 0.99),
        max: percentile(values, 1.0),
    }
}

/// Turns a cluster run into the report.
pub fn summarise(
    scenario: &Scenario,
    workload: &Workload,
    run: &ClusterRun,
    router: &str,
    policy: &str,
    wall_time_s: f64,
) -> RunReport {
    let slo = scenario.slo;
    let total = run.outcomes.len() as u64;
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut e2e = Vec::new();
    let (mut ok, mut ttft_ok, mut itl_ok, mut completed) = (0u64, 0u64, 0u64, 0u64);
    // Misses per sampled interval, by the interval a request arrived in: the first sample at
    // or after its arrival (the last one for arrivals after the final sample).
    let sample_times = &run.timeseries.t_s;
    let mut slo_missed = vec![0.0; sample_times.len()];
    let mut missed_at = |arrival: f64| {
        let k = sample_times.partition_point(|&t| t < arrival);
        if let Some(m) = slo_missed.get_mut(k.min(sample_times.len().saturating_sub(1))) {
            *m += 1.0;
        }
    };
    for o in &run.outcomes {
        let (Some(t), Some(i), Some(f)) = (o.ttft_s(), o.mean_itl_s(), o.finish_s) else {
            missed_at(o.arrival_s);
            continue;
        };
        completed += 1;
        ttft.push(t * 1e3);
        if o.output_tokens > 1 {
            itl.push(i * 1e3);
        }
        e2e.push((f - o.arrival_s) * 1e3);
        let t_ok = t * 1e3 <= slo.ttft_ms;
        let i_ok = i * 1e3 <= slo.itl_ms;
        ttft_ok += t_ok as u64;
        itl_ok += i_ok as u64;
        ok += (t_ok && i_ok) as u64;
        if !(t_ok && i_ok) {
            missed_at(o.arrival_s);
        }
    }
    let frac = |x: u64| {
        if total > 0 {
            x as f64 / total as f64
        } else {
            0.0
        }
    };
    let mut variants = Vec::new();
    let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
    let (mut cost, mut hours) = (0.0, 0.0);
    for (i, v) in run.variants.iter().enumerate() {
        let spans: Vec<_> = run.replica_spans.iter().filter(|s| s.0 == i).collect();
        let replica_hours: f64 = spans.iter().map(|s| (s.2 - s.1).max(0.0) / 3600.0).sum();
        let acc_hours = replica_hours * v.tp as f64;
        let c = acc_hours * v.price_per_device_hour;
        cost += c;
        hours += acc_hours;
        *by_type.entry(v.accelerator.clone()).or_default() += acc_hours;
        let series = run.timeseries.replicas.get(&v.name);
        let mean_replicas = if run.end_s > 0.0 {
            replica_hours * 3600.0 / run.end_s
        } else {
            0.0
        };
        let max_replicas = series
            .map_or(0.0, |s| s.iter().copied().fold(0.0, f64::max))
            .max(v.initial_replicas as f64);
        variants.push(VariantStats {
            name: v.name.clone(),
            model: scenario.model.clone(),
            accelerator: v.accelerator.clone(),
            tensor_parallel: v.tp,
            role: v.role,
            requests: run.served_per_variant[i],
            mean_replicas,
            max_replicas: max_replicas as u32,
            accelerator_hours: acc_hours,
            cost_usd: c,
            kv_capacity_tokens: v.engine.kv_capacity_tokens,
        });
    }
    RunReport {
        scenario: scenario.name.clone(),
        workload: workload.name.clone(),
        policy: policy.to_string(),
        router: router.to_string(),
        slo,
        duration_s: run.end_s,
        requests: RequestStats {
            total,
            completed,
            unfinished: total - completed,
            ttft_ms: pct(&mut ttft),
            itl_ms: pct(&mut itl),
            e2e_ms: pct(&mut e2e),
            slo_attainment: frac(ok),
            ttft_attainment: frac(ttft_ok),
            itl_attainment: frac(itl_ok),
            prefix_hit_rate: if run.prefix_queries > 0 {
                run.prefix_hits as f64 / run.prefix_queries as f64
            } else {
                0.0
            },
            preemptions: run.preemptions,
        },
        variants,
        cost_usd: cost,
        accelerator_hours: hours,
        accelerator_hours_by_type: by_type,
        scale_events: run.scale_events.clone(),
        timeseries: TimeSeries {
            slo_missed,
            ..run.timeseries.clone()
        },
        wall_time_s,
        engine_steps: run.engine_steps,
        events: run.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_per_interval_add_up_to_the_attainment_lost() {
        // One L40S under more chat load than it carries within tight targets: many requests
        // miss, spread over the run.
        let yaml = r#"
name: overloaded
model: llama-3.1-8b
slo: { ttft_ms: 500, itl_ms: 30 }
pools:
  - { accelerator: l40s, capacity: 4 }
variants:
  - { name: v, accelerator: l40s, tp: 1, replicas: 1 }
workload: { generator: { rate: 6, duration_s: 120, lengths: azure-conv } }
"#;
        let scenario = Scenario::from_yaml(yaml, "overloaded").expect("scenario");
        let workload = load_workload(&scenario, Path::new(".")).expect("workload");
        let sim = simulate(&scenario, &workload, None, None, None).expect("run");
        let r = &sim.report;
        let ts = &r.timeseries;
        assert_eq!(ts.slo_missed.len(), ts.t_s.len());
        let missed: f64 = ts.slo_missed.iter().sum();
        let expected = r.requests.total as f64 * (1.0 - r.requests.slo_attainment);
        assert!(missed > 0.0, "{missed}");
        assert!((missed - expected).abs() < 1e-6, "{missed} vs {expected}");
        // Every miss sits in an interval at or after its arrival.
        let first_miss = sim
            .run
            .outcomes
            .iter()
            .filter(|o| {
                !matches!((o.ttft_s(), o.mean_itl_s(), o.finish_s),
                    (Some(t), Some(i), Some(_)) if t * 1e3 <= 500.0 && i * 1e3 <= 30.0)
            })
            .map(|o| o.arrival_s)
            .fold(f64::INFINITY, f64::min);
        let first_interval = ts.slo_missed.iter().position(|&m| m > 0.0).expect("a miss");
        assert!(ts.t_s[first_interval] >= first_miss, "{first_interval}");
        assert!(first_interval == 0 || ts.t_s[first_interval - 1] < first_miss);
    }
}
