//! Workloads: the stream of requests a simulation replays.
//!
//! A [`Workload`] is a time-ordered list of [`RequestSpec`]s. It comes from a trace file
//! ([`trace`]: Azure-format CSV, Mooncake-format JSONL) or from a built-in generator
//! ([`generate`]: Poisson, bursty Gamma, daily envelope, steps, with length distributions fitted
//! to published trace statistics), and can be transformed ([`transform`]: rate scaling, time
//! compression, a daily envelope laid over a trace). The engine turns `hash_ids` into vLLM
//! block hashes for prefix caching.

pub mod generate;
pub mod trace;
pub mod transform;

use serde::{Deserialize, Serialize};

/// One request as the workload describes it, before the cluster sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// Position in the workload (0-based, unique).
    pub id: u64,
    /// Arrival time in seconds from the start of the workload.
    pub arrival_s: f64,
    /// Prompt length in tokens (>= 1).
    pub input_tokens: u32,
    /// Tokens to generate (>= 1).
    pub output_tokens: u32,
    /// Prefix-block hash ids, one per `Workload::hash_block_tokens` tokens of the prompt; equal ids
    /// mean equal content (Mooncake's convention). Empty when the source has no prefix data, in
    /// which case no two requests share cached blocks.
    pub hash_ids: Vec<u64>,
}

/// A time-ordered request stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Human-readable origin ("azure-2023-conv.csv", "poisson 5 req/s", ...).
    pub name: String,
    /// Tokens covered by one entry of `RequestSpec::hash_ids` (512 for Mooncake traces).
    pub hash_block_tokens: u32,
    /// Requests sorted by `arrival_s`, ids 0..n.
    pub requests: Vec<RequestSpec>,
}

impl Workload {
    /// Time of the last arrival (0 for an empty workload).
    pub fn duration_s(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.arrival_s)
    }

    /// Mean arrival rate over the workload's span, requests per second.
    pub fn mean_rate(&self) -> f64 {
        let d = self.duration_s();
        if d > 0.0 {
            self.requests.len() as f64 / d
        } else {
            0.0
        }
    }
}
