//! The per-variant performance model the autoscaler sizes deployments with: how a variant's
//! TTFT and ITL percentiles grow with its per-replica load, and the highest per-replica load
//! that meets an SLO.
//!
//! Data flow: a [`Prior`] is derived from physics (`goodput_core::perf::StepCost` for the model
//! on the accelerator at its TP degree, the engine limits and KV capacity), so a variant never
//! observed still gets an estimate. Aggregate observations (`goodput_core::VariantLoad`, what
//! PromQL gives) are folded into a [`Correction`]: per metric and percentile, the log-ratio of
//! observed to prior latency, fitted online as a linear function of utilisation by recursive
//! least squares with forgetting, so the model learns how the *shape* of latency-vs-load differs
//! from the prior, not only its level. Both are plain values; [`PerfModel::capacity`] is a pure
//! bisection.
//!
//! The prior's latency percentiles come from a *probe* ([`Prior::probe`]): a short, deterministic,
//! step-by-step simulated run of the variant's engine (vLLM V1's chunked-prefill scheduler under
//! its token budget, every step costed by `StepCost`) fed Poisson arrivals of the load's mean
//! shape. Mean-value formulas (kept as [`Prior::estimate_mean_value`] and for the utilisation
//! the correction regresses on: a batch `B = λ·O·t` by Little's law, an M/D/1 wait on the prefill
//! budget) underestimate how fast latency rises near saturation, where capacity at an SLO is
//! decided; the probe reproduces that queueing by construction.

use goodput_core::catalog::EngineLimits;
use goodput_core::{StepCost, StepWork, VariantLoad};
use serde::{Deserialize, Serialize};

/// A per-replica load point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplicaLoad {
    /// Requests per second per replica.
    pub rate: f64,
    pub mean_input_tokens: f64,
    pub mean_output_tokens: f64,
    /// Share of prompt tokens served from the prefix cache, 0..1.
    pub prefix_hit_rate: f64,
}

/// Latency percentiles, seconds (None = saturated: latency grows without bound).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyEstimate {
    /// TTFT at p50, p90, p95, p99.
    pub ttft_s: [f64; 4],
    /// ITL at p50, p90, p95, p99.
    pub itl_s: [f64; 4],
    /// Fraction of the replica's sustainable rate in use (0..1).
    pub utilisation: f64,
}

/// Percentile levels of [`LatencyEstimate`].
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 95.0, 99.0];

/// The physics of one variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    pub cost: StepCost,
    pub limits: EngineLimits,
    pub kv_capacity_tokens: u64,
}

/// Steady state of the prior at one load.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Steady {
    step_s: f64,
    prefill_s: f64,
    wait_s: f64,
    utilisation: f64,
}

impl Prior {
    fn steady(&self, l: &ReplicaLoad) -> Option<Steady> {
        let rate = l.rate.max(0.0);
        let input = l.mean_input_tokens.max(1.0);
        let output = l.mean_output_tokens.max(1.0);
        let uncached = input * (1.0 - l.prefix_hit_rate.clamp(0.0, 1.0));
        let budget = f64::from(self.limits.max_num_batched_tokens.max(1));
        let context = input + output / 2.0;
        let step = |batch: f64, prefill_tokens: f64| {
            let mut w = StepWork {
                tokens: batch + prefill_tokens,
                attention_pairs: batch * context + prefill_tokens * (input / 2.0),
                kv_tokens: batch * context + prefill_tokens,
                requests: batch.max(1.0),
                has_prefill: prefill_tokens > 0.0,
            };
            if prefill_tokens > 0.0 {
                w.requests += 1.0;
            }
            self.cost.step_time(&w)
        };
        let mut t = step(1.0, 0.0);
        let mut batch = 0.0;
        let mut prefill_per_step = 0.0;
        for _ in 0..200 {
            batch = rate * output * t;
            prefill_per_step = rate * uncached * t;
            if batch > f64::from(self.limits.max_num_seqs)
                || batch * context > self.kv_capacity_tokens as f64
                || batch + prefill_per_step > budget * 4.0
            {
                return None;
            }
            let next = step(batch, prefill_per_step);
            if (next - t).abs() < 1e-9 {
                t = next;
                break;
            }
            t = 0.5 * (t + next);
        }
        if !t.is_finite() || t > 10.0 {
            return None;
        }
        // Prefill of one request: its chunks, each in a step that also carries the decodes.
        let room = (budget - batch).max(1.0);
        let chunks = (uncached / room).ceil().max(1.0);
        let chunk_step = step(batch, uncached.min(room));
        let prefill_s = chunks * chunk_step;
        // The prefill budget as an M/D/1 server: utilisation = offered prefill tokens per second
        // over what the budget can carry per second.
        let rho = (rate * uncached * chunk_step / room).min(0.999);
        let util_batch = batch / f64::from(self.limits.max_num_seqs);
        let util_kv = batch * context / self.kv_capacity_tokens.max(1) as f64;
        let utilisation = rho.max(util_batch).max(util_kv);
        if utilisation >= 0.999 {
            return None;
        }
        let wait_s = rho / (2.0 * (1.0 - rho)) * prefill_s;
        let _ = prefill_per_step;
        Some(Steady {
            step_s: t,
            prefill_s,
            wait_s,
            utilisation,
        })
    }

    /// The prior's estimate; None when the load saturates the replica.
    ///
    /// Percentiles come from [`Prior::probe`], a short simulated run of the variant's engine at
    /// this load; `utilisation` from the analytic steady state (0.999 where the mean-value model
    /// already calls the load saturated but the probe's queue still drains).
    pub fn estimate(&self, l: &ReplicaLoad) -> Option<LatencyEstimate> {
        let p = self.probe(l, PROBE_REQUESTS, PROBE_SEED)?;
        let utilisation = self.steady(l).map_or(0.999, |s| s.utilisation.min(0.999));
        Some(LatencyEstimate {
            ttft_s: p.ttft_s,
            itl_s: p.itl_s,
            utilisation,
        })
    }

    /// The analytic mean-value estimate (steady batch by Little's law, M/D/1 wait on the
    /// prefill budget, fixed percentile shape factors): cheap, but it underestimates how fast
    /// latency rises near saturation. Kept for utilisation and as a quick bound.
    pub fn estimate_mean_value(&self, l: &ReplicaLoad) -> Option<LatencyEstimate> {
        let s = self.steady(l)?;
        let ttft_mean = 0.5 * s.step_s + s.prefill_s + s.wait_s;
        let ttft_shape = [0.8, 1.8, 2.3, 3.5];
        let itl_shape = [0.97, 1.1, 1.15, 1.3];
        Some(LatencyEstimate {
            ttft_s: ttft_shape.map(|k| k * ttft_mean),
            itl_s: itl_shape.map(|k| k * s.step_s),
            utilisation: s.utilisation,
        })
    }

    /// A simulated run of one replica at load `l`: `requests` Poisson arrivals (deterministic
    /// for a given `seed`) of the mean prompt (uncached share `1 − h`) and output, through a
    /// step-by-step model of vLLM V1's scheduler: running requests first (decodes one token,
    /// prefills their next chunk), then waiting ones FCFS while the token budget
    /// (`max_num_batched_tokens`), `max_num_seqs` and the KV capacity allow; every step costs
    /// `StepCost::step_time` of exactly the work scheduled in it. This is the simulator's
    /// engine semantics minus preemption (admission reserves a request's full KV instead), so
    /// the prior reproduces the queueing near saturation that mean-value formulas miss.
    ///
    /// Returns TTFT and per-request mean ITL percentiles (nearest rank, over all requests), or
    /// `None` when the queue grows without bound (more than 5 % of the requests, and at least
    /// 20, still waiting when the last one arrives).
    pub fn probe(&self, l: &ReplicaLoad, requests: usize, seed: u64) -> Option<ProbeResult> {
        let rate = l.rate;
        if !(rate.is_finite() && rate > 0.0) || requests == 0 {
            return None;
        }
        let prompt = l.mean_input_tokens.max(1.0).round() as u64;
        let uncached = ((prompt as f64) * (1.0 - l.prefix_hit_rate.clamp(0.0, 1.0)))
            .round()
            .clamp(1.0, prompt as f64) as u64;
        let cached = prompt - uncached;
        let output = l.mean_output_tokens.max(1.0).round() as u64;
        let footprint = prompt + output;
        if footprint > self.kv_capacity_tokens {
            return None;
        }
        let budget = u64::from(self.limits.max_num_batched_tokens.max(1));
        let max_seqs = self.limits.max_num_seqs.max(1) as usize;
        // Arrival times.
        let mut rng = seed | 1;
        let mut next_u = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            ((rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut arrivals = Vec::with_capacity(requests);
        let mut t = 0.0;
        for _ in 0..requests {
            t += -next_u().ln() / rate;
            arrivals.push(t);
        }
        // (request, computed tokens, generated tokens)
        let mut running: Vec<(usize, u64, u64)> = Vec::with_capacity(max_seqs.min(requests));
        let mut first = vec![f64::NAN; requests];
        let mut itl = Vec::with_capacity(requests);
        let mut next_arrival = 0usize;
        let mut next_admit = 0usize;
        let mut kv_used = 0u64;
        let mut now = 0.0f64;
        let mut scheduled: Vec<u64> = Vec::with_capacity(max_seqs.min(requests));
        let mut saturated = false;
        while next_admit < requests || !running.is_empty() {
            while next_arrival < requests && arrivals[next_arrival] <= now {
                next_arrival += 1;
            }
            if next_arrival == requests
                && !saturated
                && (next_arrival - next_admit) > (requests / 20).max(20)
            {
                saturated = true;
            }
            if running.is_empty() && next_admit == next_arrival {
                // Idle: jump to the next arrival.
                now = arrivals[next_arrival];
                continue;
            }
            let mut left = budget;
            let mut work = StepWork::default();
            scheduled.clear();
            for &(_, computed, generated) in &running {
                let total = prompt + generated;
                let new = (total - computed).min(left);
                if new > 0 {
                    let prefill = computed + new < total || new > 1;
                    work.add(new, computed, prefill);
                }
                scheduled.push(new);
                left -= new;
            }
            while next_admit < next_arrival
                && running.len() < max_seqs
                && left > 0
                && kv_used + footprint <= self.kv_capacity_tokens
            {
                let new = uncached.min(left);
                work.add(new, cached, true);
                running.push((next_admit, cached, 0));
                scheduled.push(new);
                kv_used += footprint;
                left -= new;
                next_admit += 1;
            }
            let dt = self.cost.step_time(&work);
            if !(dt.is_finite() && dt > 0.0) {
                return None;
            }
            now += dt;
            let mut k = 0;
            let mut j = 0;
            while j < running.len() {
                let new = scheduled[k];
                k += 1;
                let (id, computed, generated) = &mut running[j];
                *computed += new;
                if new > 0 && *computed >= prompt + *generated {
                    *generated += 1;
                    if *generated == 1 {
                        first[*id] = now;
                    }
                }
                if *generated >= output {
                    let f = first[*id];
                    itl.push(if output > 1 {
                        (now - f) / (output - 1) as f64
                    } else {
                        0.0
                    });
                    kv_used -= footprint;
                    running.remove(j);
                } else {
                    j += 1;
                }
            }
        }
        if saturated {
            return None;
        }
        let mut ttft: Vec<f64> = first.iter().zip(&arrivals).map(|(f, a)| f - a).collect();
        Some(ProbeResult {
            ttft_s: percentiles(&mut ttft),
            itl_s: percentiles(&mut itl),
        })
    }
}

/// Requests in the probe behind [`Prior::estimate`].
pub const PROBE_REQUESTS: usize = 4000;
/// Seed of the probe's arrivals (fixed, so that estimates are deterministic and monotone enough
/// in the rate for bisection).
pub const PROBE_SEED: u64 = 0x005E_ED0F_600D;

/// Latency percentiles of one probe run, seconds, at [`PERCENTILES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub ttft_s: [f64; 4],
    pub itl_s: [f64; 4],
}

/// Nearest-rank percentiles at [`PERCENTILES`] (the simulator's definition); sorts in place.
fn percentiles(v: &mut [f64]) -> [f64; 4] {
    v.sort_by(f64::total_cmp);
    PERCENTILES.map(|p| {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    })
}

/// Coefficients `[a, b]` and their 2×2 covariance.
type Rls = ([f64; 2], [[f64; 2]; 2]);

/// Online correction of the prior: per metric (TTFT, ITL) and percentile, `ln(observed/prior)`
/// as `a + b·utilisation`, fitted by recursive least squares with forgetting factor `lambda`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// [metric][percentile] → recursive-least-squares state.
    state: [[Rls; 4]; 2],
    lambda: f64,
    pub observations: u64,
}

impl Default for Correction {
    fn default() -> Self {
        // Large initial covariance on the intercept, small on the slope: with few observations
        // the correction is a level shift; the slope is learned only from spread in load.
        let p0 = [[10.0, 0.0], [0.0, 0.1]];
        Self {
            state: [[([0.0, 0.0], p0); 4]; 2],
            lambda: 0.98,
            observations: 0,
        }
    }
}

impl Correction {
    fn update_one(&mut self, m: usize, q: usize, u: f64, y: f64) {
        let (theta, p) = &mut self.state[m][q];
        let x = [1.0, u];
        let px = [
            p[0][0] * x[0] + p[0][1] * x[1],
            p[1][0] * x[0] + p[1][1] * x[1],
        ];
        let denom = self.lambda + x[0] * px[0] + x[1] * px[1];
        let k = [px[0] / denom, px[1] / denom];
        let err = y - (theta[0] * x[0] + theta[1] * x[1]);
        theta[0] += k[0] * err;
        theta[1] += k[1] * err;
        let mut np = [[0.0; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                np[i][j] = (p[i][j] - k[i] * px[j]) / self.lambda;
            }
        }
        *p = np;
    }

    fn factor(&self, m: usize, q: usize, u: f64) -> f64 {
        let (theta, _) = &self.state[m][q];
        (theta[0] + theta[1] * u).clamp(-3.0, 3.0).exp()
    }
}

/// A variant's performance model: prior plus correction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfModel {
    pub prior: Prior,
    pub correction: Correction,
}

impl PerfModel {
    pub fn new(prior: Prior) -> Self {
        Self {
            prior,
            correction: Correction::default(),
        }
    }

    /// Predicted TTFT/ITL percentiles at a per-replica load; None when saturated.
    pub fn estimate(&self, l: &ReplicaLoad) -> Option<LatencyEstimate> {
        let mut e = self.prior.estimate(l)?;
        for q in 0..4 {
            e.ttft_s[q] *= self.correction.factor(0, q, e.utilisation);
            e.itl_s[q] *= self.correction.factor(1, q, e.utilisation);
        }
        Some(e)
    }

    /// Folds in one aggregate observation of the variant (ignored when it has no replicas, no
    /// traffic, or the prior calls its load saturated).
    pub fn observe(&mut self, obs: &VariantLoad) {
        let replicas = f64::from(obs.replicas_reporting);
        if replicas <= 0.0 || obs.request_rate <= 0.0 {
            return;
        }
        let load = ReplicaLoad {
            rate: obs.request_rate / replicas,
            mean_input_tokens: obs.mean_prompt_tokens,
            mean_output_tokens: obs.mean_output_tokens,
            prefix_hit_rate: obs.prefix_hit_rate,
        };
        let Some(prior) = self.prior.estimate(&load) else {
            return;
        };
        let ttft = [
            obs.ttft_p50_s,
            obs.ttft_p90_s,
            obs.ttft_p95_s,
            obs.ttft_p99_s,
        ];
        let itl = [obs.itl_p50_s, obs.itl_p90_s, obs.itl_p95_s, obs.itl_p99_s];
        for q in 0..4 {
            if let Some(v) = ttft[q].filter(|v| *v > 0.0 && v.is_finite()) {
                self.correction
                    .update_one(0, q, prior.utilisation, (v / prior.ttft_s[q]).ln());
            }
            if let Some(v) = itl[q].filter(|v| *v > 0.0 && v.is_finite()) {
                self.correction
                    .update_one(1, q, prior.utilisation, (v / prior.itl_s[q]).ln());
            }
        }
        self.correction.observations += 1;
    }

    /// The highest per-replica request rate whose predicted TTFT and ITL at `percentile` (one
    /// of [`PERCENTILES`], else the next higher) meet the targets; `shape` gives the token
    /// profile (its `rate` is ignored). 0 when even a trickle misses the SLO.
    pub fn capacity(&self, shape: &ReplicaLoad, ttft_s: f64, itl_s: f64, percentile: f64) -> f64 {
        let q = PERCENTILES
            .iter()
            .position(|&p| p >= percentile)
            .unwrap_or(PERCENTILES.len() - 1);
        let ok = |rate: f64| {
            self.estimate(&ReplicaLoad { rate, ..*shape })
                .is_some_and(|e| e.ttft_s[q] <= ttft_s && e.itl_s[q] <= itl_s)
        };
        let mut lo = 0.0;
        let mut hi = 1.0;
        // Grow until the SLO breaks (or a generous ceiling).
        while ok(hi) && hi < 1e5 {
            lo = hi;
            hi *= 2.0;
        }
        if !ok(lo.max(1e-6)) {
            return 0.0;
        }
        // The probe is a simulated run: ~0.1 % precision is plenty.
        for _ in 0..12 {
            let mid = 0.5 * (lo + hi);
            if ok(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_core::Catalog;
    use goodput_core::perf::kv_capacity_tokens;

    fn prior(acc: &str) -> Prior {
        let c = Catalog::builtin();
        let m = c.model("llama-3.1-8b").unwrap();
        let a = c.accelerator(acc).unwrap();
        let limits = EngineLimits::vllm_defaults(a);
        Prior {
            cost: StepCost::new(m, a, 1, &Default::default()),
            limits,
            kv_capacity_tokens: kv_capacity_tokens(m, a, 1, &limits),
        }
    }

    fn shape(rate: f64) -> ReplicaLoad {
        ReplicaLoad {
            rate,
            mean_input_tokens: 1000.0,
            mean_output_tokens: 200.0,
            prefix_hit_rate: 0.0,
        }
    }

    #[test]
    fn latency_grows_with_load_and_saturates() {
        let p = prior("h100");
        let low = p.estimate(&shape(1.0)).unwrap();
        let high = p.estimate(&shape(10.0)).unwrap();
        assert!(high.itl_s[1] > low.itl_s[1] && high.ttft_s[1] > low.ttft_s[1]);
        assert!(high.utilisation > low.utilisation);
        assert!(p.estimate(&shape(1e4)).is_none());
        // A slower device serves less at the same SLO.
        let cap_h100 = PerfModel::new(p).capacity(&shape(0.0), 1.0, 0.05, 95.0);
        let cap_l40s = PerfModel::new(prior("l40s")).capacity(&shape(0.0), 1.0, 0.05, 95.0);
        assert!(
            cap_h100 > cap_l40s && cap_l40s > 0.0,
            "{cap_h100} {cap_l40s}"
        );
    }

    #[test]
    fn observations_pull_the_estimate_toward_what_was_seen() {
        let mut m = PerfModel::new(prior("h100"));
        let truth = 1.5; // the real variant is 50 % slower than the prior everywhere
        for rate in [2.0, 4.0, 6.0, 8.0, 2.0, 4.0, 6.0, 8.0] {
            let e = m.prior.estimate(&shape(rate)).unwrap();
            m.observe(&VariantLoad {
                replicas_reporting: 2,
                request_rate: 2.0 * rate,
                mean_prompt_tokens: 1000.0,
                mean_output_tokens: 200.0,
                ttft_p50_s: Some(e.ttft_s[0] * truth),
                ttft_p90_s: Some(e.ttft_s[1] * truth),
                ttft_p95_s: Some(e.ttft_s[2] * truth),
                ttft_p99_s: Some(e.ttft_s[3] * truth),
                itl_p50_s: Some(e.itl_s[0] * truth),
                itl_p90_s: Some(e.itl_s[1] * truth),
                itl_p95_s: Some(e.itl_s[2] * truth),
                itl_p99_s: Some(e.itl_s[3] * truth),
                ..Default::default()
            });
        }
        let prior_e = m.prior.estimate(&shape(5.0)).unwrap();
        let e = m.estimate(&shape(5.0)).unwrap();
        assert!((e.itl_s[2] / prior_e.itl_s[2] / truth - 1.0).abs() < 0.05);
        assert!((e.ttft_s[2] / prior_e.ttft_s[2] / truth - 1.0).abs() < 0.05);
        assert_eq!(m.correction.observations, 8);
        // No traffic: nothing learned.
        m.observe(&VariantLoad::default());
        assert_eq!(m.correction.observations, 8);
    }
}
