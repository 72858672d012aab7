//! What goodput observes of a variant's load, whether read from a real Prometheus (PromQL over
//! vLLM's metrics) or from the simulator's Prometheus view. The autoscaler decides on these.

use serde::{Deserialize, Serialize};

/// Aggregated observations of one variant over a window, as PromQL over vLLM metrics gives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantLoad {
    /// Replicas whose metrics contributed.
    pub replicas_reporting: u32,
    /// Finished requests per second (`rate(vllm:request_success_total)`).
    pub request_rate: f64,
    /// Prompt tokens per second.
    pub prompt_token_rate: f64,
    /// Generated tokens per second.
    pub generation_token_rate: f64,
    /// Mean prompt and output tokens per finished request.
    pub mean_prompt_tokens: f64,
    pub mean_output_tokens: f64,
    /// 90th percentile of prompt and output lengths (from the token-count histograms).
    pub p90_prompt_tokens: Option<f64>,
    pub p90_output_tokens: Option<f64>,
    /// TTFT quantiles from the histogram, seconds (None without observations).
    pub ttft_p50_s: Option<f64>,
    pub ttft_p90_s: Option<f64>,
    pub ttft_p95_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    /// Inter-token latency quantiles, seconds.
    pub itl_p50_s: Option<f64>,
    pub itl_p90_s: Option<f64>,
    pub itl_p95_s: Option<f64>,
    pub itl_p99_s: Option<f64>,
    /// Requests waiting and running, summed over replicas (latest scrape).
    pub waiting: f64,
    pub running: f64,
    /// Mean KV-cache usage over replicas, 0..1.
    pub kv_usage: f64,
    /// Prefix-cache hit tokens over queried tokens in the window.
    pub prefix_hit_rate: f64,
    /// Preemptions per second.
    pub preemption_rate: f64,
    /// Age of the newest sample used, seconds; large means stale.
    pub age_s: f64,
}
