//! How observed latency corrects a variant's probed capacity: a miss derates it, but not while
//! the variant's replicas are still starting (the latency then says the fleet is short, which
//! the plan in flight fixes); latencies under half the SLO for a whole stabilisation window,
//! with the replicas carrying a real share of their rating, raise it up to `max_correction`;
//! a derated rating comes back only while the replicas carry a real share of it;
//! a raised rating that misses drops back to the probe and is not raised that far again; a
//! variant that has not served yet inherits the derating of those that have.
//! The fleet is held fixed here, so each decision sees exactly the load and latency given.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use goodput_autoscaler::capacity::FixedCapacity;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_core::{Role, Slo, VariantLoad};
use goodput_sim::policy::{ClusterView, PoolView, VariantView};

const INTERVAL_S: f64 = 30.0;
const SLO: Slo = Slo {
    ttft_ms: 1000.0,
    itl_ms: 50.0,
    percentile: 95.0,
};
/// The probe's rating of one replica, requests per second.
const PROBED: f64 = 5.0;

struct Fleet {
    policy: GoodputPolicy<FixedCapacity>,
    view: ClusterView,
    cfg: GoodputConfig,
}

impl Fleet {
    /// One H100 variant with `ready` replicas serving, `target` asked for.
    fn new(ready: u32, target: u32) -> Self {
        let cfg = GoodputConfig {
            slo: Some(SLO),
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        };
        let view = ClusterView {
            now_s: 0.0,
            variants: vec![VariantView {
                name: "h100".into(),
                accelerator: "h100".into(),
                tp: 1,
                role: Role::Unified,
                price_per_hour: 4.0,
                min_replicas: 0,
                max_replicas: 20,
                target,
                ready,
                starting: target.saturating_sub(ready),
                draining: 0,
                load: None,
            }],
            pools: vec![PoolView {
                accelerator: "h100".into(),
                capacity: 20,
                in_use: ready,
                startup_s: 240.0,
            }],
            gateway_waiting: Some(0),
        };
        Self {
            policy: GoodputPolicy::new(cfg, FixedCapacity(vec![PROBED])),
            view,
            cfg,
        }
    }

    /// One decision at `rate` req/s over the fleet with both p95s at `ratio` x the SLO; the
    /// targets it asks for are not applied. Returns the correction after it.
    fn step(&mut self, rate: f64, ratio: f64) -> f64 {
        self.view.variants[0].load = Some(load(self.view.variants[0].ready, rate, ratio));
        self.policy.decide(&self.view);
        self.view.now_s += INTERVAL_S;
        self.policy.corrections()[0]
    }
}

/// What `replicas` report serving `rate` req/s with both p95s at `ratio` x the SLO.
fn load(replicas: u32, rate: f64, ratio: f64) -> VariantLoad {
    VariantLoad {
        replicas_reporting: replicas,
        request_rate: rate,
        mean_prompt_tokens: 1000.0,
        mean_output_tokens: 200.0,
        ttft_p95_s: Some(ratio * SLO.ttft_ms / 1e3),
        itl_p95_s: Some(ratio * SLO.itl_ms / 1e3),
        age_s: 10.0,
        ..Default::default()
    }
}

/// Decisions in one stabilisation window.
fn window(cfg: &GoodputConfig) -> usize {
    (cfg.scale_down_window_s / INTERVAL_S).round() as usize
}

#[test]
fn calm_latency_under_real_load_raises_the_rating_to_the_cap_after_a_window() {
    // 4 replicas at 4 req/s each: 0.8 of the probed rating, latencies at 0.3 of the SLO.
    let mut f = Fleet::new(4, 4);
    let w = window(&f.cfg);
    for k in 0..w {
        let c = f.step(16.0, 0.3);
        assert_eq!(
            c, 1.0,
            "raised after {k} decisions, before a whole window was calm"
        );
    }
    let mut c = 1.0;
    for _ in 0..3 * w {
        c = f.step(16.0, 0.3);
        assert!(c <= f.cfg.max_correction + 1e-12, "{c}");
    }
    assert!(
        (c - f.cfg.max_correction).abs() < 1e-9,
        "the rating ends at the cap {}, not {c}",
        f.cfg.max_correction
    );
}

#[test]
fn calm_latency_at_light_load_is_no_evidence() {
    // 4 replicas at 1 req/s each: every replica looks fast at 0.2 of its rating.
    let mut f = Fleet::new(4, 4);
    for _ in 0..4 * window(&f.cfg) {
        assert_eq!(f.step(4.0, 0.3), 1.0);
    }
}

#[test]
fn a_raised_rating_that_misses_goes_back_to_the_probe_and_stays_below_the_miss() {
    let mut f = Fleet::new(4, 4);
    let w = window(&f.cfg);
    let mut raised = 1.0;
    for _ in 0..3 * w {
        raised = f.step(16.0, 0.3);
    }
    assert!(raised > 1.05, "{raised}");
    assert_eq!(f.step(16.0, 1.5), 1.0, "one miss drops the raise");
    let mut top: f64 = 1.0;
    for _ in 0..4 * w {
        top = top.max(f.step(16.0, 0.3));
    }
    assert!(top > 1.0, "calm again, the rating rises again");
    assert!(
        top <= 0.95 * raised + 1e-9,
        "raised to {top} again, past 0.95 x the {raised} that missed"
    );
}

#[test]
fn a_derated_rating_comes_back_only_under_load_near_it() {
    // 4 replicas at 4.5 req/s each miss: derated below the probe.
    let mut f = Fleet::new(4, 4);
    let mut derated = 1.0;
    for _ in 0..3 {
        derated = f.step(18.0, 1.5);
    }
    assert!(derated < 0.8, "{derated}");
    // Between bursts the replicas idle at 0.5 req/s each and look fast: that says nothing of
    // what they carry, so the rating that missed stays.
    for _ in 0..4 * window(&f.cfg) {
        assert_eq!(f.step(2.0, 0.1), derated);
    }
    // Calm at 3 req/s each, most of the derated rating: it comes back towards the probe.
    let mut c = derated;
    for _ in 0..window(&f.cfg) {
        c = f.step(12.0, 0.3);
    }
    assert!(c > derated * 1.2, "{derated} -> {c}");
}

#[test]
fn a_miss_while_replicas_start_does_not_derate() {
    // 4 ready of 8 asked for: the fleet is short and latency says so.
    let mut f = Fleet::new(4, 8);
    for _ in 0..8 {
        assert_eq!(f.step(30.0, 2.0), 1.0);
    }
    // Once every replica is up, a miss does derate.
    f.view.variants[0].ready = 8;
    f.view.variants[0].starting = 0;
    let c = f.step(30.0, 2.0);
    assert!(c < 1.0, "{c}");
}

#[test]
fn a_decision_without_traffic_restarts_the_calm_window() {
    let mut f = Fleet::new(4, 4);
    let w = window(&f.cfg);
    for _ in 0..w - 2 {
        assert_eq!(f.step(16.0, 0.3), 1.0);
    }
    // A decision that saw no finished request says nothing about the latency.
    assert_eq!(f.step(0.0, 0.3), 1.0);
    for k in 0..w {
        assert_eq!(f.step(16.0, 0.3), 1.0, "raised {k} decisions after the gap");
    }
    let mut c = 1.0;
    for _ in 0..3 {
        c = f.step(16.0, 0.3);
    }
    assert!(c > 1.0, "{c}");
}

/// Two variants, `serving` (4 replicas at work) and `unproven` (none yet, cheaper per request
/// as probed), both probed at [`PROBED`]; `ratio` is the serving variant's p95 over the SLO.
fn two_variants(ratio: f64) -> ClusterView {
    let variant = |name: &str, price: f64, ready: u32, load: Option<VariantLoad>| VariantView {
        name: name.into(),
        accelerator: name.into(),
        tp: 1,
        role: Role::Unified,
        price_per_hour: price,
        min_replicas: 0,
        max_replicas: 40,
        target: ready,
        ready,
        starting: 0,
        draining: 0,
        load,
    };
    let pool = |name: &str, in_use| PoolView {
        accelerator: name.into(),
        capacity: 40,
        in_use,
        startup_s: 240.0,
    };
    ClusterView {
        now_s: 0.0,
        variants: vec![
            variant("serving", 4.0, 4, Some(load(4, 16.0, ratio))),
            variant("unproven", 1.5, 0, None),
        ],
        pools: vec![pool("serving", 4), pool("unproven", 0)],
        gateway_waiting: Some(0),
    }
}

#[test]
fn a_variant_that_has_not_served_inherits_the_derating_of_one_that_missed() {
    // The serving variant misses its SLO decision after decision; the plan moves the load to
    // the cheaper variant that has not served yet. Its probe has no evidence of its own, so it
    // is planned with the derating the engine model earned where it was seen: more replicas
    // than the same load would get from a fleet that meets its SLO.
    let unproven_target = |ratio: f64, decisions: usize| {
        let cfg = GoodputConfig {
            slo: Some(SLO),
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        };
        let mut policy = GoodputPolicy::new(cfg, FixedCapacity(vec![PROBED, PROBED]));
        let mut view = two_variants(ratio);
        let mut target = 0;
        for _ in 0..decisions {
            for d in policy.decide(&view) {
                if d.variant == 1 {
                    target = d.replicas;
                }
            }
            view.now_s += INTERVAL_S;
        }
        (target, policy.corrections()[0])
    };
    // A calm fleet carries the load, so the cheaper mix waits a stabilisation window (step
    // 6); a derated one no longer carries it, and the cheaper replicas start at once.
    let (calm, calm_correction) = unproven_target(0.3, 12);
    let (missing, derated) = unproven_target(1.5, 5);
    // (Calm for a whole window under real load, its rating may be raised on evidence.)
    assert!(calm_correction >= 1.0, "{calm_correction}");
    assert!(
        derated < 0.7,
        "five misses derate the serving variant: {derated}"
    );
    assert!(calm > 0, "the cheaper variant takes the load");
    assert!(
        f64::from(missing) >= f64::from(calm) / derated - 1.0,
        "the unproven variant is planned at the inherited rating: {missing} replicas against \
         {calm} with a calm fleet (correction {derated})"
    );
}
