//! How much load one replica of a variant sustains within the SLOs.
//!
//! The optimiser asks a [`CapacityModel`] for the largest request rate one replica can take for a
//! load shape (mean prompt and output tokens, prefix-cache hit rate) while the share of requests
//! meeting both the TTFT and the ITL targets stays at or above a quantile. [`EngineCapacity`]
//! answers by probing the simulator's vLLM engine model (`goodput_sim::engine::Engine`) with a
//! synthetic steady workload of that shape (bursty arrivals, CV 2) and bisecting on the rate,
//! judging only the probe's steady state (not the requests that arrive while the batch fills or
//! empties); answers are cached per (variant, rounded shape), so a controller pays for each
//! probe once. Using the engine model
//! keeps the policy consistent with the simulator's physics, and in production it is the same
//! calibrated model of a vLLM replica.
//!
//! A variant's role shapes its probe: a prefill replica gets prompts with one output token and
//! must return that token within `PREFILL_TTFT_SHARE` of the TTFT target; a decode replica gets
//! requests whose prompt KV arrives computed and must hold the ITL target and start within the
//! rest of the TTFT target. The rate a P/D pair carries is then the smaller of the two.
//!
//! [`CapacityModel::concurrency`] reports the requests in flight on a replica at that rated
//! load (Little's law over the same probe), which bounds a mix behind a router that balances
//! counts of outstanding requests.
//!
//! Data flow: `LoadShape` + variant index -> cached probe -> requests per second per replica
//! (and requests in flight at that rate).

use std::collections::HashMap;
use std::sync::Arc;

use goodput_core::{Role, Slo};
use goodput_sim::engine::{Engine, EngineParams, EngineRequest, Finished};

/// The shape of the load a variant serves, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadShape {
    pub mean_input_tokens: f64,
    pub mean_output_tokens: f64,
    /// Share of prompt tokens served from the prefix cache, 0..1.
    pub prefix_hit_rate: f64,
}

impl LoadShape {
    /// The shape rounded to a cache key: lengths to 25 % log buckets, the hit rate to tenths.
    fn key(&self) -> (i32, i32, i32) {
        let b = |x: f64| (x.max(1.0).ln() / 1.25f64.ln()).round() as i32;
        (
            b(self.mean_input_tokens),
            b(self.mean_output_tokens),
            (self.prefix_hit_rate.clamp(0.0, 1.0) * 10.0).round() as i32,
        )
    }

    /// The representative shape of a cache key (so cached answers do not depend on call order).
    fn from_key(k: (i32, i32, i32)) -> Self {
        let v = |b: i32| 1.25f64.powi(b).max(1.0);
        Self {
            mean_input_tokens: v(k.0),
            mean_output_tokens: v(k.1),
            prefix_hit_rate: k.2 as f64 / 10.0,
        }
    }
}

/// Share of the TTFT target a prefill replica may take; the decode replica's first step (its
/// admission and one decode step after the KV transfer) gets the rest.
pub const PREFILL_TTFT_SHARE: f64 = 0.8;

/// Most requests one probe runs (its cost bounds the first decision on a new load shape).
pub const MAX_PROBE_REQUESTS: usize = 4000;

/// Fewest requests one probe runs. At the 99 % quantile a probe of 1000 requests rests on its
/// ten worst; one of 200 rested on two. With mooncake's 12k-token prompts (0.5-0.9 req/s per
/// H100, where 150 s of traffic is about 100 requests) such short probes seldom met the burst
/// of long prompts a longer run meets: they rated an H100 at 1.5-2x what probes of 1000
/// requests find, and fleets planned on them missed the SLO.
pub const MIN_PROBE_REQUESTS: usize = 1000;

/// Requests a probe runs at most for 150 s of traffic, unless the warm-up and the tail it
/// leaves out need more.
const TYPICAL_PROBE_REQUESTS: usize = 1200;

/// Sustainable load per replica.
pub trait CapacityModel {
    /// Largest request rate (requests per second) one replica of `variant` sustains for `shape`
    /// with the SLO met; 0 when it cannot meet the SLO at any rate.
    fn max_rate(&mut self, variant: usize, shape: &LoadShape) -> f64;

    /// Mean requests in flight on one replica of `variant` carrying [`Self::max_rate`] for
    /// `shape` (0: unknown). A router that balances outstanding requests gives every replica
    /// of a mixed fleet about as many, so the variant that reaches its SLO at the fewest sets
    /// the concurrency the others run at.
    fn concurrency(&mut self, _variant: usize, _shape: &LoadShape) -> f64 {
        0.0
    }
}

/// A fixed capacity per variant (tests, and a fallback when no engine model is known).
#[derive(Debug, Clone)]
pub struct FixedCapacity(pub Vec<f64>);

impl CapacityModel for FixedCapacity {
    fn max_rate(&mut self, variant: usize, _: &LoadShape) -> f64 {
        self.0.get(variant).copied().unwrap_or(0.0)
    }
}

/// Capacity found by probing the engine model of each variant.
#[derive(Debug, Clone)]
pub struct EngineCapacity {
    engines: Vec<EngineParams>,
    slo: Slo,
    /// Share of probe requests that must meet both targets (0..1).
    quantile: f64,
    cache: HashMap<(usize, (i32, i32, i32)), f64>,
    concurrency: HashMap<(usize, (i32, i32, i32)), f64>,
}

impl EngineCapacity {
    /// One engine per variant, in the scenario's variant order; `quantile` is the share of
    /// requests that must meet the SLO (e.g. 0.99).
    pub fn new(engines: Vec<EngineParams>, slo: Slo, quantile: f64) -> Self {
        Self {
            engines,
            slo,
            quantile: quantile.clamp(0.5, 1.0),
            cache: HashMap::new(),
            concurrency: HashMap::new(),
        }
    }

    /// The SLO the probes check.
    pub fn slo(&self) -> Slo {
        self.slo
    }

    /// A probe's length at `rate` and the ids it judges, `warm..end`: the steady state only,
    /// without the requests that arrive while the batch is still filling (two lifetimes of a
    /// request at the ITL target) and those arriving in the last lifetime, which finish while
    /// it empties. Long answers need long probes: with 600-token answers a request lives up to
    /// 36 s at 60 ms, and a probe judged from its first seconds rated a decode replica 20 %
    /// above what it holds.
    fn window(&self, params: &EngineParams, shape: &LoadShape, rate: f64) -> (usize, usize, usize) {
        let life_s = if params.role == Role::Prefill {
            0.0
        } else {
            shape.mean_output_tokens.max(1.0) * self.slo.itl_ms / 1e3
        };
        let warm_n = (rate * 2.0 * life_s).ceil() as usize;
        let tail_n = (rate * life_s).ceil() as usize;
        let n = ((rate * 150.0) as usize)
            .clamp(MIN_PROBE_REQUESTS, TYPICAL_PROBE_REQUESTS)
            .max(warm_n + tail_n + (rate * 120.0) as usize)
            .min(MAX_PROBE_REQUESTS);
        let warm = (n / 10).max(warm_n).min(n / 2);
        let end = n.saturating_sub(tail_n).max(warm + 1);
        (n, warm, end)
    }

    fn meets(&self, params: &EngineParams, shape: &LoadShape, rate: f64) -> bool {
        // Disaggregated, a request's TTFT is its prefill plus its first step on the decode
        // replica (after the KV transfer): each stage gets its share of the target.
        let ttft_budget_ms = self.slo.ttft_ms
            * match params.role {
                Role::Unified => 1.0,
                Role::Prefill => PREFILL_TTFT_SHARE,
                Role::Decode => 1.0 - PREFILL_TTFT_SHARE,
            };
        let (n, warm, end) = self.window(params, shape, rate);
        let finished = probe(params, shape, rate, n);
        let mut ok = 0usize;
        let mut total = 0usize;
        for f in finished
            .iter()
            .filter(|f| f.id as usize >= warm && (f.id as usize) < end)
        {
            total += 1;
            let Some(first) = f.first_token_s else {
                continue;
            };
            let ttft_ok = (first - f.arrival_s) * 1e3 <= ttft_budget_ms;
            let itl_ok = f.output_tokens <= 1
                || (f.finish_s - first) / (f.output_tokens - 1) as f64 * 1e3 <= self.slo.itl_ms;
            ok += usize::from(ttft_ok && itl_ok && !f.rejected);
        }
        let expected = end - warm;
        // Requests that never finished count as misses.
        total > 0 && ok as f64 >= self.quantile * expected.max(total) as f64
    }
}

impl CapacityModel for EngineCapacity {
    fn max_rate(&mut self, variant: usize, shape: &LoadShape) -> f64 {
        let key = shape.key();
        if let Some(r) = self.cache.get(&(variant, key)) {
            return *r;
        }
        let Some(params) = self.engines.get(variant).cloned() else {
            return 0.0;
        };
        let shape = LoadShape::from_key(key);
        let mut lo = 0.0;
        let mut hi = 0.05;
        // Grow until the SLO fails (at most ~2^16 x the start).
        let mut found_fail = false;
        for _ in 0..16 {
            if self.meets(&params, &shape, hi) {
                lo = hi;
                hi *= 2.0;
            } else {
                found_fail = true;
                break;
            }
        }
        if found_fail {
            for _ in 0..6 {
                let mid = 0.5 * (lo + hi);
                if self.meets(&params, &shape, mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        self.cache.insert((variant, key), lo);
        lo
    }

    fn concurrency(&mut self, variant: usize, shape: &LoadShape) -> f64 {
        let key = shape.key();
        if let Some(c) = self.concurrency.get(&(variant, key)) {
            return *c;
        }
        let rate = self.max_rate(variant, shape);
        let Some(params) = self.engines.get(variant).cloned() else {
            return 0.0;
        };
        let shape = LoadShape::from_key(key);
        let mut c = 0.0;
        if rate > 0.0 {
            // Little's law over the judged steady state: in flight = rate x time in system.
            let (n, warm, end) = self.window(&params, &shape, rate);
            let (mut sum, mut count) = (0.0, 0usize);
            for f in probe(&params, &shape, rate, n)
                .iter()
                .filter(|f| f.id as usize >= warm && (f.id as usize) < end && !f.rejected)
            {
                sum += f.finish_s - f.arrival_s;
                count += 1;
            }
            if count > 0 {
                c = rate * sum / count as f64;
            }
        }
        self.concurrency.insert((variant, key), c);
        c
    }
}

/// A small deterministic generator (SplitMix64), so probes are reproducible without a RNG crate.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Exponential with mean `m`.
    fn exp(&mut self, m: f64) -> f64 {
        -m * self.next_f64().ln()
    }
}

/// Coefficient of variation of the probes' inter-arrival times.
pub const ARRIVAL_CV: f64 = 2.0;

/// Runs `n` bursty arrivals at mean `rate` of the given shape through one engine; lengths are
/// exponential around the means (capped at 4x), the cached share of each prompt is one shared
/// prefix.
fn probe(params: &EngineParams, shape: &LoadShape, rate: f64, n: usize) -> Vec<Finished> {
    let mut rng = SplitMix(0x5eed ^ n as u64);
    let mut engine = Engine::new(params.clone());
    let block = params.limits.block_size.max(1);
    let max_len = params.max_model_len.max(2);
    let mut out = Vec::with_capacity(n);
    let mut t = 0.0;
    // Bursty arrivals: a balanced two-phase hyperexponential with coefficient of variation
    // ARRIVAL_CV (production LLM traffic is burstier than Poisson).
    let c2 = ARRIVAL_CV * ARRIVAL_CV;
    let p = 0.5 * (1.0 + ((c2 - 1.0) / (c2 + 1.0)).sqrt());
    let mean_gap = 1.0 / rate;
    for id in 0..n {
        t += if rng.next_f64() < p {
            rng.exp(mean_gap / (2.0 * p))
        } else {
            rng.exp(mean_gap / (2.0 * (1.0 - p)))
        };
        let output = rng
            .exp(shape.mean_output_tokens)
            .clamp(1.0, 4.0 * shape.mean_output_tokens.max(1.0))
            .round() as u32;
        // A prefill replica computes the prompt and its first token, then hands the KV cache
        // to a decode replica, which starts from the transferred prompt.
        let output = if params.role == Role::Prefill {
            1
        } else {
            output
        };
        let input = rng
            .exp(shape.mean_input_tokens)
            .clamp(1.0, 4.0 * shape.mean_input_tokens.max(1.0))
            .round() as u64;
        let input = input.min(max_len.saturating_sub(output as u64 + 1)).max(1) as u32;
        let shared_blocks = ((input as f64 * shape.prefix_hit_rate) / block as f64) as u64;
        let total_blocks = (input as u64).div_ceil(block as u64);
        let hash_ids: Arc<[u64]> = (0..total_blocks)
            .map(|b| {
                if b < shared_blocks {
                    b
                } else {
                    (1 << 40) + (id as u64) * 100_000 + b
                }
            })
            .collect();
        while let Some(next) = engine.next_event() {
            if next > t {
                break;
            }
            out.extend(engine.advance(next));
        }
        engine.sync(t, true);
        let req = EngineRequest {
            id: id as u64,
            prompt_tokens: input,
            output_tokens: output,
            hash_ids,
            hash_block_tokens: block,
            kv_transferred: params.role == Role::Decode,
        };
        if let Some(f) = engine.enqueue(t, req) {
            out.push(f);
        }
        engine.kick(t);
    }
    // Drain, bounded: a hopelessly overloaded probe is cut off (its unfinished requests miss).
    let horizon = t + 600.0;
    let mut guard = 0u64;
    while let Some(next) = engine.next_event() {
        guard += 1;
        if next > horizon || guard > 5_000_000 {
            break;
        }
        out.extend(engine.advance(next));
        engine.kick(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_sim::scenario::Scenario;

    fn conv_capacity() -> (EngineCapacity, Vec<String>) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/hetero-conv.yaml");
        let scenario = Scenario::from_file(&path).unwrap();
        let variants = goodput_sim::cluster::resolve_variants(&scenario, scenario.mode).unwrap();
        let names = variants.iter().map(|v| v.name.clone()).collect();
        let engines = variants.iter().map(|v| v.engine.clone()).collect();
        (EngineCapacity::new(engines, scenario.slo, 0.99), names)
    }

    #[test]
    fn concurrency_is_littles_law_at_the_rated_load() {
        let (mut cap, names) = conv_capacity();
        let chat = LoadShape {
            mean_input_tokens: 1155.0,
            mean_output_tokens: 211.0,
            prefix_hit_rate: 0.0,
        };
        let h100 = names.iter().position(|n| n.starts_with("h100")).unwrap();
        let a100 = names.iter().position(|n| n.starts_with("a100")).unwrap();
        let rate = cap.max_rate(h100, &chat);
        let c = cap.concurrency(h100, &chat);
        // Requests live at least their answer's decode steps (well over 5 ms each) and, for
        // 99 % of them, within the TTFT target plus the answer at the ITL target (answers are
        // capped at 4x the mean).
        let slo = cap.slo();
        assert!(c > rate * 211.0 * 0.005, "{c} at {rate} req/s");
        assert!(
            c < rate * (slo.ttft_ms + 4.0 * 211.0 * slo.itl_ms) / 1e3,
            "{c}"
        );
        // A faster accelerator with more KV room holds more requests at its SLO.
        assert!(c > cap.concurrency(a100, &chat), "{c}");
        // Cached per shape: asking again answers the same.
        assert_eq!(cap.concurrency(h100, &chat), c);
    }
}
