//! The picker interface, its decision, and the baseline pickers goodput is compared with:
//! round-robin, least-requests, and llm-d's default prefix+load scorer.
//!
//! Data flow: a caller builds a [`PickRequest`] (token counts, SLOs, prefix block hashes) and
//! a slice of [`EndpointView`]s, calls [`Picker::pick`] with the [`PrefixIndex`] and a
//! [`LatencyModel`], and gets a [`Decision`]; it then records the prompt's blocks on the
//! chosen endpoint(s) in the index. Pickers are pure apart from their own counters and
//! scratch buffers.

use goodput_predictor::{Features, PodType};

use crate::endpoint::{EndpointView, Health};
use crate::latency::{LatencyModel, Predicted};
use crate::prefix::PrefixIndex;

/// A request as pickers see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    pub prompt_tokens: u32,
    /// Output tokens expected (max_tokens, or a planning default).
    pub output_tokens: u32,
    pub slo_ttft_ms: Option<f64>,
    pub slo_tpot_ms: Option<f64>,
    pub sheddable: bool,
    /// Prefix block hashes of the prompt.
    pub hashes: &'a [u64],
    /// Tokens per hashed block.
    pub block_tokens: u32,
}

/// How a route was decided (the `outcome` label of `picks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From predicted latencies.
    Scored,
    /// From load and prefix only (no predictions, or a baseline picker).
    Fallback,
}

/// A chosen endpoint with what was known at the pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Index into the endpoint slice.
    pub endpoint: usize,
    /// A prefill endpoint (index into the slice) when the request is split.
    pub prefill: Option<usize>,
    pub outcome: Outcome,
    pub predicted: Option<Predicted>,
    /// The predictor's row at dispatch (training data once the latencies are measured).
    pub features: Features,
    /// Leading prompt blocks believed cached on the chosen endpoint.
    pub matched_blocks: u32,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Route(Route),
    /// Sheddable and no endpoint can meet its SLO: answer 429.
    Shed,
    /// No endpoint can take it: answer 503.
    NoEndpoint,
}

/// Picks the endpoint for each request.
pub trait Picker: Send {
    /// Name for reports.
    fn name(&self) -> &str;
    fn pick(
        &mut self,
        request: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        latency: &dyn LatencyModel,
    ) -> Decision;
}

/// Indices of the endpoints a request may enter: ready ones that serve decode; stale ones only
/// when none is ready; never down ones.
pub fn entry_candidates(endpoints: &[EndpointView], out: &mut Vec<usize>) {
    out.clear();
    for want in [Health::Ready, Health::Stale] {
        out.extend(
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.health == want && e.serves_decode())
                .map(|(i, _)| i),
        );
        if !out.is_empty() {
            return;
        }
    }
}

fn plain_route(
    endpoints: &[EndpointView],
    i: usize,
    req: &PickRequest<'_>,
    matched: u32,
) -> Decision {
    let prefix = prefix_fraction(req, matched);
    Decision::Route(Route {
        endpoint: i,
        prefill: None,
        outcome: Outcome::Fallback,
        predicted: None,
        features: endpoints[i].features(req.prompt_tokens, prefix),
        matched_blocks: matched,
    })
}

/// Fraction of the prompt covered by `matched` leading blocks.
#[inline]
pub fn prefix_fraction(req: &PickRequest<'_>, matched: u32) -> f64 {
    if req.prompt_tokens == 0 {
        return 0.0;
    }
    (f64::from(matched) * f64::from(req.block_tokens.max(1)) / f64::from(req.prompt_tokens))
        .min(1.0)
}

/// Cycles through the entry candidates.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
    scratch: Vec<usize>,
}

impl Picker for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }
    fn pick(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        _: &dyn LatencyModel,
    ) -> Decision {
        entry_candidates(endpoints, &mut self.scratch);
        if self.scratch.is_empty() {
            return Decision::NoEndpoint;
        }
        let i = self.scratch[self.next % self.scratch.len()];
        self.next = self.next.wrapping_add(1);
        let m = prefix.matched_blocks(endpoints[i].slot, req.hashes) as u32;
        plain_route(endpoints, i, req, m)
    }
}

/// Fewest requests held (running plus waiting, counting the ones dispatched since the last
/// scrape), then least KV in use; ties rotate.
#[derive(Debug, Default)]
pub struct LeastRequests {
    turn: usize,
    scratch: Vec<usize>,
}

impl Picker for LeastRequests {
    fn name(&self) -> &str {
        "least-requests"
    }
    fn pick(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        _: &dyn LatencyModel,
    ) -> Decision {
        entry_candidates(endpoints, &mut self.scratch);
        let n = self.scratch.len();
        if n == 0 {
            return Decision::NoEndpoint;
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % n;
        let mut best = self.scratch[start];
        for k in 1..n {
            let i = self.scratch[(start + k) % n];
            let (a, b) = (&endpoints[i], &endpoints[best]);
            if (a.queue(), a.kv_usage) < (b.queue(), b.kv_usage) {
                best = i;
            }
        }
        let m = prefix.matched_blocks(endpoints[best].slot, req.hashes) as u32;
        plain_route(endpoints, best, req, m)
    }
}

/// Weights of llm-d's default scheduling profile (GIE v1.5.0 `loadDefaultConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixLoadWeights {
    pub queue: f64,
    pub kv: f64,
    pub prefix: f64,
}

impl Default for PrefixLoadWeights {
    fn default() -> Self {
        Self {
            queue: 2.0,
            kv: 2.0,
            prefix: 3.0,
        }
    }
}

/// Reusable buffers of the prefix+load scorer.
#[derive(Debug, Default)]
pub struct LoadScores {
    pub matches: Vec<u32>,
    /// (score, endpoint index), for the candidates only.
    pub scores: Vec<(f64, usize)>,
}

impl LoadScores {
    /// Scores every candidate as llm-d's `queue-scorer` (min-max over `waiting`),
    /// `kv-cache-utilization-scorer` (`1 − kv`) and `prefix-cache-scorer` (matched/total
    /// blocks) weighted by `w`. Fills `self.matches` (by slot) and `self.scores`.
    pub fn compute(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        candidates: &[usize],
        prefix: &PrefixIndex,
        w: PrefixLoadWeights,
    ) {
        let slots = endpoints.iter().map(|e| e.slot + 1).max().unwrap_or(0);
        self.matches.resize(slots, 0);
        prefix.matches(req.hashes, &mut self.matches);
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        for &i in candidates {
            let q = endpoints[i].waiting_now();
            lo = lo.min(q);
            hi = hi.max(q);
        }
        let total = req.hashes.len().max(1) as f64;
        self.scores.clear();
        for &i in candidates {
            let e = &endpoints[i];
            let q = if hi == lo {
                1.0
            } else {
                f64::from(hi - e.waiting_now()) / f64::from(hi - lo)
            };
            let p = if req.hashes.is_empty() {
                0.0
            } else {
                f64::from(self.matches[e.slot]) / total
            };
            let s = w.queue * q + w.kv * (1.0 - e.kv_usage.clamp(0.0, 1.0)) + w.prefix * p;
            self.scores.push((s, i));
        }
    }

    /// The best-scoring candidate, ties broken by rotating from `turn`.
    pub fn best(&self, turn: usize) -> Option<(f64, usize)> {
        let n = self.scores.len();
        if n == 0 {
            return None;
        }
        let start = turn % n;
        let mut best = self.scores[start];
        for k in 1..n {
            let s = self.scores[(start + k) % n];
            if s.0 > best.0 {
                best = s;
            }
        }
        Some(best)
    }
}

/// llm-d's default scheduler: queue 2, KV 2, prefix 3, max-score picker.
#[derive(Debug, Default)]
pub struct PrefixLoad {
    pub weights: PrefixLoadWeights,
    turn: usize,
    candidates: Vec<usize>,
    scores: LoadScores,
}

impl Picker for PrefixLoad {
    fn name(&self) -> &str {
        "prefix-load"
    }
    fn pick(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        _: &dyn LatencyModel,
    ) -> Decision {
        entry_candidates(endpoints, &mut self.candidates);
        self.scores
            .compute(req, endpoints, &self.candidates, prefix, self.weights);
        self.turn = self.turn.wrapping_add(1);
        match self.scores.best(self.turn) {
            Some((_, i)) => {
                let m = self.scores.matches[endpoints[i].slot];
                plain_route(endpoints, i, req, m)
            }
            None => Decision::NoEndpoint,
        }
    }
}

/// Whether a pool has prefill-only endpoints that are ready.
pub fn has_prefill_pool(endpoints: &[EndpointView]) -> bool {
    endpoints
        .iter()
        .any(|e| e.health == Health::Ready && e.role == PodType::Prefill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::NoPredictions;

    pub(crate) fn ep(slot: usize, running: u32, waiting: u32, kv: f64) -> EndpointView {
        EndpointView {
            slot,
            running,
            waiting,
            kv_usage: kv,
            ..Default::default()
        }
    }

    #[test]
    fn baselines_pick_as_documented() {
        let idx = PrefixIndex::default();
        let req = PickRequest {
            prompt_tokens: 10,
            block_tokens: 16,
            ..Default::default()
        };
        let mut eps = vec![ep(0, 3, 1, 0.1), ep(1, 2, 0, 0.9), ep(2, 2, 0, 0.5)];
        let route = |d: Decision| match d {
            Decision::Route(r) => r.endpoint,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            route(LeastRequests::default().pick(&req, &eps, &idx, &NoPredictions)),
            2
        );
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..4)
            .map(|_| route(rr.pick(&req, &eps, &idx, &NoPredictions)))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        eps[0].health = Health::Down;
        eps[1].health = Health::Stale;
        assert_eq!(
            route(rr.pick(&req, &eps, &idx, &NoPredictions)),
            2,
            "only ready ones"
        );
        eps[2].health = Health::Down;
        assert_eq!(
            route(rr.pick(&req, &eps, &idx, &NoPredictions)),
            1,
            "stale when nothing is ready"
        );
        eps[1].health = Health::Down;
        assert_eq!(
            rr.pick(&req, &eps, &idx, &NoPredictions),
            Decision::NoEndpoint
        );
    }

    #[test]
    fn prefix_load_prefers_cached_prefix_unless_loaded() {
        let mut idx = PrefixIndex::default();
        let hashes = [1u64, 2, 3, 4];
        idx.record(1, &hashes);
        let req = PickRequest {
            prompt_tokens: 64,
            block_tokens: 16,
            hashes: &hashes,
            ..Default::default()
        };
        let eps = vec![ep(0, 1, 0, 0.2), ep(1, 1, 0, 0.2)];
        let mut p = PrefixLoad::default();
        let Decision::Route(r) = p.pick(&req, &eps, &idx, &NoPredictions) else {
            panic!()
        };
        assert_eq!((r.endpoint, r.matched_blocks), (1, 4));
        assert_eq!(r.features.prefix_cache_score, 1.0);
        // A long queue and a full cache outweigh the prefix (2 + 2 > 3).
        let eps = vec![ep(0, 1, 0, 0.0), ep(1, 1, 20, 1.0)];
        let Decision::Route(r) = p.pick(&req, &eps, &idx, &NoPredictions) else {
            panic!()
        };
        assert_eq!(r.endpoint, 0);
    }
}
