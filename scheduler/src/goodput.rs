//! goodput's SLO-aware picker: predicted TTFT/TPOT per candidate, headroom against the
//! request's SLO, prefix affinity and load folded in through the predictor's features, a
//! load-based fallback, shedding, and the prefill/decode split.
//!
//! Per pick:
//! 1. Entry candidates (ready decode-capable endpoints; stale ones only if none is ready).
//! 2. Every candidate gets llm-d's cheap prefix+load score (one pass, no predictions). A
//!    shortlist of `shortlist` candidates, half the best by that score and half the
//!    least-loaded, is what the predictor sees: a pick among 1000 endpoints stays within
//!    tens of microseconds, and an endpoint that is neither loaded lightly nor holding the
//!    prefix is never the one with the lowest predicted latency anyway.
//! 3. Each shortlisted endpoint's features (its load, its cached share of the prompt) go to
//!    its variant's predictor. Endpoints predicted within `comfort` of both targets (half of
//!    them by default) are comfortable: among them the best prefix+load score wins, so that
//!    load spreads over every endpoint that serves the request well, slower variants
//!    included, instead of piling onto the fastest (which leaves the replicas an autoscaler
//!    sized for the load idle, and the fast ones without headroom for the next burst).
//!    Without a comfortable endpoint, those whose predictions meet both targets form the
//!    feasible tier; the pick minimises `0.8·TTFT/SLO_ttft + 0.2·TPOT/SLO_tpot` (llm-d's
//!    latency-scorer weights; the configured reference objectives stand in when the request
//!    has none) within the feasible tier, else over all (least violation) — unless the
//!    request is sheddable, which is then shed (429).
//! 4. No predictions for any shortlisted endpoint: the best prefix+load score (outcome
//!    `fallback`).
//! 5. With ready prefill-only endpoints and at least `pd_min_uncached_tokens` prompt tokens
//!    uncached on the chosen endpoint, a prefill endpoint is chosen too: the lowest predicted
//!    TTFT among prefill endpoints (or the best prefix+load score without predictions).

use goodput_predictor::PodType;

use crate::endpoint::{EndpointView, Health};
use crate::latency::{LatencyModel, Predicted};
use crate::pick::{
    Decision, LoadScores, Outcome, PickRequest, Picker, PrefixLoadWeights, Route, entry_candidates,
    prefix_fraction,
};
use crate::prefix::PrefixIndex;

/// Default of [`GoodputConfig::comfort`]. On the simulator's heterogeneous fleets (see
/// docs/scheduler.md) half the objectives raised Mooncake's attainment by 0.7-2.0 points and
/// cut the cost goodput's autoscaler paid on the built-in scenario by a fifth.
pub const DEFAULT_COMFORT: f64 = 0.5;

/// Settings of [`GoodputPicker`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodputConfig {
    /// Candidates whose latencies are predicted per pick.
    pub shortlist: usize,
    pub ttft_weight: f64,
    pub tpot_weight: f64,
    /// Objectives used to normalise predictions when a request carries none, ms.
    pub reference_ttft_ms: f64,
    pub reference_tpot_ms: f64,
    /// Uncached prompt tokens from which a request is split onto a prefill endpoint.
    pub pd_min_uncached_tokens: u32,
    /// Weights of the fallback (and shortlist) score.
    pub fallback: PrefixLoadWeights,
    /// Share of the objectives within which an endpoint's predictions count as comfortable
    /// (the best prefix+load score among those wins); 0 turns the tier off, and the lowest
    /// predicted latency always wins.
    pub comfort: f64,
}

impl Default for GoodputConfig {
    fn default() -> Self {
        Self {
            shortlist: 16,
            ttft_weight: 0.8,
            tpot_weight: 0.2,
            reference_ttft_ms: 1000.0,
            reference_tpot_ms: 60.0,
            pd_min_uncached_tokens: 1024,
            fallback: PrefixLoadWeights::default(),
            comfort: DEFAULT_COMFORT,
        }
    }
}

/// The SLO-aware picker.
#[derive(Debug, Default)]
pub struct GoodputPicker {
    pub config: GoodputConfig,
    turn: usize,
    candidates: Vec<usize>,
    load: LoadScores,
    shortlist: Vec<usize>,
    /// The prefix+load score of each shortlisted endpoint, in shortlist order.
    shortlist_scores: Vec<f64>,
    by_queue: Vec<(u32, usize, f64)>,
}

#[derive(Debug, Clone, Copy)]
struct Scored {
    i: usize,
    cost: f64,
    feasible: bool,
    predicted: Predicted,
}

impl GoodputPicker {
    pub fn new(config: GoodputConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// Fills `self.shortlist` from `self.load.scores`: the best `⌈k/2⌉` by prefix+load score
    /// and the `⌊k/2⌋` least-loaded of the rest. One pass each with a small sorted buffer, so
    /// the cost is linear in the pool with a tiny constant (no sort, no selection over it).
    fn build_shortlist(&mut self, endpoints: &[EndpointView]) {
        let k = self.config.shortlist.max(1);
        self.shortlist.clear();
        self.shortlist_scores.clear();
        let scores = &self.load.scores;
        if scores.len() <= k {
            self.shortlist.extend(scores.iter().map(|s| s.1));
            self.shortlist_scores.extend(scores.iter().map(|s| s.0));
            return;
        }
        let half = k.div_ceil(2);
        // Best by score, kept sorted descending.
        let mut top: Vec<(f64, usize)> = Vec::with_capacity(half + 1);
        for &(score, i) in scores {
            if top.len() == half && top.last().is_some_and(|l| score <= l.0) {
                continue;
            }
            let at = top.partition_point(|t| t.0 >= score);
            top.insert(at, (score, i));
            top.truncate(half);
        }
        self.shortlist.extend(top.iter().map(|t| t.1));
        self.shortlist_scores.extend(top.iter().map(|t| t.0));
        // Least loaded among the others, kept sorted ascending by queue.
        let rest = k - half;
        self.by_queue.clear();
        for &(score, i) in scores {
            let q = endpoints[i].queue();
            if self.by_queue.len() == rest && self.by_queue.last().is_some_and(|l| q >= l.0) {
                continue;
            }
            if self.shortlist.contains(&i) {
                continue;
            }
            let at = self.by_queue.partition_point(|t| t.0 <= q);
            self.by_queue.insert(at, (q, i, score));
            self.by_queue.truncate(rest);
        }
        self.shortlist.extend(self.by_queue.iter().map(|q| q.1));
        self.shortlist_scores
            .extend(self.by_queue.iter().map(|q| q.2));
    }

    /// The pick's cost of a prediction, whether it meets the request's objectives, and
    /// whether it is comfortably within them (or within the reference ones when it has none).
    fn cost(&self, req: &PickRequest<'_>, p: &Predicted) -> (f64, bool, bool) {
        let ttft_ref = req.slo_ttft_ms.unwrap_or(self.config.reference_ttft_ms);
        let tpot_ref = req.slo_tpot_ms.unwrap_or(self.config.reference_tpot_ms);
        let tpot = p.tpot_ms.unwrap_or(0.0);
        let cost = self.config.ttft_weight * p.ttft_ms / ttft_ref
            + self.config.tpot_weight * tpot / tpot_ref;
        let feasible = req.slo_ttft_ms.is_none_or(|s| p.ttft_ms <= s)
            && req
                .slo_tpot_ms
                .is_none_or(|s| p.tpot_ms.is_none_or(|t| t <= s));
        let share = self.config.comfort.min(1.0);
        let comfortable = share > 0.0 && p.ttft_ms <= share * ttft_ref && tpot <= share * tpot_ref;
        (cost, feasible, comfortable)
    }

    /// Chooses a prefill endpoint among the ready prefill-only ones.
    fn pick_prefill(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        latency: &dyn LatencyModel,
    ) -> Option<usize> {
        self.candidates.clear();
        self.candidates.extend(
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.health == Health::Ready && e.role == PodType::Prefill)
                .map(|(i, _)| i),
        );
        if self.candidates.is_empty() {
            return None;
        }
        self.load.compute(
            req,
            endpoints,
            &self.candidates,
            prefix,
            self.config.fallback,
        );
        self.build_shortlist(endpoints);
        let mut best: Option<(f64, usize)> = None;
        for &i in &self.shortlist {
            let e = &endpoints[i];
            let m = self.load.matches[e.slot];
            let f = e.features(req.prompt_tokens, prefix_fraction(req, m));
            if let Some(p) = latency.predict(e.variant, &f)
                && best.is_none_or(|b| p.ttft_ms < b.0)
            {
                best = Some((p.ttft_ms, i));
            }
        }
        best.map(|b| b.1)
            .or_else(|| self.load.best(self.turn).map(|b| b.1))
    }
}

impl Picker for GoodputPicker {
    fn name(&self) -> &str {
        "goodput"
    }

    fn pick(
        &mut self,
        req: &PickRequest<'_>,
        endpoints: &[EndpointView],
        prefix: &PrefixIndex,
        latency: &dyn LatencyModel,
    ) -> Decision {
        entry_candidates(endpoints, &mut self.candidates);
        if self.candidates.is_empty() {
            return Decision::NoEndpoint;
        }
        self.turn = self.turn.wrapping_add(1);
        self.load.compute(
            req,
            endpoints,
            &self.candidates,
            prefix,
            self.config.fallback,
        );
        self.build_shortlist(endpoints);

        let n = self.shortlist.len();
        let start = self.turn % n.max(1);
        let mut best: Option<Scored> = None;
        let mut best_feasible: Option<Scored> = None;
        let mut best_comfortable: Option<(f64, Scored)> = None;
        for k in 0..n {
            // Rotating start: equal costs (an idle pool) spread instead of piling on one.
            let i = self.shortlist[(start + k) % n];
            let load_score = self.shortlist_scores[(start + k) % n];
            let e = &endpoints[i];
            let m = self.load.matches[e.slot];
            let f = e.features(req.prompt_tokens, prefix_fraction(req, m));
            let Some(p) = latency.predict(e.variant, &f) else {
                continue;
            };
            let (cost, feasible, comfortable) = self.cost(req, &p);
            let s = Scored {
                i,
                cost,
                feasible,
                predicted: p,
            };
            if best.is_none_or(|b| cost < b.cost) {
                best = Some(s);
            }
            if feasible && best_feasible.is_none_or(|b| cost < b.cost) {
                best_feasible = Some(s);
            }
            if comfortable && feasible && best_comfortable.is_none_or(|b| load_score > b.0) {
                best_comfortable = Some((load_score, s));
            }
        }
        if let Some((_, s)) = best_comfortable {
            best_feasible = Some(s);
        }

        let (i, outcome, predicted) = match (best_feasible, best) {
            (Some(s), _) => (s.i, Outcome::Scored, Some(s.predicted)),
            (None, Some(s)) => {
                let has_slo = req.slo_ttft_ms.is_some() || req.slo_tpot_ms.is_some();
                if req.sheddable && has_slo && !s.feasible {
                    return Decision::Shed;
                }
                (s.i, Outcome::Scored, Some(s.predicted))
            }
            (None, None) => match self.load.best(self.turn) {
                Some((_, i)) => (i, Outcome::Fallback, None),
                None => return Decision::NoEndpoint,
            },
        };
        let e = endpoints[i];
        let matched = self.load.matches[e.slot];
        let features = e.features(req.prompt_tokens, prefix_fraction(req, matched));
        let cached = u64::from(matched) * u64::from(req.block_tokens);
        let uncached = u64::from(req.prompt_tokens).saturating_sub(cached);
        let prefill = if e.role != PodType::Prefill
            && uncached >= u64::from(self.config.pd_min_uncached_tokens)
            && crate::pick::has_prefill_pool(endpoints)
        {
            self.pick_prefill(req, endpoints, prefix, latency)
        } else {
            None
        };
        Decision::Route(Route {
            endpoint: i,
            prefill,
            outcome,
            predicted,
            features,
            matched_blocks: matched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::NoPredictions;
    use goodput_predictor::Features;

    /// TTFT grows with the queue and shrinks with the cached share; variant 1 is 4x slower.
    struct Toy;
    impl LatencyModel for Toy {
        fn predict(&self, variant: usize, f: &Features) -> Option<Predicted> {
            let speed = if variant == 1 { 4.0 } else { 1.0 };
            let work = f.input_token_length as f64 * (1.0 - f.prefix_cache_score);
            Some(Predicted {
                ttft_ms: speed
                    * (10.0
                        + work / 10.0
                        + 50.0 * f64::from(f.num_request_waiting + f.num_request_running)),
                tpot_ms: Some(speed * (10.0 + f64::from(f.num_request_running))),
                learned: true,
            })
        }
    }

    fn ep(slot: usize, variant: usize, running: u32, waiting: u32) -> EndpointView {
        EndpointView {
            slot,
            variant,
            running,
            waiting,
            ..Default::default()
        }
    }

    fn req<'a>(hashes: &'a [u64]) -> PickRequest<'a> {
        PickRequest {
            prompt_tokens: 4000,
            output_tokens: 100,
            hashes,
            block_tokens: 16,
            ..Default::default()
        }
    }

    fn route(d: Decision) -> Route {
        match d {
            Decision::Route(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn picks_lowest_predicted_latency_not_fewest_requests() {
        let idx = PrefixIndex::default();
        // Endpoint 0: slow variant, idle. Endpoint 1: fast variant, one running.
        let eps = [ep(0, 1, 0, 0), ep(1, 0, 1, 0)];
        let mut g = GoodputPicker::default();
        let r = route(g.pick(&req(&[]), &eps, &idx, &Toy));
        assert_eq!((r.endpoint, r.outcome), (1, Outcome::Scored));
        assert!(r.predicted.is_some());
    }

    #[test]
    fn spreads_over_comfortable_endpoints_instead_of_the_fastest() {
        let idx = PrefixIndex::default();
        // Endpoint 0: slow variant, idle (TTFT 200 ms, TPOT 40 ms predicted). Endpoint 1: fast
        // variant, one running and one queued (150 ms, 11 ms). Both well within 1000 / 100 ms.
        let eps = [ep(0, 1, 0, 0), ep(1, 0, 1, 1)];
        let mut r = req(&[]);
        r.prompt_tokens = 400;
        r.slo_ttft_ms = Some(1000.0);
        r.slo_tpot_ms = Some(100.0);
        let mut g = GoodputPicker::default();
        assert_eq!(
            route(g.pick(&r, &eps, &idx, &Toy)).endpoint,
            0,
            "the idle endpoint serves it comfortably"
        );
        // Without the comfortable tier, the lowest predicted latency wins.
        let mut g = GoodputPicker::new(GoodputConfig {
            comfort: 0.0,
            ..Default::default()
        });
        assert_eq!(route(g.pick(&r, &eps, &idx, &Toy)).endpoint, 1);
        // A tighter objective leaves the slow endpoint outside the comfortable share (its TPOT
        // of 40 ms against half of 60): the fast one wins again.
        r.slo_tpot_ms = Some(60.0);
        let mut g = GoodputPicker::default();
        assert_eq!(route(g.pick(&r, &eps, &idx, &Toy)).endpoint, 1);
    }

    #[test]
    fn prefix_affinity_through_predictions() {
        let mut idx = PrefixIndex::default();
        let hashes: Vec<u64> = (1..=250).collect();
        idx.record(0, &hashes);
        let eps = [ep(0, 0, 2, 0), ep(1, 0, 0, 0)];
        let mut g = GoodputPicker::default();
        let r = route(g.pick(&req(&hashes), &eps, &idx, &Toy));
        assert_eq!(r.endpoint, 0, "cached prompt beats a shorter queue");
        assert_eq!(r.matched_blocks, 250);
        assert_eq!(r.features.prefix_cache_score, 1.0);
    }

    #[test]
    fn sheds_only_sheddable_requests_that_no_endpoint_can_serve_in_time() {
        let idx = PrefixIndex::default();
        let eps = [ep(0, 0, 50, 50), ep(1, 0, 40, 40)];
        let mut g = GoodputPicker::default();
        let mut r = req(&[]);
        r.slo_ttft_ms = Some(200.0);
        r.sheddable = true;
        assert_eq!(g.pick(&r, &eps, &idx, &Toy), Decision::Shed);
        r.sheddable = false;
        let d = route(g.pick(&r, &eps, &idx, &Toy));
        assert_eq!(d.endpoint, 1, "least violation");
        // Feasible endpoint present: routed there even when sheddable.
        r.sheddable = true;
        let eps = [ep(0, 0, 50, 50), ep(1, 0, 0, 0)];
        r.slo_ttft_ms = Some(1000.0);
        assert_eq!(route(g.pick(&r, &eps, &idx, &Toy)).endpoint, 1);
    }

    #[test]
    fn falls_back_to_load_without_predictions() {
        let idx = PrefixIndex::default();
        let eps = [ep(0, 0, 5, 9), ep(1, 0, 5, 0)];
        let mut g = GoodputPicker::default();
        let r = route(g.pick(&req(&[]), &eps, &idx, &NoPredictions));
        assert_eq!((r.endpoint, r.outcome), (1, Outcome::Fallback));
        assert!(r.predicted.is_none());
        assert_eq!(g.pick(&req(&[]), &[], &idx, &Toy), Decision::NoEndpoint);
    }

    #[test]
    fn splits_long_uncached_prompts_onto_a_prefill_endpoint() {
        let mut idx = PrefixIndex::default();
        let mut eps = [ep(0, 0, 0, 0), ep(1, 0, 3, 0), ep(2, 0, 0, 0)];
        eps[0].role = PodType::Decode;
        eps[1].role = PodType::Prefill;
        eps[2].role = PodType::Prefill;
        let mut g = GoodputPicker::default();
        let r = route(g.pick(&req(&[]), &eps, &idx, &Toy));
        assert_eq!((r.endpoint, r.prefill), (0, Some(2)));
        // Short uncached part: no split.
        let hashes: Vec<u64> = (1..=250).collect();
        idx.record(0, &hashes);
        let r = route(g.pick(&req(&hashes), &eps, &idx, &Toy));
        assert_eq!((r.endpoint, r.prefill), (0, None));
    }

    #[test]
    fn shortlist_keeps_large_pools_fast_and_still_finds_the_idle_endpoint() {
        let idx = PrefixIndex::default();
        let mut eps: Vec<EndpointView> = (0..1000).map(|i| ep(i, 0, 8, 4)).collect();
        eps[737].running = 0;
        eps[737].waiting = 0;
        let mut g = GoodputPicker::default();
        let r = route(g.pick(&req(&[]), &eps, &idx, &Toy));
        assert_eq!(r.endpoint, 737);
        assert!(g.shortlist.len() <= g.config.shortlist);
    }
}
