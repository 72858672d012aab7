//! What one simulated vLLM engine exposes on `/metrics`: cumulative counters and histograms with
//! vLLM's names' semantics and bucket boundaries. The simulator's Prometheus view scrapes these;
//! the live servers render them as text.

use goodput_core::vllm::{
    Histogram, ITERATION_TOKEN_BUCKETS, ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS,
    buckets_1_2_5,
};
use serde::Serialize;

/// Cumulative engine metrics (counters only grow; gauges are read from the engine directly).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineCounters {
    /// `vllm:request_success_total` (every simulated request stops at its length).
    pub requests_finished: u64,
    /// Requests refused at admission (longer than the KV cache or the model's context).
    pub requests_rejected: u64,
    /// `vllm:prompt_tokens_total` (prompt tokens of finished requests, cached ones included).
    pub prompt_tokens: u64,
    /// `vllm:generation_tokens_total`.
    pub generation_tokens: u64,
    /// `vllm:prefix_cache_queries_total` and `_hits_total`, tokens.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    /// `vllm:num_preemptions_total`.
    pub preemptions: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
    /// `vllm:request_time_per_output_token_seconds` (per-request mean).
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prefill: Histogram,
    pub decode: Histogram,
    pub inference: Histogram,
    pub iteration_tokens: Histogram,
    pub prompt_tokens_hist: Histogram,
    pub generation_tokens_hist: Histogram,
}

impl EngineCounters {
    /// Empty counters; token-length histograms use vLLM's 1-2-5 buckets up to `max_model_len`.
    pub fn new(max_model_len: u64) -> Self {
        let lengths = buckets_1_2_5(max_model_len);
        Self {
            requests_finished: 0,
            requests_rejected: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            tpot: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode: Histogram::new(REQUEST_LATENCY_BUCKETS),
            inference: Histogram::new(REQUEST_LATENCY_BUCKETS),
            iteration_tokens: Histogram::new(ITERATION_TOKEN_BUCKETS),
            prompt_tokens_hist: Histogram::new(&lengths),
            generation_tokens_hist: Histogram::new(&lengths),
        }
    }
}
