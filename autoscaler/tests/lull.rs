//! A lull inside a busy period: traffic that pauses for a few minutes and comes back.
//!
//! What users rely on: the scale-down window and the hysteresis band alone let a fleet go to
//! its floor during any pause longer than the window, so when the traffic returns it waits a
//! whole start-up time for replicas (bursty code-assistant traffic does this every hour; see
//! docs/experiments/autoscaling.md, "A whole day"). With `max_scale_down_share` the fleet loses at most
//! that share of its capacity per window, so it is still there when the traffic returns, and
//! it still shrinks on a lasting decline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/workloads.rs"]
mod workloads;

use goodput_autoscaler::compare::capacity_for;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_sim::run::{Simulation, simulate};
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::Workload;

const SCENARIO: &str = r#"
name: lull
model: llama-3.1-8b
slo: { ttft_ms: 2000, itl_ms: 100, percentile: 95 }
pools:
  - { accelerator: h100, capacity: 16, startup_s: 240 }
variants:
  - { name: h100-tp1, accelerator: h100, tp: 1, replicas: 4, min_replicas: 0, max_replicas: 16 }
workload:
  generator: { rate: 1, duration_s: 60, lengths: azure-conv, seed: 1 }
autoscale_interval_s: 30
"#;

const RATE: f64 = 40.0;
const LULL_FROM_S: f64 = 1200.0;
const LULL_TO_S: f64 = 1560.0;
const BACK_UNTIL_S: f64 = 2400.0;
/// A lasting decline after the busy period: a tenth of the rate for half an hour.
const END_S: f64 = 4200.0;

/// Evenly spaced arrivals: `RATE` until the lull, a twentieth of it for six minutes, `RATE`
/// again until `BACK_UNTIL_S`, then a tenth of it.
fn workload() -> Workload {
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    while t < END_S {
        arrivals.push(t);
        let rate = if (LULL_FROM_S..LULL_TO_S).contains(&t) {
            RATE / 20.0
        } else if t >= BACK_UNTIL_S {
            RATE / 10.0
        } else {
            RATE
        };
        t += 1.0 / rate;
    }
    workloads::at_instants("busy, lull, busy, quiet", arrivals, 1500, 100)
}

fn run(share: f64) -> Simulation {
    let scenario = Scenario::from_yaml(SCENARIO, "lull").unwrap();
    let mut policy = GoodputPolicy::new(
        GoodputConfig {
            interval_s: scenario.autoscale_interval_s,
            slo: Some(scenario.slo),
            max_scale_down_share: share,
            ..GoodputConfig::default()
        },
        capacity_for(&scenario).unwrap(),
    );
    simulate(&scenario, &workload(), Some(&mut policy), None, None).unwrap()
}

/// Share of the requests arriving in `[from, to)` that met both targets.
fn attainment(sim: &Simulation, from: f64, to: f64) -> f64 {
    let slo = sim.report.slo;
    let (mut met, mut n) = (0usize, 0usize);
    for o in &sim.run.outcomes {
        if (from..to).contains(&o.arrival_s) {
            n += 1;
            let ok = match (o.ttft_s(), o.mean_itl_s(), o.finish_s) {
                (Some(t), Some(i), Some(_)) => slo.met_by(t, i),
                _ => false,
            };
            met += usize::from(ok);
        }
    }
    met as f64 / n.max(1) as f64
}

/// Replicas held (starting, ready or draining) at the sample nearest `t`.
fn held_at(sim: &Simulation, t: f64) -> f64 {
    let ts = &sim.run.timeseries;
    let i = ts
        .t_s
        .iter()
        .position(|&s| s >= t)
        .unwrap_or(ts.t_s.len() - 1);
    ts.replicas["h100-tp1"][i]
}

#[test]
fn a_lull_does_not_take_the_fleet_and_a_decline_still_does() {
    let limited = run(GoodputConfig::default().max_scale_down_share);
    let unlimited = run(1.0);
    let busy = held_at(&limited, LULL_FROM_S - 30.0);
    let back = (LULL_TO_S, LULL_TO_S + 300.0);
    eprintln!(
        "busy fleet {busy}; at the lull's end limited {} / unlimited {}; attainment in the \
         five minutes after it limited {:.4} / unlimited {:.4}; at the end {} / {}",
        held_at(&limited, LULL_TO_S),
        held_at(&unlimited, LULL_TO_S),
        attainment(&limited, back.0, back.1),
        attainment(&unlimited, back.0, back.1),
        held_at(&limited, END_S - 30.0),
        held_at(&unlimited, END_S - 30.0),
    );
    assert!(busy >= 4.0, "the busy period needs a real fleet: {busy}");
    assert!(
        held_at(&limited, LULL_TO_S) >= 0.55 * busy,
        "the lull took the fleet: {} of {busy}",
        held_at(&limited, LULL_TO_S)
    );
    assert!(
        attainment(&limited, back.0, back.1) >= 0.99,
        "the returning traffic waited for replicas: {:.4}",
        attainment(&limited, back.0, back.1)
    );
    // Without the limit the same lull empties the fleet and the return misses the SLO: the
    // limit is what holds it.
    assert!(
        attainment(&unlimited, back.0, back.1) < 0.9,
        "{:.4}",
        attainment(&unlimited, back.0, back.1)
    );
    // A lasting decline to a tenth still brings the fleet down.
    assert!(
        held_at(&limited, END_S - 30.0) <= 0.3 * busy,
        "still {} of {busy} replicas half an hour into the decline",
        held_at(&limited, END_S - 30.0)
    );
}
