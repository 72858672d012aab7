//! A variant that keeps missing the SLO although its capacity is already derated to the floor
//! is set aside: goodput plans without it (moving the load to a variant that holds the SLO),
//! tries it again after the set-aside time, and never sets every variant aside.

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

fn variant(name: &str, accelerator: &str, price: f64) -> VariantView {
    VariantView {
        name: name.into(),
        accelerator: accelerator.into(),
        tp: 1,
        role: Role::Unified,
        price_per_hour: price,
        min_replicas: 0,
        max_replicas: 20,
        target: 0,
        ready: 0,
        starting: 0,
        draining: 0,
        load: None,
    }
}

/// What a variant's replicas show while serving `rate` req/s: TTFT fine, ITL p95 `itl_ratio`
/// times the SLO.
fn load(rate: f64, itl_ratio: f64) -> VariantLoad {
    VariantLoad {
        replicas_reporting: 1,
        request_rate: rate,
        mean_prompt_tokens: 2000.0,
        mean_output_tokens: 30.0,
        ttft_p95_s: Some(0.2),
        itl_p95_s: Some(itl_ratio * SLO.itl_ms / 1e3),
        age_s: 10.0,
        ..Default::default()
    }
}

struct Cluster {
    policy: GoodputPolicy<FixedCapacity>,
    view: ClusterView,
    /// ITL p95 over the SLO that each variant shows whenever it serves.
    itl_ratio: Vec<f64>,
    demand: f64,
    /// Reasons of the last decision's changes.
    reasons: Vec<String>,
}

impl Cluster {
    /// Two variants: `cheap` (A100, 4 req/s per replica, $2/h) and `fast` (H100, 5 req/s,
    /// $4/h). At equal SLO behaviour the optimiser prefers the cheap one per request.
    fn new(itl_ratio: [f64; 2]) -> Self {
        let cfg = GoodputConfig {
            slo: Some(SLO),
            interval_s: INTERVAL_S,
            set_aside_s: 900.0,
            ..GoodputConfig::default()
        };
        let mut view = ClusterView {
            now_s: 0.0,
            variants: vec![variant("cheap", "a100", 2.0), variant("fast", "h100", 4.0)],
            pools: ["a100", "h100"]
                .map(|a| PoolView {
                    accelerator: a.into(),
                    capacity: 20,
                    in_use: 0,
                    startup_s: 60.0,
                })
                .to_vec(),
            gateway_waiting: Some(0),
        };
        view.variants[0].target = 1;
        view.variants[0].ready = 1;
        Self {
            policy: GoodputPolicy::new(cfg, FixedCapacity(vec![4.0, 5.0])),
            view,
            itl_ratio: itl_ratio.to_vec(),
            demand: 12.0,
            reasons: Vec::new(),
        }
    }

    /// One decision: replicas start at once; the demand splits by ready replicas.
    fn step(&mut self) -> [u32; 2] {
        let ready: u32 = self.view.variants.iter().map(|v| v.ready).sum();
        for (i, v) in self.view.variants.iter_mut().enumerate() {
            v.load = (v.ready > 0).then(|| {
                load(
                    self.demand * f64::from(v.ready) / f64::from(ready.max(1)),
                    self.itl_ratio[i],
                )
            });
        }
        self.reasons.clear();
        for d in self.policy.decide(&self.view) {
            self.reasons.push(d.reason);
            let v = &mut self.view.variants[d.variant];
            v.target = d.replicas;
            v.ready = d.replicas;
        }
        self.view.now_s += INTERVAL_S;
        [self.view.variants[0].target, self.view.variants[1].target]
    }
}

#[test]
fn a_variant_missing_the_slo_at_the_derating_floor_is_set_aside_then_retried() {
    let mut c = Cluster::new([2.0, 0.5]);
    let first = c.step();
    assert!(
        first[0] > 0,
        "the cheap variant is planned first: {first:?}"
    );
    // Derating 0.9 per decision reaches the 0.5 floor in 7, then 4 strikes: well within 20.
    let mut set_aside_at = None;
    for k in 1..20 {
        c.step();
        if c.policy.set_aside(c.view.now_s) == [0] {
            set_aside_at = Some(k);
            break;
        }
    }
    let at = set_aside_at.expect("the cheap variant was never set aside");
    assert!(
        at >= 10,
        "set aside before the derating reached its floor: {at}"
    );
    // The fast variant covers the whole demand; the cheap one goes after the scale-down
    // window (300 s), and the reason of that change says why.
    let now = c.step();
    assert!(
        now[1] * 5 >= 12,
        "the fast variant covers the demand: {now:?}"
    );
    let mut reasons = Vec::new();
    for _ in 0..12 {
        c.step();
        reasons.extend(c.reasons.iter().cloned());
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("set aside for missing the SLO at the derating floor: cheap")),
        "{reasons:?}"
    );
    assert_eq!(c.view.variants[0].target, 0, "the cheap variant is drained");
    // After the set-aside time (900 s) it is tried again, at the derated floor.
    for _ in 0..20 {
        c.step();
    }
    assert!(c.policy.set_aside(c.view.now_s).is_empty());
}

#[test]
fn a_variant_that_holds_the_slo_is_never_set_aside() {
    let mut c = Cluster::new([0.9, 0.9]);
    for _ in 0..60 {
        c.step();
        assert!(c.policy.set_aside(c.view.now_s).is_empty());
    }
}

#[test]
fn the_last_usable_variants_are_not_all_set_aside() {
    let mut c = Cluster::new([2.0, 2.0]);
    for _ in 0..60 {
        let t = c.step();
        assert!(t[0] + t[1] > 0, "something keeps serving");
        assert!(
            c.policy.set_aside(c.view.now_s).len() < 2,
            "both variants set aside at {}",
            c.view.now_s
        );
    }
}

/// A variant that still misses when it is retried is set aside again, for twice as long: it is
/// not started and drained every `set_aside_s`.
#[test]
fn a_variant_set_aside_again_waits_twice_as_long() {
    let mut c = Cluster::new([2.0, 0.5]);
    // So cheap that even derated to the floor it is planned again when retried ($0.5 per req/s
    // against the fast variant's $0.8).
    c.view.variants[0].price_per_hour = 1.0;
    // (start, end) of each spell aside, in decisions.
    let mut spells: Vec<(usize, Option<usize>)> = Vec::new();
    for k in 0..200 {
        c.step();
        let aside = c.policy.set_aside(c.view.now_s) == [0];
        match spells.last_mut() {
            Some((_, end @ None)) if !aside => *end = Some(k),
            Some((_, None)) => {}
            _ if aside => spells.push((k, None)),
            _ => {}
        }
    }
    assert!(spells.len() >= 2, "set aside only {spells:?}");
    let length = |(start, end): (usize, Option<usize>)| end.map(|e| e - start);
    let first = length(spells[0]).expect("the first spell ends");
    // 900 s at 30 s per decision (the clock moves on after each decision).
    assert!((29..=30).contains(&first), "first spell {spells:?}");
    let second = length(spells[1]).unwrap_or(200 - spells[1].0);
    assert!(
        second >= 2 * first,
        "second spell {second} decisions: {spells:?}"
    );
}
