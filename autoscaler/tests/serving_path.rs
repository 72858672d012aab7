//! A model offered both unified and disaggregated (prefill/decode) variants: goodput's policy
//! over views when the plan leaves the P/D path. Decisions are applied at once (replicas ready
//! the moment they are asked for), so each decision sees the fleet the last one left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/views.rs"]
mod views;

use goodput_autoscaler::capacity::FixedCapacity;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_core::Role;
use goodput_sim::policy::{ClusterView, PoolView, VariantView};

const INTERVAL_S: f64 = 30.0;
const UNIFIED: usize = 0;
const PREFILL: usize = 1;
const DECODE: usize = 2;

fn variant(name: &str, role: Role, price: f64, replicas: u32) -> VariantView {
    views::variant(name, "h100", role, price, replicas, 16)
}

/// Runs `decisions` decisions at `rate` req/s, applying each. The router splits arrivals
/// between the unified and the prefill replicas by count, and every prefilled request goes on
/// to the decode replicas. Returns the targets after each decision.
fn run(
    policy: &mut GoodputPolicy<FixedCapacity>,
    v: &mut ClusterView,
    rate: f64,
    decisions: usize,
) -> Vec<Vec<u32>> {
    views::run_decisions(policy, v, INTERVAL_S, decisions, |v| {
        let entries = f64::from(v.variants[UNIFIED].ready + v.variants[PREFILL].ready).max(1.0);
        let share = |n: u32| rate * f64::from(n) / entries;
        let pd_rate = share(v.variants[PREFILL].ready);
        for (i, var) in v.variants.iter_mut().enumerate() {
            let (served, output) = match i {
                UNIFIED => (share(var.ready), 200.0),
                PREFILL => (pd_rate, 1.0),
                _ => (pd_rate, 200.0),
            };
            var.load = views::served(var.ready, served, output);
        }
    })
}

#[test]
fn leaving_the_disaggregated_path_keeps_a_decode_replica_while_prefill_replicas_serve() {
    // Prefill 5 req/s per replica, decode 20: at 20 req/s the P/D path is four prefill
    // replicas and one decode replica, $10/h against $16/h for four unified ones.
    let mut p = GoodputPolicy::new(
        GoodputConfig {
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        },
        FixedCapacity(vec![5.0, 5.0, 20.0]),
    );
    let mut v = ClusterView {
        now_s: 0.0,
        variants: vec![
            variant("h100", Role::Unified, 4.0, 0),
            variant("h100-prefill", Role::Prefill, 2.0, 4),
            variant("h100-decode", Role::Decode, 2.0, 1),
        ],
        pools: vec![PoolView {
            accelerator: "h100".into(),
            capacity: 64,
            in_use: 0,
            startup_s: 240.0,
        }],
        gateway_waiting: Some(0),
    };
    let window = (GoodputConfig::default().scale_down_window_s / INTERVAL_S).round() as usize;
    let before = run(&mut p, &mut v, 20.0, window + 2);
    assert!(
        before.iter().all(|t| t[UNIFIED] == 0 && t[DECODE] >= 1),
        "the cheaper P/D path holds: {before:?}"
    );
    // The unified replicas get cheap enough that the P/D path's saving no longer pays for
    // them: the plan moves to unified, and each stage's window winds its replicas down.
    v.variants[UNIFIED].price_per_hour = 0.5;
    let after = run(&mut p, &mut v, 20.0, 10 * window);
    assert!(after.last().unwrap()[UNIFIED] >= 4, "{after:?}");
    for (k, t) in after.iter().enumerate() {
        assert!(
            t[PREFILL] == 0 || t[DECODE] >= 1,
            "decision {k}: {} prefill replicas hand requests to no decode replica ({after:?})",
            t[PREFILL]
        );
    }
    let end = after.last().unwrap();
    assert_eq!(
        (end[PREFILL], end[DECODE]),
        (0, 0),
        "the path left is wound down in the end: {after:?}"
    );
}
