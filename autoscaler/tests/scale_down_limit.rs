//! The scale-down limit on views (`GoodputConfig::max_scale_down_share`): how far one window
//! may shrink a fleet, per stage of a disaggregated pair, and never above a lowered maximum.
//! Decisions are applied at once (replicas ready the moment they are asked for), so each
//! decision sees the fleet the last one left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/views.rs"]
mod views;

use goodput_autoscaler::capacity::FixedCapacity;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_core::Role;
use goodput_sim::policy::{ClusterView, PoolView, VariantView};

const INTERVAL_S: f64 = 30.0;

fn variant(name: &str, role: Role, replicas: u32, max_replicas: u32) -> VariantView {
    views::variant(name, "h100", role, 4.0, replicas, max_replicas)
}

fn view(variants: Vec<VariantView>) -> ClusterView {
    ClusterView {
        now_s: 0.0,
        variants,
        pools: vec![PoolView {
            accelerator: "h100".into(),
            capacity: 64,
            in_use: 0,
            startup_s: 240.0,
        }],
        gateway_waiting: Some(0),
    }
}

/// Runs `decisions` decisions at `rate` req/s, applying each; returns the replicas of every
/// variant after each decision.
fn run(
    policy: &mut GoodputPolicy<FixedCapacity>,
    v: &mut ClusterView,
    rate: f64,
    decisions: usize,
) -> Vec<Vec<u32>> {
    views::run_decisions(policy, v, INTERVAL_S, decisions, |v| {
        for var in &mut v.variants {
            let out_tokens = if var.role == Role::Prefill {
                1.0
            } else {
                200.0
            };
            var.load = Some(views::load(var.ready, rate, out_tokens));
        }
    })
}

/// Checks that each decision in `after` (from the `window`-th on) kept column `col` at or above
/// the share's floor under the most it held within the window before it, or lost at most one
/// replica (all replicas of a column carry the same rate here, so capacity is replicas).
fn assert_limited(after: &[Vec<u32>], col: usize, window: usize, what: &str) {
    let share = GoodputConfig::default().max_scale_down_share;
    for k in window..after.len() {
        let most = after[k - window..k].iter().map(|r| r[col]).max().unwrap();
        let floor = ((1.0 - share) * f64::from(most)).min(f64::from(most) - 1.0);
        assert!(
            f64::from(after[k][col]) >= floor - 1e-9,
            "{what}, decision {k}: {} replicas, down from {most} within a window",
            after[k][col]
        );
    }
}

fn policy(capacity: Vec<f64>) -> GoodputPolicy<FixedCapacity> {
    GoodputPolicy::new(
        GoodputConfig {
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        },
        FixedCapacity(capacity),
    )
}

#[test]
fn a_fleet_loses_at_most_the_share_of_its_capacity_per_window_and_still_reaches_the_plan() {
    let cfg = GoodputConfig::default();
    let window = (cfg.scale_down_window_s / INTERVAL_S).round() as usize;
    let mut p = policy(vec![5.0]);
    let mut v = view(vec![variant("h100", Role::Unified, 20, 40)]);
    // Busy at 90 req/s (18 replicas' worth) long enough to fill a window, then 2 req/s.
    run(&mut p, &mut v, 90.0, window + 2);
    let busy = v.variants[0].target;
    assert!(busy >= 18, "{busy}");
    let mut all = vec![vec![busy]; window];
    let after = run(&mut p, &mut v, 2.0, 8 * window);
    all.extend(after.iter().cloned());
    assert_limited(&all, 0, window, "unified");
    let end = after.last().unwrap()[0];
    assert!(
        end <= 2,
        "a lasting decline still ends near the plan: {end}"
    );
}

#[test]
fn the_limit_never_holds_replicas_above_a_lowered_maximum() {
    let mut p = policy(vec![5.0]);
    let mut v = view(vec![variant("h100", Role::Unified, 10, 40)]);
    run(&mut p, &mut v, 45.0, 12);
    assert_eq!(v.variants[0].target, 10);
    // The operator lowers the maximum to 2 as the load falls.
    v.variants[0].max_replicas = 2;
    let after = run(&mut p, &mut v, 2.0, 12);
    for r in &after {
        assert!(r[0] <= 2, "{after:?}");
    }
}

#[test]
fn each_stage_of_a_disaggregated_pair_is_limited_on_its_own() {
    let cfg = GoodputConfig::default();
    let window = (cfg.scale_down_window_s / INTERVAL_S).round() as usize;
    // Prefill replicas carry 10 req/s, decode replicas 5.
    let mut p = policy(vec![10.0, 5.0]);
    let mut v = view(vec![
        variant("prefill", Role::Prefill, 5, 40),
        variant("decode", Role::Decode, 10, 40),
    ]);
    run(&mut p, &mut v, 40.0, window + 2);
    let (p0, d0) = (v.variants[0].target, v.variants[1].target);
    assert!(p0 >= 4 && d0 >= 8, "{p0} prefill, {d0} decode");
    // The load falls to 2 req/s: each window may take at most 40 % of each stage.
    let mut all = vec![vec![p0, d0]; window];
    let after = run(&mut p, &mut v, 2.0, 6 * window);
    all.extend(after.iter().cloned());
    assert_limited(&all, 0, window, "prefill");
    assert_limited(&all, 1, window, "decode");
    let last = after.last().unwrap();
    assert!(
        last[0] < p0 && last[1] < d0 / 2,
        "both stages shrink: {after:?}"
    );
}
