//! goodput's policy: estimate, forecast, optimise, stabilise.
//!
//! Each decision takes one `ClusterView` snapshot: the per-variant loads are folded into one
//! estimate ([`crate::forecast::estimate`]), the forecaster predicts the rate one start-up time
//! plus one interval ahead and adds its burst margin, the [`CapacityModel`] gives each variant's
//! sustainable rate per replica for the observed load shape, and the optimiser picks the cheapest
//! mix for the provisioned rate among variants of comparable speed per replica, charging the
//! replicas a new mix would start for their start-up time and those it would drop for the time
//! the stabilisation window keeps them past it (behind a count-balancing router,
//! [`Routing::CountBalanced`], a mix runs at the concurrency of its most limited variant, which
//! the capacity model also reports); when the SLO is known, a variant's
//! observed p95 latencies above it derate that variant's probed capacity (down to half, and not
//! while its replicas are still starting, when the latency only says the fleet is short),
//! latencies well below it restore it while the replicas carry a real share of their rating
//! (replicas idling between bursts say nothing), and latencies under half the SLO for a whole
//! stabilisation window at a real share of the rated load raise it (up to 1.1x; a raised
//! rating that misses drops back to the probe and is not raised that far again; a variant
//! that has not served yet inherits the lowest derating of its role's variants that have);
//! a variant that still misses the SLO when derated to the floor cannot hold it for this traffic
//! at any load the derating reaches (on azure-code, slower accelerators whose ITL the long
//! prompts' prefill chunks break), so it is set aside for a while (twice as long each further
//! time) and the optimiser plans without it. Stability rules shape the plan into targets:
//! scale-up is immediate and jumps straight to the plan (replicas still starting are counted,
//! since the view's target includes them, so they are not asked for twice), except a swap to a
//! cheaper mix while the fleet targeted carries the need, which starts once the plan has asked
//! for it over a whole stabilisation window, as its old replicas wait that long (and those go
//! only while the ready replicas left carry the need); scale-down goes to
//! the largest plan for the need plus the hysteresis band seen over the stabilisation window,
//! only when the ready fleet's capacity exceeds the need by more than that band, never on
//! missing or stale data, and by at most a share of the fleet's capacity per window (so that
//! a lull of a few minutes does not empty it). Going down to a fleet that still has the band's
//! headroom is what keeps noise from scaling it straight back up. Where a model is offered both
//! unified and prefill/decode variants, the plan changes path (and a mix its variants) only
//! when the saving pays for the new fleet's start-up and for the old replicas the window keeps
//! beside it, and while it leaves the P/D path a decode replica stays as long as
//! prefill replicas hand requests on. Replicas are never below min, above max or beyond pool
//! capacity.

use std::collections::VecDeque;

use goodput_sim::policy::{ClusterView, ScaleDecision};

use crate::capacity::{CapacityModel, LoadShape};
use crate::forecast::{Forecast, ForecastConfig, Forecaster, estimate_by_role};
use crate::optimizer::{
    Candidate, Speeds, SwitchCost, carried_rate, optimise, optimise_comparable, plan_by_role,
    plan_by_role_switching, stage_rate,
};
use goodput_core::Role;

/// Tuning of goodput's policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodputConfig {
    pub forecast: ForecastConfig,
    /// Seconds over which scale-down takes the largest recent plan.
    pub scale_down_window_s: f64,
    /// Scale down only when current capacity exceeds the need by more than this share.
    pub hysteresis: f64,
    /// Largest share of the fleet's capacity (the replicas' rated requests per second) that
    /// may go within one scale-down window (at least one replica's worth; 1: no limit), as
    /// HPA's `Percent` scale-down policy with the window as its period beside a one-pod policy.
    /// Traffic that pauses for a few minutes inside a busy period and then returns (a lull in
    /// bursty code traffic) does not take the fleet with it; a daily decline is far slower.
    pub max_scale_down_share: f64,
    /// Data older than this (seconds) is stale: no scale-down.
    pub stale_after_s: f64,
    /// Decision interval (added to the start-up time for the forecast horizon).
    pub interval_s: f64,
    /// Replicas kept across all variants while there is no demand. 0 allows scale to zero:
    /// after `scale_down_window_s` without a request, and only where the view carries a
    /// gateway signal to wake on (`ClusterView::gateway_waiting`).
    pub min_total_replicas: u32,
    /// Share of a replica's probed SLO capacity the plan may use (headroom for length tails).
    pub utilisation: f64,
    /// The SLO, when known: observed p95 TTFT/ITL above it derate the probed capacity (a
    /// correction factor, as Dynamo's planner applies), well below it under load restore it.
    pub slo: Option<goodput_core::Slo>,
    /// Lowest correction factor.
    pub min_correction: f64,
    /// Highest correction factor: p95 latencies under half the SLO for a whole stabilisation
    /// window, with the replicas carrying at least `raise_min_utilisation` of their rating,
    /// raise the probed capacity up to this multiple (1: never above the probe).
    pub max_correction: f64,
    /// Share of its rated capacity a variant's replicas must carry for low latency to count
    /// as evidence, both to restore a derated rating and to raise one above the probe (at
    /// light load every replica looks fast).
    pub raise_min_utilisation: f64,
    /// Consecutive decisions a variant may miss the SLO while derated to `min_correction`
    /// before it is set aside (0: never).
    pub set_aside_after: u32,
    /// How long a variant stays set aside the first time, seconds; then it is tried again at
    /// `min_correction`. Each further time the same variant is set aside, the time doubles, up
    /// to `MAX_SET_ASIDE_DOUBLINGS` doublings, so a variant that keeps missing is not retried
    /// (and its replicas started and drained) every half hour.
    pub set_aside_s: f64,
    /// Shape assumed before any request was observed.
    pub default_shape: LoadShape,
    /// Slowest variant a plan may mix in, as a share of the fastest planned variant's
    /// sustainable rate per replica (see [`optimise_comparable`]); 0 mixes freely.
    pub min_speed_ratio: f64,
    /// How the router in front of the replicas spreads requests, which decides what a mix of
    /// variants carries.
    pub routing: Routing,
}

/// How the router in front of a model's replicas spreads requests over variants of different
/// speeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// By predicted latency or by load relative to each replica's capacity (goodput's picker,
    /// llm-d's default profile, whose KV-utilisation and prefix scorers outweigh its
    /// waiting-queue scorer): each variant of a mix carries its own rate.
    #[default]
    LatencyAware,
    /// By counts, blind to speed (least outstanding requests, round-robin): every replica holds
    /// about as many requests, so the variant that reaches its SLO at the fewest sets the
    /// concurrency all run at, and faster ones carry only that share of their rate
    /// ([`Speeds::concurrency`]).
    CountBalanced,
}

impl Routing {
    /// The routing of a router by its name: the simulator's least-loaded, the scheduler's
    /// least-requests and round-robin balance counts; the others weigh latency or capacity.
    pub fn of_router(name: &str) -> Self {
        match name {
            "least-loaded" | "least-requests" | "round-robin" => Routing::CountBalanced,
            _ => Routing::LatencyAware,
        }
    }
}

impl Default for GoodputConfig {
    fn default() -> Self {
        Self {
            forecast: ForecastConfig::default(),
            scale_down_window_s: 300.0,
            hysteresis: 0.15,
            max_scale_down_share: 0.4,
            stale_after_s: 120.0,
            interval_s: 30.0,
            min_total_replicas: 1,
            utilisation: 1.0,
            slo: None,
            min_correction: 0.5,
            max_correction: 1.1,
            raise_min_utilisation: 0.6,
            set_aside_after: 4,
            set_aside_s: 1800.0,
            default_shape: LoadShape {
                mean_input_tokens: 1000.0,
                mean_output_tokens: 200.0,
                prefix_hit_rate: 0.0,
            },
            min_speed_ratio: 0.1,
            routing: Routing::default(),
        }
    }
}

/// goodput's autoscaling policy over one model's variants.
pub struct GoodputPolicy<C: CapacityModel> {
    cfg: GoodputConfig,
    capacity: C,
    forecaster: Forecaster,
    /// Recent plans for the need plus the hysteresis band (time, replicas per variant), for
    /// the scale-down window.
    history: VecDeque<(f64, Vec<u32>)>,
    last_shape: Option<LoadShape>,
    last_forecast: Option<Forecast>,
    first_seen: Option<f64>,
    /// Per-variant multiplier on probed capacity learned from observed latency, in
    /// [min_correction, max_correction].
    correction: Vec<f64>,
    /// The targets of the decisions within the last scale-down window (time, replicas per
    /// variant), for [`GoodputConfig::max_scale_down_share`].
    recent_targets: VecDeque<(f64, Vec<u32>)>,
    /// Per variant: how far observed headroom may raise the correction (lowered below
    /// `max_correction` when a raised rating missed the SLO).
    raise_ceiling: Vec<f64>,
    /// Per variant: since when its p95 latencies have stayed under half the SLO.
    calm_since: Vec<Option<f64>>,
    /// Per variant: consecutive decisions missing the SLO at the correction floor.
    strikes: Vec<u32>,
    /// Per variant: set aside until this time (seconds of the view's clock).
    set_aside_until: Vec<Option<f64>>,
    /// Per variant: how many times it was set aside (for the doubling).
    set_aside_count: Vec<u32>,
    /// Whether each variant has served load yet (its own latency has been seen).
    observed: Vec<bool>,
    /// When a request was last seen (served, running, or waiting at the gateway).
    last_demand_s: Option<f64>,
    /// Whether the last plan found the pools too small for the forecast (None before the
    /// first plan).
    capacity_limited: Option<bool>,
}

/// Most doublings of `GoodputConfig::set_aside_s` for a variant set aside again and again.
pub const MAX_SET_ASIDE_DOUBLINGS: u32 = 3;

fn fc_zero() -> Forecast {
    Forecast {
        rate: 0.0,
        margin: 0.0,
        provision_rate: 0.0,
    }
}

impl<C: CapacityModel> GoodputPolicy<C> {
    pub fn new(cfg: GoodputConfig, capacity: C) -> Self {
        Self {
            forecaster: Forecaster::new(cfg.forecast),
            cfg,
            capacity,
            history: VecDeque::new(),
            last_shape: None,
            last_forecast: None,
            first_seen: None,
            correction: Vec::new(),
            recent_targets: VecDeque::new(),
            raise_ceiling: Vec::new(),
            calm_since: Vec::new(),
            strikes: Vec::new(),
            set_aside_until: Vec::new(),
            set_aside_count: Vec::new(),
            observed: Vec::new(),
            last_demand_s: None,
            capacity_limited: None,
        }
    }

    /// The forecaster (for its error statistics).
    pub fn forecaster(&self) -> &Forecaster {
        &self.forecaster
    }

    /// The optimiser's candidates, from each variant's probed rate per replica (`probed`).
    ///
    /// A variant that has not served yet has no latency of its own to correct its probe, so it
    /// inherits the lowest derating among the variants of its role that have (and are not set
    /// aside, whose misses are their own): the engine model was found that optimistic on
    /// hardware that served, and until this variant shows otherwise it is assumed as optimistic
    /// there. Otherwise a variant that misses would be replaced wholesale by one whose rating
    /// has no evidence yet (with count-balanced mixes, a whole fleet), and that one by the
    /// next. Raised ratings do not carry over.
    fn candidates(&self, view: &ClusterView, probed: &[f64]) -> Vec<Candidate> {
        // Per role: a prefill replica's model error says little about a decode replica's.
        let inherited = |role: Role| {
            (0..self.correction.len())
                .filter(|&j| {
                    self.observed.get(j).copied().unwrap_or(false)
                        && view.variants.get(j).is_some_and(|v| v.role == role)
                        && !self.is_set_aside(j, view.now_s)
                })
                .map(|j| self.correction[j])
                .fold(1.0f64, f64::min)
        };
        view.variants
            .iter()
            .enumerate()
            .map(|(i, v)| Candidate {
                price_per_hour: v.price_per_hour,
                devices: v.tp.max(1),
                pool: view
                    .pools
                    .iter()
                    .position(|p| p.accelerator == v.accelerator)
                    .unwrap_or(usize::MAX),
                min_replicas: v.min_replicas,
                max_replicas: v.max_replicas,
                rate_per_replica: if self.is_set_aside(i, view.now_s) {
                    0.0
                } else {
                    probed.get(i).copied().unwrap_or(0.0)
                        * self.cfg.utilisation
                        * self.correction.get(i).copied().unwrap_or(1.0)
                        * if self.observed.get(i).copied().unwrap_or(false) {
                            1.0
                        } else {
                            inherited(v.role)
                        }
                },
            })
            .collect()
    }

    /// Per variant, the multiplier the observed latencies put on its probed capacity (see
    /// [`GoodputConfig::min_correction`] and [`GoodputConfig::max_correction`]); empty before
    /// the first decision.
    pub fn corrections(&self) -> &[f64] {
        &self.correction
    }

    /// Whether the last plan found the pools too small to carry the forecast, whether or not
    /// it changed any replica count (None before the first plan).
    pub fn capacity_limited(&self) -> Option<bool> {
        self.capacity_limited
    }

    /// Holds back a scale-down that would take more than
    /// [`GoodputConfig::max_scale_down_share`] of the fleet's capacity within one window: per
    /// role (unified, prefill, decode: the stages of a disaggregated pair are limited each on
    /// its own, since a replica of one stage adds nothing the other does not match), the rated
    /// capacity of `targets` (at today's ratings) stays at or above that share below the most
    /// any target of the window (or `current`) carried, and may always lose one replica's
    /// worth. Capacity rather than replicas, so that a variant a new mix replaces drains as fast
    /// as the replacement comes, while a lull cannot empty the fleet. Replicas come back to the
    /// variants being scaled down, the cheapest capacity first, never above a variant's
    /// maximum; set-aside variants carry nothing and drain freely. Without a window (0 s) there
    /// is nothing to spread a scale-down over: no limit.
    fn limit_scale_down(
        &self,
        cands: &[Candidate],
        roles: &[Role],
        current: &[u32],
        targets: &mut [u32],
        now: f64,
    ) {
        let share = self.cfg.max_scale_down_share;
        if share.is_nan() || share >= 1.0 || self.cfg.scale_down_window_s <= 0.0 {
            return;
        }
        let role_of = |i: usize| roles.get(i).copied().unwrap_or(Role::Unified);
        for role in [Role::Unified, Role::Prefill, Role::Decode] {
            let stage = |r: &[u32]| stage_rate(cands, roles, r, role);
            let shrinking = |targets: &[u32]| -> Vec<usize> {
                (0..targets.len())
                    .filter(|&i| {
                        role_of(i) == role
                            && !self.is_set_aside(i, now)
                            && cands.get(i).is_some_and(|c| {
                                c.rate_per_replica > 0.0
                                    && targets[i]
                                        < current.get(i).copied().unwrap_or(0).min(c.max_replicas)
                            })
                    })
                    .collect()
            };
            let reference = self
                .recent_targets
                .iter()
                .map(|(_, r)| stage(r))
                .fold(stage(current), f64::max);
            let one_replica = shrinking(targets)
                .iter()
                .map(|&i| cands[i].rate_per_replica)
                .fold(0.0, f64::max);
            let floor = ((1.0 - share.max(0.0)) * reference).min(reference - one_replica);
            while stage(targets) < floor - 1e-9 {
                let Some(i) = shrinking(targets).into_iter().min_by(|&a, &b| {
                    let per_rate = |c: &Candidate| c.price_per_hour / c.rate_per_replica;
                    per_rate(&cands[a]).total_cmp(&per_rate(&cands[b]))
                }) else {
                    break;
                };
                targets[i] += 1;
            }
        }
    }

    /// Whether variant `i` is set aside at `now`.
    fn is_set_aside(&self, i: usize, now: f64) -> bool {
        self.set_aside_until
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|until| now < until)
    }

    /// The variants set aside at `now` (for reasons and status).
    pub fn set_aside(&self, now: f64) -> Vec<usize> {
        (0..self.set_aside_until.len())
            .filter(|&i| self.is_set_aside(i, now))
            .collect()
    }

    /// Replica targets for this snapshot (only the variants that change).
    pub fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        let loads: Vec<_> = view
            .variants
            .iter()
            .map(|v| (v.load.as_ref(), v.ready, v.role))
            .collect();
        let mut est = estimate_by_role(&loads, self.cfg.stale_after_s);
        // Requests running but none finished yet in the window: the rate is not known yet.
        let running: f64 = view
            .variants
            .iter()
            .filter_map(|v| v.load.as_ref())
            .map(|l| l.running)
            .sum();
        if est.rate <= 0.0 && running > 0.0 {
            est.fresh = false;
        }
        if self.first_seen.is_none() {
            self.first_seen = Some(view.now_s);
        }
        // Learn the shape only from enough traffic (about 30 requests a minute): a handful of
        // requests says little about the lengths.
        if est.shape.mean_output_tokens <= 0.0 {
            // No stage that emits the answers has reported yet (decode replicas starting).
            est.shape.mean_output_tokens = self
                .last_shape
                .unwrap_or(self.cfg.default_shape)
                .mean_output_tokens;
        }
        let shape = if est.shape.mean_input_tokens > 0.0 && est.rate >= 0.5 {
            // Smoothed, so that one odd minute does not reshuffle the mix.
            let s = match self.last_shape {
                Some(p) => LoadShape {
                    mean_input_tokens: 0.8 * p.mean_input_tokens
                        + 0.2 * est.shape.mean_input_tokens,
                    mean_output_tokens: 0.8 * p.mean_output_tokens
                        + 0.2 * est.shape.mean_output_tokens,
                    prefix_hit_rate: 0.8 * p.prefix_hit_rate + 0.2 * est.shape.prefix_hit_rate,
                },
                None => est.shape,
            };
            self.last_shape = Some(s);
            s
        } else {
            self.last_shape.unwrap_or(self.cfg.default_shape)
        };
        let startup = view
            .pools
            .iter()
            .map(|p| p.startup_s)
            .fold(0.0f64, f64::max);
        let horizon = startup + self.cfg.interval_s;
        self.correction.resize(view.variants.len(), 1.0);
        self.raise_ceiling
            .resize(view.variants.len(), self.cfg.max_correction);
        self.calm_since.resize(view.variants.len(), None);
        self.strikes.resize(view.variants.len(), 0);
        self.set_aside_until.resize(view.variants.len(), None);
        self.set_aside_count.resize(view.variants.len(), 0);
        while self
            .recent_targets
            .front()
            .is_some_and(|(t, _)| view.now_s - t > self.cfg.scale_down_window_s)
        {
            self.recent_targets.pop_front();
        }
        self.observed.resize(view.variants.len(), false);
        // A variant whose time aside is over comes back, cautiously, at the floor.
        for i in 0..view.variants.len() {
            if let Some(until) = self.set_aside_until[i]
                && view.now_s >= until
            {
                self.set_aside_until[i] = None;
                self.correction[i] = self.cfg.min_correction;
            }
        }
        // Demand includes requests held at the gateway: they are what wakes a fleet at zero
        // (the floor below comes back the moment demand is seen).
        let waiting = view.gateway_waiting.unwrap_or(0);
        if est.rate > 0.0 || running > 0.0 || waiting > 0 {
            self.last_demand_s = Some(view.now_s);
        }
        if !est.fresh && self.last_forecast.is_none() {
            // No usable data yet: hold the fleet as it is.
            return Vec::new();
        }
        // Each variant's sustainable rate per replica for this shape, as probed (once per
        // decision: the correction, the candidates and the speed rule all read it).
        let probed: Vec<f64> = (0..view.variants.len())
            .map(|i| self.capacity.max_rate(i, &shape))
            .collect();
        if let Some(slo) = self.cfg.slo
            && est.fresh
        {
            for (i, v) in view.variants.iter().enumerate() {
                let Some(l) = v
                    .load
                    .as_ref()
                    .filter(|l| v.ready > 0 && l.request_rate > 0.0)
                else {
                    // A window without observations is not a calm one.
                    self.calm_since[i] = None;
                    continue;
                };
                self.observed[i] = true;
                // Ratio of this variant's observed p95 to the target.
                let t = l.ttft_p95_s.map_or(0.0, |x| x * 1e3 / slo.ttft_ms);
                let it = l.itl_p95_s.map_or(0.0, |x| x * 1e3 / slo.itl_ms);
                let worst = t.max(it);
                // A variant set aside keeps reporting while its replicas drain; that says
                // nothing new, and counting it would set it aside again (and double its time).
                if !worst.is_finite() || self.is_set_aside(i, view.now_s) {
                    continue;
                }
                let at_floor = self.correction[i] <= self.cfg.min_correction;
                if worst >= 0.5 {
                    self.calm_since[i] = None;
                }
                // Latency seen while replicas of this variant are still starting says that the
                // fleet is short, which the plan already fixes, not that a replica carries less
                // than rated: derating on it would stack a larger plan on top of the one coming.
                let starting = v.target > v.ready;
                let c = &mut self.correction[i];
                if worst > 1.0 && *c > 1.0 {
                    // A raised rating that misses: back to the probe, and never raised this far
                    // again (so that noise does not cycle the fleet through the same miss).
                    self.raise_ceiling[i] = (*c * 0.95).max(1.0);
                    *c = 1.0;
                } else if worst > 1.0 && !starting {
                    *c = (*c * 0.9).max(self.cfg.min_correction);
                } else if worst < 0.5 {
                    // Well inside the SLO, and the replicas carry a real share of their rating
                    // (at light load every replica looks fast, and replicas that idle between
                    // bursts would restore the rating that just missed before the next burst).
                    // Below the probe's rating that restores it; above, it is evidence that the
                    // probe is conservative for this traffic (one replica with CV-2 arrivals,
                    // where a fleet behind the router pools its bursts), once that calm has
                    // lasted a whole stabilisation window.
                    let rated = probed[i] * *c;
                    let per_replica = l.request_rate / f64::from(v.ready.max(1));
                    let calm_since = *self.calm_since[i].get_or_insert(view.now_s);
                    let loaded =
                        rated > 0.0 && per_replica >= self.cfg.raise_min_utilisation * rated;
                    let cap = if loaded && view.now_s - calm_since >= self.cfg.scale_down_window_s {
                        self.cfg.max_correction.min(self.raise_ceiling[i]).max(1.0)
                    } else {
                        1.0
                    };
                    if loaded && *c < cap {
                        *c = (*c * 1.02).min(cap);
                    }
                }
                // Missing the SLO although already derated to the floor: more derating is not
                // allowed and would not help; after a few such decisions, plan without it.
                if worst > 1.0 && at_floor && !starting {
                    self.strikes[i] += 1;
                } else {
                    self.strikes[i] = 0;
                }
                if self.cfg.set_aside_after > 0 && self.strikes[i] >= self.cfg.set_aside_after {
                    self.strikes[i] = 0;
                    let doublings = self.set_aside_count[i].min(MAX_SET_ASIDE_DOUBLINGS);
                    self.set_aside_count[i] = self.set_aside_count[i].saturating_add(1);
                    self.set_aside_until[i] =
                        Some(view.now_s + self.cfg.set_aside_s * f64::from(1u32 << doublings));
                }
            }
            // Never set every variant aside: with nothing else to serve, the least bad stays.
            let usable = |i: usize| view.variants[i].max_replicas > 0;
            if (0..view.variants.len())
                .filter(|&i| usable(i))
                .all(|i| self.is_set_aside(i, view.now_s))
            {
                for until in &mut self.set_aside_until {
                    *until = None;
                }
            }
        }
        let fc = if est.fresh {
            let fc = self.forecaster.observe(view.now_s, est.rate, horizon);
            self.last_forecast = Some(fc);
            fc
        } else {
            // Hold the last forecast rather than learn from a gap in the data.
            self.last_forecast.unwrap_or(fc_zero())
        };
        let cands = self.candidates(view, &probed);
        let pool_caps: Vec<u32> = view.pools.iter().map(|p| p.capacity).collect();
        // Replicas started for a new mix are paid for through their start-up while serving
        // nothing, and the replicas it drops for as long as they outlast that start-up (the
        // stabilisation window keeps them at least a window): a mix must save more than both
        // over a stabilisation window to replace one.
        let current: Vec<u32> = view.variants.iter().map(|v| v.target).collect();
        let window = self
            .cfg
            .scale_down_window_s
            .max(self.cfg.interval_s)
            .max(1.0);
        let switch = SwitchCost {
            current: &current,
            share: startup / window,
            dropped_share: ((window - startup) / window).max(0.0),
        };
        // Behind a count-balancing router a mix runs at its most limited variant's concurrency
        // (one more probe per variant and shape).
        let concurrency: Vec<f64> = if self.cfg.routing == Routing::CountBalanced {
            (0..view.variants.len())
                .map(|i| self.capacity.concurrency(i, &shape))
                .collect()
        } else {
            Vec::new()
        };
        let speeds = Speeds {
            concurrency: &concurrency,
            per_replica: &probed,
            min_ratio: self.cfg.min_speed_ratio,
        };
        // Prefill and decode variants are sized together: each stage for the whole demand.
        let roles: Vec<Role> = view.variants.iter().map(|v| v.role).collect();
        let mut plan = plan_by_role_switching(
            &cands,
            &roles,
            &pool_caps,
            fc.provision_rate,
            Some(switch),
            |c, p, d| optimise_comparable(c, p, d, speeds, switch),
        );
        self.capacity_limited = Some(plan.capacity_limited);
        // What scale-down may go to: the plan with more replicas of the variants it uses until
        // it carries the need plus the hysteresis band, so that a fleet just shrunk still has
        // the band's headroom and the next uptick in the noise does not scale it straight back
        // up. Only the planned variants grow, so that the band never names a different mix.
        let band_cands: Vec<Candidate> = cands
            .iter()
            .zip(&plan.replicas)
            .map(|(c, &r)| Candidate {
                min_replicas: c.min_replicas.max(r),
                max_replicas: c.max_replicas.max(r),
                rate_per_replica: if r > 0 { c.rate_per_replica } else { 0.0 },
                ..*c
            })
            .collect();
        let mut band_plan = plan_by_role(
            &band_cands,
            &roles,
            &pool_caps,
            fc.provision_rate * (1.0 + self.cfg.hysteresis.max(0.0)),
            optimise,
        );
        if band_plan.capacity_limited {
            band_plan = plan.clone();
        }
        // Scale to zero only after a whole window without demand, and only where a gateway
        // signal can wake the fleet again; until then keep a floor of one replica.
        let idle_since = self.last_demand_s.or(self.first_seen).unwrap_or(view.now_s);
        let to_zero = self.cfg.min_total_replicas == 0
            && view.gateway_waiting.is_some()
            && view.now_s - idle_since >= self.cfg.scale_down_window_s;
        let floor = if to_zero {
            0
        } else {
            self.cfg.min_total_replicas.max(1)
        };
        // Keep the floor: the cheapest usable unified variant, or else the cheapest prefill and
        // decode variants together (one stage alone serves nothing).
        let cheapest = |role: Role| {
            (0..cands.len())
                .filter(|&i| {
                    roles[i] == role && cands[i].rate_per_replica > 0.0 && cands[i].max_replicas > 0
                })
                .min_by(|&a, &b| cands[a].price_per_hour.total_cmp(&cands[b].price_per_hour))
        };
        let keep: Vec<usize> = match cheapest(Role::Unified) {
            Some(u) => vec![u],
            None => [cheapest(Role::Prefill), cheapest(Role::Decode)]
                .into_iter()
                .flatten()
                .collect(),
        };
        for replicas in [&mut plan.replicas, &mut band_plan.replicas] {
            let total: u32 = replicas.iter().sum();
            if total < floor
                && let Some((&first, rest)) = keep.split_first()
            {
                replicas[first] += floor - total;
                for &k in rest {
                    replicas[k] = replicas[k].max(1);
                }
            }
        }
        let now = view.now_s;
        self.history.push_back((now, band_plan.replicas.clone()));
        while let Some((t, _)) = self.history.front() {
            if now - *t > self.cfg.scale_down_window_s {
                self.history.pop_front();
            } else {
                break;
            }
        }
        // Scale-down needs the *ready* fleet to exceed the need: replicas still starting count
        // against scaling up again (the plan is compared with targets), but never as capacity
        // that lets ready replicas go before their replacements serve.
        let ready: Vec<u32> = view.variants.iter().map(|v| v.ready).collect();
        let current_cap = carried_rate(&cands, &roles, &ready);
        let need = fc.provision_rate;
        // Scale down only on fresh data, after a full window of plans, above the hysteresis band.
        let observed_window = self
            .first_seen
            .is_some_and(|t| now - t >= self.cfg.scale_down_window_s);
        let may_shrink =
            est.fresh && observed_window && current_cap > need * (1.0 + self.cfg.hysteresis);
        // Replicas of a variant set aside count for no capacity, so removing them cannot bring
        // the fleet below the need: only the rest must cover it (no hysteresis band).
        let may_drain_set_aside = est.fresh && observed_window && current_cap >= need;
        // A plan cheaper than the fleet as targeted, which already carries the need, is a swap
        // to a cheaper mix rather than capacity the load needs: the replicas it starts wait
        // until the plan has asked for them over a whole window, as the replicas it drops
        // wait. At a lull of a few minutes in bursty traffic the forecast falls to nothing and
        // the cheapest replica of all (one L40S) won the plan, to be stopped again when the
        // traffic came back before the old fleet had even gone.
        // The fleet as targeted, within each variant's bounds now (an operator who lowers a
        // maximum takes those replicas away at once, and what replaces them cannot wait).
        let kept: Vec<u32> = view
            .variants
            .iter()
            .map(|v| v.target.min(v.max_replicas))
            .collect();
        let kept_cost: f64 = cands
            .iter()
            .zip(&kept)
            .map(|(c, &r)| c.price_per_hour * f64::from(r))
            .sum();
        let swap = plan.cost_per_hour < kept_cost && carried_rate(&cands, &roles, &kept) >= need;
        let asked_over_window = |i: usize, above: u32| {
            self.history
                .front()
                .is_some_and(|(t, _)| now - t + self.cfg.interval_s >= self.cfg.scale_down_window_s)
                && self
                    .history
                    .iter()
                    .all(|(_, r)| r.get(i).copied().unwrap_or(0) > above)
        };
        let mut targets: Vec<u32> = Vec::with_capacity(view.variants.len());
        for (i, v) in view.variants.iter().enumerate() {
            let planned = plan.replicas[i];
            let window_max = self
                .history
                .iter()
                .map(|(_, r)| r.get(i).copied().unwrap_or(0))
                .max()
                .unwrap_or(planned);
            let shrink = if self.is_set_aside(i, now) {
                may_drain_set_aside
            } else {
                may_shrink
            };
            let target = if planned > v.target && (!swap || asked_over_window(i, v.target)) {
                planned
            } else if planned > v.target {
                v.target
            } else if planned < v.target && shrink {
                window_max.min(v.target)
            } else {
                v.target
            };
            // A whole idle window already passed: nothing left to stabilise.
            let target = if to_zero { 0 } else { target };
            targets.push(target.clamp(v.min_replicas, v.max_replicas.max(v.min_replicas)));
        }
        if !to_zero {
            self.limit_scale_down(&cands, &roles, &current, &mut targets, now);
            pair_stages(view, &roles, &plan.replicas, &mut targets);
            keep_ready_capacity(view, &cands, &roles, need, &mut targets);
        }
        // Never beyond a pool: shed replicas held above the plan first, then any above min.
        for (p, pool) in view.pools.iter().enumerate() {
            let members: Vec<usize> = (0..targets.len()).filter(|&i| cands[i].pool == p).collect();
            let used =
                |t: &[u32]| -> u32 { members.iter().map(|&i| t[i] * cands[i].devices).sum() };
            while used(&targets) > pool.capacity {
                let pick = members
                    .iter()
                    .copied()
                    .filter(|&i| targets[i] > plan.replicas[i].max(cands[i].min_replicas))
                    .max_by_key(|&i| targets[i] - plan.replicas[i])
                    .or_else(|| {
                        members
                            .iter()
                            .copied()
                            .filter(|&i| targets[i] > cands[i].min_replicas)
                            .max_by_key(|&i| targets[i])
                    });
                match pick {
                    Some(i) => targets[i] -= 1,
                    None => break,
                }
            }
        }
        self.recent_targets.push_back((now, targets.clone()));
        // Named in every reason, so that an operator reading the Events sees why a variant
        // gets no replicas although it is cheaper.
        let aside: Vec<&str> = self
            .set_aside(now)
            .into_iter()
            .map(|i| view.variants[i].name.as_str())
            .collect();
        let aside = if aside.is_empty() {
            String::new()
        } else {
            format!(
                ", set aside for missing the SLO at the derating floor: {}",
                aside.join(", ")
            )
        };
        let mut out = Vec::new();
        for (i, v) in view.variants.iter().enumerate() {
            let target = targets[i];
            if target != v.target {
                out.push(ScaleDecision {
                    variant: i,
                    replicas: target,
                    reason: format!(
                        "goodput: seen {:.2} rps, forecast {:.2} rps (+{:.0}% margin) in {:.0}s, plan ${:.2}/h{}{}",
                        est.rate,
                        fc.rate,
                        fc.margin * 100.0,
                        startup + self.cfg.interval_s,
                        plan.cost_per_hour,
                        if plan.capacity_limited {
                            ", capacity-limited"
                        } else {
                            ""
                        },
                        aside,
                    ),
                });
            }
        }
        out
    }
}

/// Replicas that go must leave the *ready* fleet carrying `need` (or what it carries now, if
/// less): a swap's new replicas serve nothing until they are ready, so the ready replicas they
/// replace stay until then. Gives replicas back to the variants scaled below their ready count,
/// the fastest per replica first. (A swap to a cheaper mix starts a window after the plan
/// first asks for it, just when the window would let the old replicas go.)
fn keep_ready_capacity(
    view: &ClusterView,
    cands: &[Candidate],
    roles: &[Role],
    need: f64,
    targets: &mut [u32],
) {
    let ready: Vec<u32> = view.variants.iter().map(|v| v.ready).collect();
    let floor = need.min(carried_rate(cands, roles, &ready));
    let staying =
        |t: &[u32]| -> Vec<u32> { t.iter().zip(&ready).map(|(&t, &r)| t.min(r)).collect() };
    while carried_rate(cands, roles, &staying(targets)) < floor {
        let pick = (0..targets.len())
            .filter(|&i| {
                // An operator's lowered maximum wins over the capacity kept.
                targets[i] < ready[i].min(view.variants[i].max_replicas)
                    && cands[i].rate_per_replica > 0.0
            })
            .max_by(|&a, &b| {
                cands[a]
                    .rate_per_replica
                    .total_cmp(&cands[b].rate_per_replica)
            });
        match pick {
            Some(i) => targets[i] += 1,
            None => break,
        }
    }
}

/// Keeps the two stages of the P/D path paired while the plan moves on or off it; the
/// scale-down window of each variant runs on its own.
/// - Every request a prefill replica serves goes on to a decode replica. While prefill replicas
///   are wanted or still serving (draining ones finish their queue and hand it on), keep one
///   decode replica: when the plan leaves the P/D path the decode stage's window could end
///   first, leaving the prefilled requests nowhere to go.
/// - Once no prefill replica is wanted, ready or draining, decode replicas get no new requests
///   and carry no capacity: they go to the plan at once, without waiting for the fleet to
///   exceed the need by the hysteresis band (which the rest of the fleet alone decides).
fn pair_stages(view: &ClusterView, roles: &[Role], plan: &[u32], targets: &mut [u32]) {
    let prefill_up =
        view.variants.iter().enumerate().any(|(i, v)| {
            roles[i] == Role::Prefill && (targets[i] > 0 || v.ready + v.draining > 0)
        });
    let decode: Vec<usize> = (0..targets.len())
        .filter(|&i| roles[i] == Role::Decode && view.variants[i].max_replicas > 0)
        .collect();
    if !prefill_up {
        for &i in &decode {
            let floor = view.variants[i].min_replicas;
            targets[i] = targets[i].min(plan.get(i).copied().unwrap_or(0).max(floor));
        }
    } else if decode.iter().all(|&i| targets[i] == 0) {
        // The decode variant with the most replicas up now, so that none has to start.
        if let Some(&d) = decode
            .iter()
            .max_by_key(|&&i| view.variants[i].ready + view.variants[i].starting)
        {
            targets[d] = 1;
        }
    }
}
