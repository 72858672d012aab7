//! vLLM's metric conventions that goodput reproduces and reads: histogram bucket boundaries
//! (exact, from `vllm/v1/metrics/loggers.py`, identical from v0.10 to recent main) and a
//! cumulative histogram with those boundaries.
//!
//! The simulator records every latency into these histograms exactly as a vLLM server would,
//! so that quantiles computed from them (`histogram_quantile`) carry the same resolution limits
//! that goodput faces against a real Prometheus.

use serde::{Deserialize, Serialize};

/// `vllm:time_to_first_token_seconds` upper bounds (`+Inf` implied).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// `vllm:inter_token_latency_seconds` and `vllm:request_time_per_output_token_seconds`.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// `vllm:e2e_request_latency_seconds`, queue, inference, prefill and decode time histograms.
pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// `vllm:iteration_tokens_total`.
pub const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to and including the
/// first value that is not above `max_value`... precisely: values `m * 10^e` (m in 1,2,5) while
/// they do not exceed `max_value`.
pub fn buckets_1_2_5(max_value: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exponent = 1u64;
    'outer: loop {
        for m in [1u64, 2, 5] {
            let v = m.saturating_mul(exponent);
            if v > max_value {
                break 'outer;
            }
            out.push(v as f64);
        }
        exponent = match exponent.checked_mul(10) {
            Some(e) => e,
            None => break,
        };
    }
    out
}

/// A cumulative histogram with fixed upper bounds, as Prometheus client libraries keep one.
///
/// `counts[i]` counts observations `<= bounds[i]` that are above `bounds[i-1]` (non-cumulative
/// storage); `+Inf` is the last slot. Cumulative counts are produced on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with the given ascending upper bounds (`+Inf` is added).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Records `n` observations of the same value (a batch step emits one ITL per sequence).
    pub fn observe_n(&mut self, value: f64, n: u64) {
        if n == 0 || value.is_nan() {
            return;
        }
        let slot = self.bounds.partition_point(|b| *b < value);
        self.counts[slot] += n;
        self.sum += value * n as f64;
        self.count += n;
    }

    /// Upper bounds, without `+Inf`.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Cumulative counts per bound, `+Inf` last (length `bounds().len() + 1`).
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0;
        self.counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect()
    }

    /// Sum of all observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Prometheus' `histogram_quantile` over cumulative bucket counts: linear interpolation inside
/// the bucket that holds the rank, the lower edge of the first bucket taken as 0, and the
/// highest finite bound returned when the rank falls in `+Inf`. `None` when there are no
/// observations or `q` is outside [0, 1].
pub fn histogram_quantile(q: f64, bounds: &[f64], cumulative: &[f64]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) || cumulative.len() != bounds.len() + 1 {
        return None;
    }
    let total = *cumulative.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let idx = cumulative.partition_point(|c| *c < rank);
    if idx >= bounds.len() {
        return bounds.last().copied();
    }
    let upper = bounds[idx];
    let (lower, below) = if idx == 0 {
        (0.0, 0.0)
    } else {
        (bounds[idx - 1], cumulative[idx - 1])
    };
    let in_bucket = cumulative[idx] - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_buckets_match_vllm_examples() {
        assert_eq!(
            buckets_1_2_5(4096),
            vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0
            ]
        );
        assert_eq!(buckets_1_2_5(8192).last(), Some(&5000.0));
        assert_eq!(buckets_1_2_5(131072).last(), Some(&100000.0));
    }

    #[test]
    fn observations_land_in_le_buckets() {
        let mut h = Histogram::new(&[0.1, 0.5, 1.0]);
        h.observe(0.1); // le="0.1" includes the bound itself
        h.observe(0.3);
        h.observe_n(2.0, 3);
        assert_eq!(h.cumulative(), vec![1, 2, 2, 5]);
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 6.4).abs() < 1e-12);
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        // 10 observations in (0.1, 0.5]: the median sits half way through that bucket.
        let bounds = [0.1, 0.5, 1.0];
        let cum = [0.0, 10.0, 10.0, 10.0];
        let q = histogram_quantile(0.5, &bounds, &cum).unwrap();
        assert!((q - 0.3).abs() < 1e-12);
        // Rank in +Inf returns the highest finite bound.
        let cum = [0.0, 0.0, 0.0, 4.0];
        assert_eq!(histogram_quantile(0.9, &bounds, &cum), Some(1.0));
        assert_eq!(histogram_quantile(0.9, &bounds, &[0.0; 4]), None);
    }
}
