//! The roofline step-time model: how long one vLLM engine step takes on one variant (a model on
//! an accelerator at a tensor-parallel degree), from physics and a handful of calibrated
//! efficiencies.
//!
//! ```text
//! t_step = max(t_compute, t_memory) + t_allreduce + t_fixed
//! t_compute   = (2 N_mm T + 4 L H d P) / (TP * peak_flops * mfu)
//! t_memory    = (W / TP + kv_rank * K) / (peak_bw * mbu)
//! t_allreduce = 2 L (lat * log2 TP + 2 (TP-1)/TP * T h b / bw(T h b))      (TP > 1)
//! t_fixed     = L * c_layer(eager | graph) + c_req * B
//! ```
//! with T tokens in the step, P the (query, context) pairs attention computes, K the context
//! tokens read from the KV cache, B the requests in the step. Weights are read once per step
//! (one fused forward over every chunk and decode, as in vLLM V1). Steps that contain prefill run
//! eagerly (vLLM captures CUDA graphs for decode-sized batches only), which is why they pay a
//! higher per-layer launch cost. All-reduces up to `allreduce_knee_mib` run at the link's
//! bandwidth (vLLM's custom all-reduce); larger ones fall back to NCCL's ring at a fraction of it.
//!
//! [`StepCost`] precomputes every coefficient for a variant so that a step costs a few
//! multiplications; it is linear in its inputs within one regime, which is what lets the
//! simulator advance a decode batch analytically over many steps.

use serde::{Deserialize, Serialize};

use crate::catalog::{Accelerator, EngineLimits, Model};

/// Software overheads of the serving stack, shared by all devices. Defaults are fitted to the
/// Splitwise Llama-2-70B measurements on A100 and H100 at TP 2/4/8 (docs/simulator.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackOverheads {
    /// Per-layer launch cost of a step run eagerly (any step with prefill), microseconds.
    pub eager_layer_us: f64,
    /// Per-layer cost of a CUDA-graph decode step, microseconds.
    pub graph_layer_us: f64,
    /// Per-request cost in every step (scheduling, sampling, detokenising), microseconds.
    pub request_us: f64,
    /// All-reduce message size up to which the fast path runs at link bandwidth, MiB.
    pub allreduce_knee_mib: f64,
    /// Fraction of link bandwidth that all-reduces above the knee achieve.
    pub allreduce_large_efficiency: f64,
}

impl Default for StackOverheads {
    fn default() -> Self {
        Self {
            eager_layer_us: 160.0,
            graph_layer_us: 10.5,
            request_us: 294.0,
            allreduce_knee_mib: 30.0,
            allreduce_large_efficiency: 0.19,
        }
    }
}

/// The work of one engine step, aggregated over the requests scheduled in it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepWork {
    /// New tokens computed (prefill chunk tokens plus one per decoding request).
    pub tokens: f64,
    /// Attention (query, key) pairs: sum over requests of `s*c + s*(s+1)/2` for `s` new tokens
    /// after `c` cached ones.
    pub attention_pairs: f64,
    /// KV-cache tokens read or written: sum over requests of `c + s`.
    pub kv_tokens: f64,
    /// Requests scheduled.
    pub requests: f64,
    /// Whether any request in the step is prefilling (the step runs eagerly).
    pub has_prefill: bool,
}

impl StepWork {
    /// Adds a request computing `new_tokens` after `cached` tokens already in its KV cache.
    pub fn add(&mut self, new_tokens: u64, cached: u64, prefill: bool) {
        let s = new_tokens as f64;
        let c = cached as f64;
        self.tokens += s;
        self.attention_pairs += s * c + s * (s + 1.0) / 2.0;
        self.kv_tokens += c + s;
        self.requests += 1.0;
        self.has_prefill |= prefill;
    }
}

/// Precomputed step-time coefficients of one variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCost {
    /// Seconds of compute per new token (linear layers).
    compute_per_token: f64,
    /// Seconds of compute per attention pair.
    compute_per_pair: f64,
    /// Seconds to stream the weights once.
    weights_time: f64,
    /// Seconds to stream one token of KV on one rank.
    kv_time_per_token: f64,
    /// All-reduce latency term per step, seconds (0 when TP = 1).
    allreduce_fixed: f64,
    /// All-reduce seconds per token below and above the knee.
    allreduce_per_token_small: f64,
    allreduce_per_token_large: f64,
    /// Tokens per step at which all-reduce messages cross the knee.
    allreduce_knee_tokens: f64,
    eager_fixed: f64,
    graph_fixed: f64,
    per_request: f64,
}

/// Which resource bounds a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

impl StepCost {
    /// Coefficients for `model` on `tp` devices of `acc`.
    pub fn new(model: &Model, acc: &Accelerator, tp: u32, overheads: &StackOverheads) -> Self {
        let tp_f = tp.max(1) as f64;
        let flops = tp_f * acc.bf16_tflops * 1e12 * acc.mfu;
        let bw = acc.bandwidth_tbps * 1e12 * acc.mbu;
        let layers = model.layers as f64;
        let (allreduce_fixed, small, large) = if tp > 1 {
            let bytes_per_token = model.hidden as f64 * model.dtype_bytes as f64;
            let ring = 2.0 * (tp_f - 1.0) / tp_f;
            let link = acc.link_gbps * 1e9;
            (
                2.0 * layers * acc.allreduce_latency_us * 1e-6 * tp_f.log2(),
                2.0 * layers * ring * bytes_per_token / link,
                2.0 * layers * ring * bytes_per_token
                    / (link * overheads.allreduce_large_efficiency),
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        Self {
            compute_per_token: 2.0 * model.matmul_params() / flops,
            compute_per_pair: model.attention_flops_per_pair() / flops,
            weights_time: model.weight_bytes() / tp_f / bw,
            kv_time_per_token: model.kv_bytes_per_token_per_rank(tp) / bw,
            allreduce_fixed,
            allreduce_per_token_small: small,
            allreduce_per_token_large: large,
            allreduce_knee_tokens: overheads.allreduce_knee_mib * (1u64 << 20) as f64
                / (model.hidden as f64 * model.dtype_bytes as f64),
            eager_fixed: layers * overheads.eager_layer_us * 1e-6,
            graph_fixed: layers * overheads.graph_layer_us * 1e-6,
            per_request: overheads.request_us * 1e-6,
        }
    }

    /// Seconds one step with this work takes.
    pub fn step_time(&self, w: &StepWork) -> f64 {
        if w.requests <= 0.0 {
            return 0.0;
        }
        let (compute, memory) = self.roofline_terms(w);
        compute.max(memory) + self.overhead(w)
    }

    /// The compute and memory terms of a step, seconds.
    pub fn roofline_terms(&self, w: &StepWork) -> (f64, f64) {
        let compute = self.compute_per_token * w.tokens + self.compute_per_pair * w.attention_pairs;
        let memory = self.weights_time + self.kv_time_per_token * w.kv_tokens;
        (compute, memory)
    }

    /// Everything outside the roofline: all-reduce and fixed costs, seconds.
    pub fn overhead(&self, w: &StepWork) -> f64 {
        let per_token = if w.tokens <= self.allreduce_knee_tokens {
            self.allreduce_per_token_small
        } else {
            self.allreduce_per_token_large
        };
        let fixed = if w.has_prefill {
            self.eager_fixed
        } else {
            self.graph_fixed
        };
        self.allreduce_fixed + per_token * w.tokens + fixed + self.per_request * w.requests
    }

    /// Which roofline term dominates a step.
    pub fn bound(&self, w: &StepWork) -> Bound {
        let (c, m) = self.roofline_terms(w);
        if c >= m {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }

    /// Total time of `n` consecutive decode-only steps of a batch of `batch` requests whose
    /// contexts sum to `context_sum` at the first step and each grow by one token per step.
    ///
    /// Each step's time is `max(a_c + b_c j, a_m + b_m j) + o` for step index `j`, a maximum of
    /// two linear functions, so the sum has a closed form on each side of the one crossover.
    pub fn decode_run_time(&self, batch: f64, context_sum: f64, n: u64) -> f64 {
        if n == 0 || batch <= 0.0 {
            return 0.0;
        }
        let (ac, bc, am, bm, o) = self.decode_linear(batch, context_sum);
        let sum_linear = |a: f64, b: f64, from: u64, to: u64| -> f64 {
            // sum over j in [from, to) of a + b j
            let k = (to - from) as f64;
            a * k + b * ((from + to - 1) as f64) * k / 2.0
        };
        // Crossover index where compute overtakes memory (or the reverse).
        let split = if (bc - bm).abs() < f64::EPSILON {
            None
        } else {
            let x = (am - ac) / (bc - bm);
            if x > 0.0 && x < n as f64 {
                Some(x.ceil() as u64)
            } else {
                None
            }
        };
        let first_is_compute = ac >= am;
        let total_max = match split {
            None => {
                let mid = (n - 1) as f64 / 2.0;
                if ac + bc * mid >= am + bm * mid {
                    sum_linear(ac, bc, 0, n)
                } else {
                    sum_linear(am, bm, 0, n)
                }
            }
            Some(s) => {
                let (a1, b1, a2, b2) = if first_is_compute {
                    (ac, bc, am, bm)
                } else {
                    (am, bm, ac, bc)
                };
                sum_linear(a1, b1, 0, s) + sum_linear(a2, b2, s, n)
            }
        };
        total_max + o * n as f64
    }

    /// Time of decode step `j` (0-based) of such a run; equals `step_time` of the same work.
    pub fn decode_step_time(&self, batch: f64, context_sum: f64, j: u64) -> f64 {
        let (ac, bc, am, bm, o) = self.decode_linear(batch, context_sum);
        let j = j as f64;
        (ac + bc * j).max(am + bm * j) + o
    }

    /// Linear coefficients of a decode run: compute `ac + bc j`, memory `am + bm j`, constant
    /// overhead `o`. Step `j` has contexts summing to `context_sum + batch * j`.
    fn decode_linear(&self, batch: f64, context_sum: f64) -> (f64, f64, f64, f64, f64) {
        // One new token per request: pairs = c + 1 each, kv tokens = c + 1 each.
        let ac = self.compute_per_token * batch + self.compute_per_pair * (context_sum + batch);
        let bc = self.compute_per_pair * batch;
        let am = self.weights_time + self.kv_time_per_token * (context_sum + batch);
        let bm = self.kv_time_per_token * batch;
        let w = StepWork {
            tokens: batch,
            attention_pairs: 0.0,
            kv_tokens: 0.0,
            requests: batch,
            has_prefill: false,
        };
        (ac, bc, am, bm, self.overhead(&w))
    }
}

/// KV-cache capacity of one replica in tokens (a multiple of the block size), or 0 when the
/// weights do not fit: `(memory * utilisation - weights / TP - reserved)` per device, divided by
/// the per-rank KV bytes per token.
pub fn kv_capacity_tokens(model: &Model, acc: &Accelerator, tp: u32, limits: &EngineLimits) -> u64 {
    let per_device = acc.memory_gb * 1e9 * limits.gpu_memory_utilization
        - model.weight_bytes() / tp.max(1) as f64
        - limits.reserved_gb_per_device * 1e9;
    if per_device <= 0.0 {
        return 0;
    }
    let tokens = per_device / model.kv_bytes_per_token_per_rank(tp);
    let block = limits.block_size.max(1) as u64;
    (tokens as u64 / block) * block
}

/// Seconds to move the KV cache of `tokens` prompt tokens from a prefill replica to a decode
/// replica: a setup cost plus bytes over the network, with every TP rank sending its shard in
/// parallel over its own NIC at `efficiency` of line rate.
pub fn kv_transfer_time(
    model: &Model,
    acc: &Accelerator,
    tp: u32,
    tokens: u64,
    setup_s: f64,
    efficiency: f64,
) -> f64 {
    let bytes_per_rank = tokens as f64 * model.kv_bytes_per_token_per_rank(tp);
    let rate = acc.network_gbit * 1e9 / 8.0 * efficiency;
    setup_s + bytes_per_rank / rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn cost(model: &str, acc: &str, tp: u32) -> StepCost {
        let c = Catalog::builtin();
        StepCost::new(
            c.model(model).unwrap(),
            c.accelerator(acc).unwrap(),
            tp,
            &Default::default(),
        )
    }

    #[test]
    fn decode_run_matches_stepwise_sum_across_the_roofline_crossover() {
        // A big batch with long contexts crosses from memory- to compute-bound as contexts grow
        // only for some shapes; check both a plain and a crossing run.
        for (model, acc, batch, ctx) in [
            ("llama-3.1-8b", "h100", 64.0, 64.0 * 500.0),
            ("llama-3.1-8b", "l40s", 256.0, 256.0 * 20.0),
            ("llama-3.1-70b", "a100", 8.0, 8.0 * 4000.0),
        ] {
            let c = cost(model, acc, if model.contains("70b") { 4 } else { 1 });
            let n = 400;
            let mut stepwise = 0.0;
            for j in 0..n {
                let mut w = StepWork::default();
                let per = (ctx + batch * j as f64) / batch;
                for _ in 0..batch as usize {
                    w.add(1, per as u64, false);
                }
                // per-request contexts are equal here, so pairs/kv are exact up to rounding
                stepwise += c.decode_step_time(batch, ctx, j);
                let direct = c.step_time(&w);
                let analytic = c.decode_step_time(batch, ctx, j);
                assert!(
                    (direct - analytic).abs() / direct < 1e-3,
                    "{direct} vs {analytic}"
                );
            }
            let closed = c.decode_run_time(batch, ctx, n);
            assert!(
                (closed - stepwise).abs() / stepwise < 1e-9,
                "{closed} vs {stepwise}"
            );
        }
    }

    #[test]
    fn kv_capacity_matches_reference_table() {
        // simulation-facts.md §2.3: llama-3.1-8b on one H100 holds ~404k tokens at util 0.9.
        let c = Catalog::builtin();
        let acc = c.accelerator("h100").unwrap();
        let limits = EngineLimits::vllm_defaults(acc);
        let toks = kv_capacity_tokens(c.model("llama-3.1-8b").unwrap(), acc, 1, &limits);
        assert!((400_000..410_000).contains(&toks), "{toks}");
        // A 70B model does not fit on one H100.
        assert_eq!(
            kv_capacity_tokens(c.model("llama-3.1-70b").unwrap(), acc, 1, &limits),
            0
        );
    }

    #[test]
    fn bigger_models_and_slower_devices_take_longer() {
        let mut w = StepWork::default();
        w.add(1, 1000, false);
        let small = cost("llama-3.1-8b", "h100", 1).step_time(&w);
        let big = cost("llama-3.1-70b", "h100", 4).step_time(&w);
        let slow = cost("llama-3.1-8b", "l40s", 1).step_time(&w);
        assert!(big > small && slow > small, "{small} {big} {slow}");
    }
}
