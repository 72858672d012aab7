//! The results of one simulation run, as plain data (serialised as `summary.json`).

use std::collections::BTreeMap;

use goodput_core::{Role, Slo};
use serde::{Deserialize, Serialize};

/// Latency distribution summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Request-level outcomes of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    /// Requests in the workload.
    pub total: u64,
    /// Requests that finished before the simulation ended.
    pub completed: u64,
    /// Requests that never finished (still queued or running at the end, or no replica).
    pub unfinished: u64,
    /// Time to first token, ms, over completed requests.
    pub ttft_ms: Percentiles,
    /// Per-request mean inter-token latency (TPOT), ms, over completed requests with >= 2 tokens.
    pub itl_ms: Percentiles,
    /// End-to-end latency, ms.
    pub e2e_ms: Percentiles,
    /// Fraction of all requests (unfinished count as misses) meeting both SLO targets.
    pub slo_attainment: f64,
    /// Fraction meeting the TTFT target.
    pub ttft_attainment: f64,
    /// Fraction meeting the ITL target.
    pub itl_attainment: f64,
    /// Prompt tokens served from the prefix cache / prompt tokens looked up.
    pub prefix_hit_rate: f64,
    /// Preemptions (KV cache exhausted) over the run.
    pub preemptions: u64,
}

/// Per-variant outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    pub name: String,
    pub model: String,
    pub accelerator: String,
    pub tensor_parallel: u32,
    pub role: Role,
    /// Requests this variant served (prefilled, for prefill variants).
    pub requests: u64,
    pub mean_replicas: f64,
    pub max_replicas: u32,
    pub accelerator_hours: f64,
    pub cost_usd: f64,
    /// KV cache capacity of one replica, tokens.
    pub kv_capacity_tokens: u64,
}

/// Time series sampled at a fixed interval (one entry per sample in every vector).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Sample interval, seconds.
    pub interval_s: f64,
    /// Sample times, seconds since the start.
    pub t_s: Vec<f64>,
    /// Arrivals per second over the preceding interval.
    pub arrival_rate: Vec<f64>,
    /// Replicas (starting + ready + draining) per variant name.
    pub replicas: BTreeMap<String, Vec<f64>>,
    /// Ready replicas per variant name.
    pub ready_replicas: BTreeMap<String, Vec<f64>>,
    /// TTFT p95 of requests whose first token came in the interval, ms (NaN when none).
    pub ttft_p95_ms: Vec<f64>,
    /// Mean-ITL p95 of requests that finished in the interval, ms (NaN when none).
    pub itl_p95_ms: Vec<f64>,
    /// Cost rate of the replicas held, USD per hour.
    pub cost_per_hour: Vec<f64>,
    /// Requests waiting (queued) across the fleet.
    pub waiting: Vec<f64>,
    /// Requests that arrived in the interval and missed the SLO (either target, or never
    /// finished): where a run lost its attainment. Filled in from the outcomes after the run
    /// (empty in reports written before it existed).
    #[serde(default)]
    pub slo_missed: Vec<f64>,
}

/// One change of a variant's replica target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub t_s: f64,
    pub variant: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// Everything one run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    pub workload: String,
    /// Autoscaling policy name.
    pub policy: String,
    /// Routing policy name.
    pub router: String,
    pub slo: Slo,
    /// Simulated span, seconds.
    pub duration_s: f64,
    pub requests: RequestStats,
    pub variants: Vec<VariantStats>,
    pub cost_usd: f64,
    pub accelerator_hours: f64,
    /// Accelerator-hours per accelerator id.
    pub accelerator_hours_by_type: BTreeMap<String, f64>,
    pub scale_events: Vec<ScaleEvent>,
    pub timeseries: TimeSeries,
    /// Wall-clock seconds the simulation took (not the rendering).
    pub wall_time_s: f64,
    /// Engine steps executed and events processed, for speed accounting.
    pub engine_steps: u64,
    pub events: u64,
}
