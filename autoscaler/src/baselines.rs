//! The peers' autoscaling policies, re-implemented as baselines behind the same decision
//! signature as goodput's (`ClusterView` in, `ScaleDecision`s out). Formulas and defaults follow
//! `shared/reference/autoscaling-anchors.md`:
//!
//! - [`StaticPeak`]: a fixed fleet, held all run (`compare` sizes it as the cheapest that
//!   holds the SLO on the workload).
//! - [`HpaKv`]: Kubernetes HPA on mean KV-cache utilisation (`desired = ceil(ready * kv / target)`,
//!   tolerance 0.1, default behaviour: scale-up max(4 pods, 100 %) per period without
//!   stabilisation, scale-down stabilised over 300 s).
//! - [`WvaSaturation`]: llm-d WVA saturation analyzer V1 (kv 0.80, queue 5, spare triggers
//!   0.10 / 3; +1 on the cheapest variant, -1 on the most expensive, one step per cycle).
//! - [`KedaSlo`]: llm-d's KEDA SLO-ratio recipe (`s = max(P90 TTFT / S_ttft, P90 TPOT / S_tpot)`
//!   clamped at 2, 45 s mean, thresholds 0.55 / 0.40, in-flight credit; HPA behaviour up
//!   max(100 %, 4 pods) per 60 s with 30 s stabilisation, down 1 pod per 120 s with 180 s).
//! - [`DynamoPlanner`]: NVIDIA Dynamo's SLA planner, every 180 s, replicas from the prefill and
//!   decode throughput formulas with the engine model's throughput tables, constant predictor,
//!   no correction factors (both documented options); aggregated mode (one deployment at the
//!   max of the two counts) or, where the scenario has prefill and decode variants,
//!   disaggregated mode (the prefill deployment at `num_p`, the decode deployment at `num_d`).
//!
//! Single-deployment baselines (HPA, KEDA, Dynamo) drive one `primary` variant and keep the
//! others at their minimum; WVA and static peak see every variant.

use std::collections::VecDeque;

use goodput_core::{Slo, StepWork};
use goodput_sim::engine::EngineParams;
use goodput_sim::policy::{ClusterView, ScaleDecision};

fn decision(variant: usize, replicas: u32, reason: &str) -> ScaleDecision {
    ScaleDecision {
        variant,
        replicas,
        reason: reason.to_string(),
    }
}

/// Sets every non-primary variant to its minimum.
fn others_to_min(view: &ClusterView, primary: usize, out: &mut Vec<ScaleDecision>) {
    for (i, v) in view.variants.iter().enumerate() {
        if i != primary && v.target != v.min_replicas {
            out.push(decision(i, v.min_replicas, "not the scaled deployment"));
        }
    }
}

/// A fixed fleet.
#[derive(Debug, Clone)]
pub struct StaticPeak {
    pub replicas: Vec<u32>,
}

impl StaticPeak {
    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        view.variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let r = self.replicas.get(i).copied().unwrap_or(v.min_replicas);
                (r != v.target).then(|| decision(i, r, "static peak"))
            })
            .collect()
    }
}

/// HPA on KV-cache utilisation of one deployment.
#[derive(Debug, Clone)]
pub struct HpaKv {
    pub primary: usize,
    /// Target mean KV utilisation (0..1).
    pub target: f64,
    pub tolerance: f64,
    pub down_stabilisation_s: f64,
    recs: VecDeque<(f64, u32)>,
}

impl HpaKv {
    pub fn new(primary: usize, target: f64) -> Self {
        Self {
            primary,
            target,
            tolerance: 0.1,
            down_stabilisation_s: 300.0,
            recs: VecDeque::new(),
        }
    }

    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        let mut out = Vec::new();
        others_to_min(view, self.primary, &mut out);
        let Some(v) = view.variants.get(self.primary) else {
            return out;
        };
        let lo = v.min_replicas.max(1);
        let current = v.target;
        let Some(load) = v.load.as_ref().filter(|_| v.ready > 0) else {
            if current < lo {
                out.push(decision(self.primary, lo, "hpa-kv: minimum"));
            }
            return out;
        };
        let ratio = load.kv_usage / self.target;
        let mut rec = if (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            (v.ready as f64 * ratio).ceil() as u32
        };
        // Scale-up policies: max(4 pods, 100 %) per period.
        rec = rec.min(current.saturating_add(4).max(current.saturating_mul(2)));
        let now = view.now_s;
        self.recs.push_back((now, rec));
        while let Some((t, _)) = self.recs.front() {
            if now - *t > self.down_stabilisation_s {
                self.recs.pop_front();
            } else {
                break;
            }
        }
        let desired = if rec < current {
            self.recs
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(rec)
                .min(current)
        } else {
            rec
        };
        let desired = desired.clamp(lo, v.max_replicas.max(lo));
        if desired != current {
            out.push(decision(
                self.primary,
                desired,
                &format!(
                    "hpa-kv: kv {:.2} / target {:.2}",
                    load.kv_usage, self.target
                ),
            ));
        }
        out
    }
}

/// WVA saturation analyzer V1.
#[derive(Debug, Clone)]
pub struct WvaSaturation {
    pub kv_threshold: f64,
    pub queue_threshold: f64,
    pub kv_spare_trigger: f64,
    pub queue_spare_trigger: f64,
}

impl Default for WvaSaturation {
    fn default() -> Self {
        Self {
            kv_threshold: 0.80,
            queue_threshold: 5.0,
            kv_spare_trigger: 0.10,
            queue_spare_trigger: 3.0,
        }
    }
}

impl WvaSaturation {
    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        // Per-pod samples: every ready pod of a variant reports the variant's mean KV and its
        // share of the waiting queue.
        let mut non_sat: Vec<(f64, f64)> = Vec::new();
        let mut any = false;
        for v in &view.variants {
            let Some(l) = v.load.as_ref().filter(|_| v.ready > 0) else {
                continue;
            };
            any = true;
            let q = l.waiting / v.ready as f64;
            if l.kv_usage < self.kv_threshold && q < self.queue_threshold {
                non_sat.extend(std::iter::repeat_n((l.kv_usage, q), v.ready as usize));
            }
        }
        let mut out = Vec::new();
        if !any {
            // No metrics: bring up the cheapest variant if nothing runs at all.
            if view.variants.iter().all(|v| v.target == 0)
                && let Some(i) = cheapest(view, |_| true)
            {
                out.push(decision(i, 1, "wva: no replicas"));
            }
            return out;
        }
        let n = non_sat.len() as f64;
        let scale_up = if non_sat.is_empty() {
            true
        } else {
            let spare_kv = non_sat
                .iter()
                .map(|(k, _)| self.kv_threshold - k)
                .sum::<f64>()
                / n;
            let spare_q = non_sat
                .iter()
                .map(|(_, q)| self.queue_threshold - q)
                .sum::<f64>()
                / n;
            spare_kv < self.kv_spare_trigger || spare_q < self.queue_spare_trigger
        };
        let scale_down = !scale_up && non_sat.len() >= 2 && {
            let n1 = n - 1.0;
            let kv = non_sat.iter().map(|(k, _)| k).sum::<f64>() / n1;
            let q = non_sat.iter().map(|(_, q)| q).sum::<f64>() / n1;
            self.kv_threshold - kv >= self.kv_spare_trigger
                && self.queue_threshold - q >= self.queue_spare_trigger
        };
        if scale_up {
            let pick = cheapest(view, |i| {
                let v = &view.variants[i];
                v.starting == 0 && v.target < v.max_replicas && pool_room(view, i)
            });
            if let Some(i) = pick {
                let v = &view.variants[i];
                out.push(decision(
                    i,
                    v.ready + 1,
                    "wva: saturated, +1 on the cheapest",
                ));
            }
        } else if scale_down {
            let pick = view
                .variants
                .iter()
                .enumerate()
                .filter(|(_, v)| v.starting == 0 && v.ready > 1 && v.ready > v.min_replicas)
                .max_by(|(ia, a), (ib, b)| {
                    a.price_per_hour
                        .total_cmp(&b.price_per_hour)
                        .then(a.name.cmp(&b.name))
                        .then(ia.cmp(ib))
                })
                .map(|(i, _)| i);
            if let Some(i) = pick {
                let v = &view.variants[i];
                out.push(decision(
                    i,
                    v.ready - 1,
                    "wva: spare capacity, -1 on the most expensive",
                ));
            }
        }
        out
    }
}

fn pool_room(view: &ClusterView, i: usize) -> bool {
    let v = &view.variants[i];
    view.pools
        .iter()
        .find(|p| p.accelerator == v.accelerator)
        .is_some_and(|p| p.in_use + v.tp <= p.capacity)
}

/// Cheapest variant by price per replica (ties: alphabetically first) among those `ok` accepts.
fn cheapest(view: &ClusterView, ok: impl Fn(usize) -> bool) -> Option<usize> {
    view.variants
        .iter()
        .enumerate()
        .filter(|(i, _)| ok(*i))
        .min_by(|(_, a), (_, b)| {
            a.price_per_hour
                .total_cmp(&b.price_per_hour)
                .then(a.name.cmp(&b.name))
        })
        .map(|(i, _)| i)
}

/// llm-d's KEDA SLO-ratio recipe on one deployment.
#[derive(Debug, Clone)]
pub struct KedaSlo {
    pub primary: usize,
    pub slo: Slo,
    pub clamp: f64,
    pub smoothing_s: f64,
    pub theta_up: f64,
    pub theta_down: f64,
    signal: VecDeque<(f64, f64)>,
    up_recs: VecDeque<(f64, u32)>,
    down_recs: VecDeque<(f64, u32)>,
    last_up: Option<(f64, u32)>,
    last_down: Option<f64>,
}

impl KedaSlo {
    pub fn new(primary: usize, slo: Slo) -> Self {
        Self {
            primary,
            slo,
            clamp: 2.0,
            smoothing_s: 45.0,
            theta_up: 0.55,
            theta_down: 0.40,
            signal: VecDeque::new(),
            up_recs: VecDeque::new(),
            down_recs: VecDeque::new(),
            last_up: None,
            last_down: None,
        }
    }

    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        let mut out = Vec::new();
        others_to_min(view, self.primary, &mut out);
        let Some(v) = view.variants.get(self.primary) else {
            return out;
        };
        let now = view.now_s;
        let lo = v.min_replicas.max(1);
        let hi = v.max_replicas.max(lo);
        let s_raw = v
            .load
            .as_ref()
            .map(|l| {
                let t = l.ttft_p90_s.map_or(0.0, |x| x * 1e3 / self.slo.ttft_ms);
                let i = l.itl_p90_s.map_or(0.0, |x| x * 1e3 / self.slo.itl_ms);
                let s = t.max(i);
                if s.is_finite() { s } else { 0.0 }
            })
            .unwrap_or(0.0)
            .min(self.clamp);
        self.signal.push_back((now, s_raw));
        prune(&mut self.signal, now, self.smoothing_s);
        let s = self.signal.iter().map(|(_, x)| x).sum::<f64>() / self.signal.len().max(1) as f64;
        let n = v.target;
        let r = v.ready;
        let d = if n == 0 {
            lo
        } else if s > self.theta_up {
            let c = if r > 0 && r < n {
                r as f64 / n as f64
            } else {
                1.0
            };
            n + (n as f64 * (s * c / self.theta_up - 1.0)).ceil().max(0.0) as u32
        } else if s < self.theta_down {
            n - (n as f64 * (1.0 - s / self.theta_down)).floor().max(0.0) as u32
        } else {
            n
        };
        let d = d.clamp(lo, hi);
        // HPA behaviour: stabilisation (up: min over 30 s; down: max over 180 s), rate limits.
        self.up_recs.push_back((now, d));
        self.down_recs.push_back((now, d));
        prune(&mut self.up_recs, now, 30.0);
        prune(&mut self.down_recs, now, 180.0);
        let mut desired = n;
        if d > n {
            let up = self
                .up_recs
                .iter()
                .map(|(_, x)| *x)
                .min()
                .unwrap_or(d)
                .max(n);
            let base = match self.last_up {
                Some((t, base)) if now - t < 60.0 => base,
                _ => n,
            };
            let limit = base.saturating_add(4).max(base.saturating_mul(2));
            desired = up.min(limit).max(n);
            if desired > n && self.last_up.is_none_or(|(t, _)| now - t >= 60.0) {
                self.last_up = Some((now, n));
            }
        } else if d < n {
            let down = self
                .down_recs
                .iter()
                .map(|(_, x)| *x)
                .max()
                .unwrap_or(d)
                .min(n);
            if down < n && self.last_down.is_none_or(|t| now - t >= 120.0) {
                desired = n - 1;
                self.last_down = Some(now);
            }
        }
        let desired = desired.clamp(lo, hi);
        if desired != n {
            out.push(decision(
                self.primary,
                desired,
                &format!("keda-slo: s {s:.2}"),
            ));
        }
        out
    }
}

fn prune<T>(q: &mut VecDeque<(f64, T)>, now: f64, window: f64) {
    while let Some((t, _)) = q.front() {
        if now - *t > window {
            q.pop_front();
        } else {
            break;
        }
    }
}

/// NVIDIA Dynamo's SLA planner: one deployment (aggregated mode), or a prefill and a decode
/// deployment (disaggregated mode, [`DynamoPlanner::disaggregated`]).
#[derive(Debug, Clone)]
pub struct DynamoPlanner {
    /// The aggregated deployment, or the prefill deployment when `decode` is set.
    pub primary: usize,
    /// The decode deployment (disaggregated mode).
    pub decode: Option<usize>,
    pub slo: Slo,
    pub interval_s: f64,
    engine: EngineParams,
    /// The decode variant's engine (disaggregated mode; else `engine` serves both tables).
    decode_engine: Option<EngineParams>,
    last: Option<f64>,
}

impl DynamoPlanner {
    pub fn new(primary: usize, slo: Slo, engine: EngineParams) -> Self {
        Self {
            primary,
            decode: None,
            slo,
            interval_s: 180.0,
            engine,
            decode_engine: None,
            last: None,
        }
    }

    /// Disaggregated mode: `num_p` replicas of the prefill variant, `num_d` of the decode
    /// variant, each given with its engine model (the planner's throughput tables).
    pub fn disaggregated(
        prefill: (usize, EngineParams),
        decode: (usize, EngineParams),
        slo: Slo,
    ) -> Self {
        Self {
            decode: Some(decode.0),
            decode_engine: Some(decode.1),
            ..Self::new(prefill.0, slo, prefill.1)
        }
    }

    /// Prefill throughput per device at prompt length `isl`, tokens per second.
    pub fn prefill_thpt_per_gpu(&self, isl: f64) -> f64 {
        let chunk = self.engine.limits.max_num_batched_tokens.max(1) as u64;
        let isl = isl.max(1.0) as u64;
        let mut done = 0;
        let mut t = 0.0;
        while done < isl {
            let s = chunk.min(isl - done);
            let mut w = StepWork::default();
            w.add(s, done, true);
            t += self.engine.cost.step_time(&w);
            done += s;
        }
        let tp = self.engine_tp();
        if t > 0.0 { isl as f64 / t / tp } else { 0.0 }
    }

    /// Decode throughput per device at the largest batch whose ITL meets `itl_s` at context
    /// `ctx`, tokens per second.
    pub fn decode_thpt_per_gpu(&self, itl_s: f64, ctx: f64) -> f64 {
        let engine = self.decode_engine.as_ref().unwrap_or(&self.engine);
        let max_seqs = engine.limits.max_num_seqs.max(1) as f64;
        let by_kv = (engine.kv_capacity_tokens as f64 / ctx.max(1.0)).floor();
        let mut best = 0.0;
        let mut b = 1.0;
        while b <= max_seqs.min(by_kv.max(1.0)) {
            let step = engine.cost.decode_step_time(b, b * ctx, 0);
            if step <= itl_s {
                best = b / step;
            } else {
                break;
            }
            b += 1.0;
        }
        best / self.engine_tp()
    }

    fn engine_tp(&self) -> f64 {
        // Devices per replica are not in EngineParams; the planner's tables are per engine
        // and divided back by the same count, so 1 keeps the formula exact.
        1.0
    }

    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        let mut out = Vec::new();
        let scaled: Vec<usize> = std::iter::once(self.primary).chain(self.decode).collect();
        for (i, v) in view.variants.iter().enumerate() {
            if !scaled.contains(&i) && v.target != v.min_replicas {
                out.push(decision(i, v.min_replicas, "not the scaled deployment"));
            }
        }
        // Every scaled deployment keeps at least one endpoint.
        let mut below_min = false;
        for &i in &scaled {
            let Some(v) = view.variants.get(i) else {
                return out;
            };
            let lo = v.min_replicas.max(1);
            if v.target < lo {
                out.push(decision(i, lo, "dynamo: min_endpoint"));
                below_min = true;
            }
        }
        if below_min || self.last.is_some_and(|t| view.now_s - t < self.interval_s) {
            return out;
        }
        let Some(v) = view.variants.get(self.primary) else {
            return out;
        };
        let Some(l) = v.load.as_ref() else {
            return out;
        };
        self.last = Some(view.now_s);
        let rate = l.request_rate + l.waiting / self.interval_s;
        let isl = if l.mean_prompt_tokens > 0.0 {
            l.mean_prompt_tokens
        } else {
            3000.0
        };
        // Disaggregated, the prefill workers emit one token per request: the output length is
        // the decode workers' to report.
        let decode_load = self
            .decode
            .and_then(|d| view.variants.get(d))
            .and_then(|d| d.load.as_ref());
        let osl_seen = match self.decode {
            Some(_) => decode_load.map_or(0.0, |d| d.mean_output_tokens),
            None => l.mean_output_tokens,
        };
        let osl = if osl_seen > 0.0 { osl_seen } else { 150.0 };
        let p = self.prefill_thpt_per_gpu(isl);
        let d = self.decode_thpt_per_gpu(self.slo.itl_ms / 1e3, isl + osl / 2.0);
        let num_p = if p > 0.0 {
            (rate * isl / p).ceil()
        } else {
            f64::from(v.max_replicas)
        };
        let num_d = if d > 0.0 {
            (rate * osl / d).ceil()
        } else {
            f64::from(v.max_replicas)
        };
        let reason = format!("dynamo: num_p {num_p} num_d {num_d}");
        let targets: Vec<(usize, f64)> = match self.decode {
            Some(dec) => vec![(self.primary, num_p), (dec, num_d)],
            None => vec![(self.primary, num_p.max(num_d))],
        };
        for (i, want) in targets {
            let Some(v) = view.variants.get(i) else {
                continue;
            };
            let lo = v.min_replicas.max(1);
            let want = (want as u32).clamp(lo, v.max_replicas.max(lo));
            if want != v.target {
                out.push(decision(i, want, &reason));
            }
        }
        out
    }
}
