//! Property tests of the decision invariants: whatever the snapshot, goodput's targets stay
//! within min/max and pool capacity; more load never leaves less capacity than the load (nor, for
//! one variant, fewer replicas); the optimiser covers the demand within limits, with prefill
//! and decode variants each stage for the whole demand; and the baselines respect min/max too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use goodput_autoscaler::baselines::{HpaKv, KedaSlo, WvaSaturation};
use goodput_autoscaler::capacity::FixedCapacity;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_autoscaler::optimizer::{
    Candidate, Speeds, SwitchCost, carried_rate, optimise, optimise_comparable,
    plan_by_role_switching,
};
use goodput_core::{Role, Slo, VariantLoad};
use goodput_sim::policy::{ClusterView, PoolView, ScaleDecision, VariantView};
use proptest::prelude::*;

const ACCS: [&str; 4] = ["h100", "a100", "l40s", "tpu-v5e"];

#[derive(Debug, Clone)]
struct Case {
    view: ClusterView,
    rates: Vec<f64>,
}

fn load(rate: f64, kv: f64, waiting: f64) -> VariantLoad {
    VariantLoad {
        replicas_reporting: 1,
        request_rate: rate,
        mean_prompt_tokens: 1000.0,
        mean_output_tokens: 200.0,
        ttft_p90_s: Some(0.3 + rate / 10.0),
        itl_p90_s: Some(0.03),
        waiting,
        kv_usage: kv,
        age_s: 15.0,
        ..Default::default()
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=4)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(
                    (
                        0usize..4, // pool
                        prop_oneof![Just(1u32), Just(2), Just(4)],
                        0.5f64..10.0, // price
                        0u32..3,      // min
                        1u32..12,     // max above min
                        0u32..10,     // target
                        0.0f64..30.0, // observed rate
                        0.0f64..1.0,  // kv
                        0.0f64..20.0, // waiting
                        0.1f64..5.0,  // capacity per replica
                    ),
                    n,
                ),
                prop::collection::vec(4u32..40, 4),
                0.0f64..4000.0,
                any::<bool>(),
            )
        })
        .prop_map(|(vs, caps, now, disaggregated)| {
            let mut variants = Vec::new();
            let mut rates = Vec::new();
            for (i, (pool, tp, price, min, span, target, rate, kv, waiting, cap)) in
                vs.into_iter().enumerate()
            {
                let max = min + span;
                let target = target.clamp(min, max);
                variants.push(VariantView {
                    name: format!("v{i}"),
                    accelerator: ACCS[pool].into(),
                    tp,
                    role: Role::Unified,
                    price_per_hour: price,
                    min_replicas: min,
                    max_replicas: max,
                    target,
                    ready: target,
                    starting: 0,
                    draining: 0,
                    load: (target > 0).then(|| load(rate, kv, waiting)),
                });
                rates.push(cap);
            }
            // Half the cases serve disaggregated: the first variant prefills, the second decodes.
            if disaggregated && variants.len() >= 2 {
                variants[0].role = Role::Prefill;
                variants[1].role = Role::Decode;
            }
            // Pools big enough for the minimums and the current targets.
            let pools = (0..4)
                .map(|p| {
                    let need: u32 = variants
                        .iter()
                        .filter(|v| v.accelerator == ACCS[p])
                        .map(|v| v.target.max(v.min_replicas) * v.tp)
                        .sum();
                    PoolView {
                        accelerator: ACCS[p].into(),
                        capacity: need + caps[p],
                        in_use: need,
                        startup_s: 240.0,
                    }
                })
                .collect();
            Case {
                view: ClusterView {
                    now_s: now,
                    variants,
                    pools,
                    gateway_waiting: None,
                },
                rates,
            }
        })
}

fn apply(view: &ClusterView, ds: &[ScaleDecision]) -> Vec<u32> {
    let mut t: Vec<u32> = view.variants.iter().map(|v| v.target).collect();
    for d in ds {
        t[d.variant] = d.replicas;
    }
    t
}

fn check_bounds(view: &ClusterView, targets: &[u32]) {
    for (v, &t) in view.variants.iter().zip(targets) {
        assert!(
            t >= v.min_replicas,
            "{} below min: {t} < {}",
            v.name,
            v.min_replicas
        );
        assert!(
            t <= v.max_replicas,
            "{} above max: {t} > {}",
            v.name,
            v.max_replicas
        );
    }
}

fn check_pools(view: &ClusterView, targets: &[u32]) {
    for p in &view.pools {
        let used: u32 = view
            .variants
            .iter()
            .zip(targets)
            .filter(|(v, _)| v.accelerator == p.accelerator)
            .map(|(v, t)| t * v.tp)
            .sum();
        assert!(
            used <= p.capacity,
            "pool {} over capacity: {used} > {}",
            p.accelerator,
            p.capacity
        );
    }
}

/// Devices a plan's replicas hold in pool `p`.
fn devices_in_pool(cands: &[Candidate], replicas: &[u32], p: usize) -> u32 {
    cands
        .iter()
        .zip(replicas)
        .filter(|(c, _)| c.pool == p)
        .map(|(c, r)| c.devices * r)
        .sum()
}

fn scaled(view: &ClusterView, f: f64) -> ClusterView {
    let mut v = view.clone();
    for x in &mut v.variants {
        if let Some(l) = &mut x.load {
            l.request_rate *= f;
            l.waiting *= f;
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn goodput_respects_min_max_and_pools(c in case()) {
        let mut p = GoodputPolicy::new(GoodputConfig::default(), FixedCapacity(c.rates.clone()));
        // Two decisions a few minutes apart, the second on the state the first produced.
        let t = apply(&c.view, &p.decide(&c.view));
        check_bounds(&c.view, &t);
        check_pools(&c.view, &t);
        let mut next = scaled(&c.view, 0.3);
        next.now_s += 400.0;
        for (v, &x) in next.variants.iter_mut().zip(&t) {
            v.target = x;
            v.ready = x;
        }
        let t2 = apply(&next, &p.decide(&next));
        check_bounds(&next, &t2);
        check_pools(&next, &t2);
    }

    #[test]
    fn more_load_never_less_capacity(c in case(), f in 1.0f64..4.0) {
        let mut a = GoodputPolicy::new(GoodputConfig::default(), FixedCapacity(c.rates.clone()));
        let mut b = GoodputPolicy::new(GoodputConfig::default(), FixedCapacity(c.rates.clone()));
        let ta = apply(&c.view, &a.decide(&c.view));
        let more = scaled(&c.view, f);
        let tb = apply(&more, &b.decide(&more));
        let roles: Vec<Role> = c.view.variants.iter().map(|v| v.role).collect();
        let cands: Vec<Candidate> = c
            .rates
            .iter()
            .map(|&r| Candidate {
                price_per_hour: 1.0,
                devices: 1,
                pool: 0,
                min_replicas: 0,
                max_replicas: 0,
                rate_per_replica: r,
            })
            .collect();
        let cap = |t: &[u32]| carried_rate(&cands, &roles, t);
        // The fleet for more load carries at least the smaller load (or all the smaller fleet
        // did): mixes may change, capacity for the load seen may not shrink. A disaggregated
        // request is counted where it enters (unified or prefill variants).
        let demand: f64 = c
            .view
            .variants
            .iter()
            .filter(|v| v.role != Role::Decode)
            .filter_map(|v| v.load.as_ref())
            .map(|l| l.request_rate + l.waiting / 60.0)
            .sum();
        prop_assert!(
            cap(&tb) >= cap(&ta).min(demand) - 1e-9,
            "capacity fell below the load: {ta:?} -> {tb:?}"
        );
        // One variant: more load never fewer replicas.
        if c.view.variants.len() == 1 {
            prop_assert!(tb[0] >= ta[0]);
        }
    }

    #[test]
    fn optimiser_meets_demand_within_limits(
        prices in prop::collection::vec(0.5f64..10.0, 1..5),
        demand in 0.0f64..60.0,
        extra in 0.0f64..10.0,
    ) {
        let cands: Vec<Candidate> = prices
            .iter()
            .enumerate()
            .map(|(i, &p)| Candidate {
                price_per_hour: p,
                devices: 1 + (i as u32 % 2),
                pool: i % 2,
                min_replicas: (i % 2) as u32,
                max_replicas: 12,
                rate_per_replica: 0.5 + i as f64,
            })
            .collect();
        let pools = [16, 16];
        let a = optimise(&cands, &pools, demand);
        let b = optimise(&cands, &pools, demand + extra);
        for (c, &r) in cands.iter().zip(&a.replicas) {
            prop_assert!(r >= c.min_replicas && r <= c.max_replicas);
        }
        for (p, &cap) in pools.iter().enumerate() {
            prop_assert!(devices_in_pool(&cands, &a.replicas, p) <= cap);
        }
        if !a.capacity_limited {
            prop_assert!(a.capacity_rate >= demand - 1e-9);
        }
        if !b.capacity_limited {
            prop_assert!(b.capacity_rate >= a.capacity_rate.min(demand + extra) - 1e-9);
        }
    }

    #[test]
    fn disaggregated_plans_carry_the_demand_within_limits(
        vs in prop::collection::vec(
            (
                0usize..3,
                0usize..2,
                0.5f64..10.0,
                0u32..2,
                1u32..10,
                0.2f64..8.0,
                0u32..6,
                prop_oneof![Just(0.0f64), 1.0f64..100.0],
            ),
            2..6,
        ),
        count_balanced in any::<bool>(),
        demand in 0.0f64..40.0,
        extra in 0.0f64..10.0,
        pools in prop::collection::vec(4u32..40, 2),
        ratio in prop_oneof![Just(0.0f64), Just(0.3)],
    ) {
        // role (unified, prefill, decode), pool, price, min, span, rate, current target,
        // requests in flight at the rated load (0: unknown; used behind a count-balancing
        // router).
        let mut roles: Vec<Role> = vs
            .iter()
            .map(|v| [Role::Unified, Role::Prefill, Role::Decode][v.0])
            .collect();
        // Both stages, always: the scenario validation requires them together.
        roles[0] = Role::Prefill;
        roles[1] = Role::Decode;
        let cands: Vec<Candidate> = vs
            .iter()
            .map(|&(_, pool, price, min, span, rate, _, _)| Candidate {
                price_per_hour: price,
                devices: 1,
                pool,
                min_replicas: min,
                max_replicas: min + span,
                rate_per_replica: rate,
            })
            .collect();
        let current: Vec<u32> = vs.iter().map(|v| v.6).collect();
        let concurrency: Vec<f64> = if count_balanced {
            vs.iter().map(|v| v.7).collect()
        } else {
            Vec::new()
        };
        // As goodput plans: paths and mixes both charged for the replicas they would start
        // and drop.
        let switch = SwitchCost { current: &current, share: 0.8, dropped_share: 0.2 };
        let plan = |d: f64| {
            plan_by_role_switching(&cands, &roles, &pools, d, Some(switch), |c, p, x| {
                optimise_comparable(
                    c,
                    p,
                    x,
                    Speeds { per_replica: &[], min_ratio: ratio, concurrency: &concurrency },
                    switch,
                )
            })
        };
        let a = plan(demand);
        let b = plan(demand + extra);
        for (c, &r) in cands.iter().zip(&a.replicas) {
            prop_assert!(r >= c.min_replicas && r <= c.max_replicas, "{:?}", a.replicas);
        }
        for (p, &cap) in pools.iter().enumerate() {
            let used = devices_in_pool(&cands, &a.replicas, p);
            // The minimums alone may exceed a pool; beyond them, the plan fits.
            let mins: u32 = cands.iter().filter(|c| c.pool == p).map(|c| c.min_replicas).sum();
            prop_assert!(used <= cap.max(mins), "pool {p}: {used} > {cap}");
        }
        let carried = |r: &[u32]| carried_rate(&cands, &roles, r);
        if !a.capacity_limited {
            prop_assert!(carried(&a.replicas) >= demand - 1e-9, "{:?} for {demand}", a.replicas);
        }
        if !b.capacity_limited {
            prop_assert!(
                carried(&b.replicas) >= carried(&a.replicas).min(demand + extra) - 1e-9,
                "{:?} -> {:?}",
                a.replicas,
                b.replicas
            );
        }
    }

    #[test]
    fn baselines_respect_min_max(c in case()) {
        let slo = Slo { ttft_ms: 1000.0, itl_ms: 60.0, percentile: 95.0 };
        let mut hpa = HpaKv::new(0, 0.7);
        let mut keda = KedaSlo::new(0, slo);
        let mut wva = WvaSaturation::default();
        for ds in [hpa.decide(&c.view), keda.decide(&c.view), wva.decide(&c.view)] {
            let t = apply(&c.view, &ds);
            check_bounds(&c.view, &t);
        }
    }
}
