//! goodput's policy moving a model to a cheaper mix: while the fleet running carries the
//! forecast, the replicas of the cheaper mix start only once the plan has asked for them over a
//! whole stabilisation window, as the replicas it drops wait that long; when the fleet running
//! falls short they start at once (replicas an operator's lowered maximum takes away
//! included); and the replicas it replaces stay until their replacements are ready. Decisions
//! are applied at once (replicas ready the moment they are asked for), except in the test
//! that models the start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/views.rs"]
mod views;

use goodput_autoscaler::capacity::FixedCapacity;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_core::Role;
use goodput_sim::policy::{ClusterView, PoolView};

const INTERVAL_S: f64 = 30.0;
const RUNNING: usize = 0;
const CHEAPER: usize = 1;

/// Both variants carry 5 req/s per replica; the one running costs $4/h, the other $1.5/h.
fn fleet(running: u32) -> (GoodputPolicy<FixedCapacity>, ClusterView) {
    let policy = GoodputPolicy::new(
        GoodputConfig {
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        },
        FixedCapacity(vec![5.0, 5.0]),
    );
    let variant = |name: &str, price: f64, replicas: u32| {
        views::variant(name, name, Role::Unified, price, replicas, 16)
    };
    let pool = |name: &str| PoolView {
        accelerator: name.into(),
        capacity: 16,
        in_use: 0,
        startup_s: 240.0,
    };
    let view = ClusterView {
        now_s: 0.0,
        variants: vec![variant("running", 4.0, running), variant("cheaper", 1.5, 0)],
        pools: vec![pool("running"), pool("cheaper")],
        gateway_waiting: Some(0),
    };
    (policy, view)
}

/// Runs `decisions` decisions at `rate` req/s spread over the ready replicas; returns the
/// targets after each.
fn run(
    policy: &mut GoodputPolicy<FixedCapacity>,
    v: &mut ClusterView,
    rate: f64,
    decisions: usize,
) -> Vec<Vec<u32>> {
    views::run_decisions(policy, v, INTERVAL_S, decisions, |v| spread(v, rate))
}

/// `rate` req/s spread over the ready replicas, as each variant reports it.
fn spread(v: &mut ClusterView, rate: f64) {
    let ready: u32 = v.variants.iter().map(|x| x.ready).sum();
    for var in &mut v.variants {
        let share = rate * f64::from(var.ready) / f64::from(ready.max(1));
        var.load = views::served(var.ready, share, 200.0);
    }
}

#[test]
fn a_cheaper_mix_starts_only_after_a_window_while_the_running_fleet_carries_the_load() {
    // 12 req/s on five running replicas (25 req/s of capacity): the cheaper variant carries
    // the same for less, but the fleet running is enough, so the change waits.
    let (mut p, mut v) = fleet(5);
    let window = (GoodputConfig::default().scale_down_window_s / INTERVAL_S).round() as usize;
    let targets = run(&mut p, &mut v, 12.0, 3 * window);
    let first_start = targets
        .iter()
        .position(|t| t[CHEAPER] > 0)
        .expect("the cheaper variant takes over in the end");
    assert!(
        first_start + 1 >= window,
        "the cheaper replicas started at decision {first_start}, within a window: {targets:?}"
    );
    let end = targets.last().unwrap();
    assert_eq!(end[RUNNING], 0, "the dearer replicas go: {targets:?}");
    assert!(f64::from(end[CHEAPER]) * 5.0 >= 12.0, "{targets:?}");
}

#[test]
fn a_fleet_short_of_the_forecast_starts_the_cheaper_replicas_at_once() {
    // 40 req/s on two running replicas (10 req/s of capacity): whatever the mix, replicas
    // must start now, and the plan's cheaper ones are not held back.
    let (mut p, mut v) = fleet(2);
    let targets = run(&mut p, &mut v, 40.0, 1);
    let first = &targets[0];
    assert!(
        f64::from(first[RUNNING] + first[CHEAPER]) * 5.0 >= 40.0,
        "the first decision covers the load: {targets:?}"
    );
    assert!(first[CHEAPER] > 0, "{targets:?}");
}

#[test]
fn the_replicas_a_swap_replaces_stay_until_their_replacements_are_ready() {
    // As the first test, but a replica asked for is ready only after the pool's 240 s
    // start-up (eight decisions); a replica asked to go goes at once.
    let (mut p, mut v) = fleet(5);
    let window = (GoodputConfig::default().scale_down_window_s / INTERVAL_S).round() as usize;
    let startup = (v.pools[0].startup_s / INTERVAL_S).round() as usize;
    let mut starting: Vec<(usize, usize)> = Vec::new(); // (variant, decision it is ready at)
    let mut low = f64::INFINITY;
    for k in 0..4 * window {
        for (i, var) in v.variants.iter_mut().enumerate() {
            let arriving = starting
                .iter()
                .filter(|&&(j, at)| j == i && at == k)
                .count();
            var.ready += arriving as u32;
            var.starting = var.target - var.ready;
        }
        starting.retain(|&(_, at)| at > k);
        let ready: u32 = v.variants.iter().map(|x| x.ready).sum();
        low = low.min(f64::from(ready) * 5.0);
        spread(&mut v, 12.0);
        for d in p.decide(&v) {
            let var = &mut v.variants[d.variant];
            if d.replicas > var.target {
                for _ in var.target..d.replicas {
                    starting.push((d.variant, k + startup));
                }
            } else {
                // Replicas still starting go first, then ready ones.
                let mut gone = var.target - d.replicas;
                while gone > 0 {
                    if let Some(pos) = starting.iter().rposition(|&(j, _)| j == d.variant) {
                        starting.remove(pos);
                    } else {
                        var.ready -= 1;
                    }
                    gone -= 1;
                }
            }
            var.target = d.replicas;
        }
        v.now_s += INTERVAL_S;
    }
    assert!(
        low >= 12.0,
        "the ready fleet fell to {low} req/s of capacity under 12 req/s of load"
    );
    assert_eq!(v.variants[RUNNING].target, 0, "the swap completes");
    assert!(v.variants[CHEAPER].ready >= 3);
}

#[test]
fn replicas_a_lowered_maximum_takes_away_are_replaced_at_once() {
    // The running variant at $4 for 5 req/s, the other at $7.5 for 10: at 22 req/s the plan
    // stays on five running replicas (a mix with the other would save $1/h, far from what
    // starting it costs). The operator then lowers the running variant's maximum to one: the
    // plan, one running and two of the other, is cheaper than the five replicas targeted, but
    // the one replica left cannot carry the load, so the other's replicas start at once.
    let (_, mut v) = fleet(5);
    let mut p = GoodputPolicy::new(
        GoodputConfig {
            interval_s: INTERVAL_S,
            ..GoodputConfig::default()
        },
        FixedCapacity(vec![5.0, 10.0]),
    );
    v.variants[CHEAPER].price_per_hour = 7.5;
    let window = (GoodputConfig::default().scale_down_window_s / INTERVAL_S).round() as usize;
    let before = run(&mut p, &mut v, 22.0, 2 * window);
    assert_eq!(before.last().unwrap(), &vec![5, 0], "{before:?}");
    v.variants[RUNNING].max_replicas = 1;
    let after = run(&mut p, &mut v, 22.0, 1);
    assert_eq!(after[0][RUNNING], 1, "{after:?}");
    assert!(
        f64::from(after[0][RUNNING]) * 5.0 + f64::from(after[0][CHEAPER]) * 10.0 >= 22.0,
        "the first decision after the change carries the load: {after:?}"
    );
}
