//! Latency objectives and the role vocabulary shared by every goodput component.

use serde::{Deserialize, Serialize};

/// The role a variant's replicas play in serving a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Prefill and decode on the same replica (plain vLLM).
    Unified,
    /// Prefill only; the KV cache is handed to a decode replica.
    Prefill,
    /// Decode only; receives KV caches from prefill replicas.
    Decode,
}

impl Role {
    /// The lowercase name used in configs, labels and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unified => "unified",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's latency objectives: a percentile target for time to first token and one for
/// inter-token latency (per-request mean time per output token, as DistServe and llm-d count it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// TTFT target in milliseconds.
    pub ttft_ms: f64,
    /// Inter-token latency target in milliseconds.
    pub itl_ms: f64,
    /// The percentile (0-100) of requests that must meet both targets, e.g. 95.
    #[serde(default = "default_percentile")]
    pub percentile: f64,
}

fn default_percentile() -> f64 {
    95.0
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            ttft_ms: 2000.0,
            itl_ms: 100.0,
            percentile: 95.0,
        }
    }
}

impl Slo {
    /// Whether one request with these latencies meets both targets.
    pub fn met_by(&self, ttft_s: f64, mean_itl_s: f64) -> bool {
        ttft_s * 1e3 <= self.ttft_ms && mean_itl_s * 1e3 <= self.itl_ms
    }
}
