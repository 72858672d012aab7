//! Scale to zero and wake on first demand, in the simulator with goodput's policy: a model
//! served for ten minutes, idle for forty, then asked again.
//!
//! What users rely on: with scale to zero allowed, the fleet goes to zero replicas once a whole
//! stabilisation window passed without a request (not before), and the first request after the
//! idle period wakes it within one decision interval, waiting one start-up time and never lost;
//! without a signal that could wake it (no gateway demand in the view, as in the controller
//! today), the policy never goes to zero, whatever it was allowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/workloads.rs"]
mod workloads;

use goodput_autoscaler::compare::capacity_for;
use goodput_autoscaler::goodput::{GoodputConfig, GoodputPolicy};
use goodput_sim::policy::{Autoscaler, ClusterView, ScaleDecision};
use goodput_sim::run::{Simulation, simulate};
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::Workload;

const SCENARIO: &str = r#"
name: scale-to-zero
model: llama-3.1-8b
slo: { ttft_ms: 2000, itl_ms: 100, percentile: 95 }
pools:
  - { accelerator: h100, capacity: 8, startup_s: 240 }
variants:
  - { name: h100-tp1, accelerator: h100, tp: 1, replicas: 1, min_replicas: 0, max_replicas: 8 }
workload:
  generator: { rate: 1, duration_s: 60, lengths: azure-conv, seed: 1 }
autoscale_interval_s: 30
"#;

const BUSY_UNTIL_S: f64 = 600.0;
const WAKE_AT_S: f64 = 3000.0;
const WINDOW_S: f64 = 300.0;
const STARTUP_S: f64 = 240.0;
const INTERVAL_S: f64 = 30.0;

/// 2 req/s for ten minutes, nothing until 3000 s, then 1 req/s for five minutes.
fn workload() -> Workload {
    let mut arrivals: Vec<f64> = (0..(BUSY_UNTIL_S * 2.0) as usize)
        .map(|i| i as f64 * 0.5)
        .collect();
    arrivals.extend((0..300).map(|i| WAKE_AT_S + i as f64));
    workloads::at_instants("busy, idle, busy", arrivals, 512, 64)
}

fn policy(
    scenario: &Scenario,
    scale_to_zero: bool,
) -> GoodputPolicy<goodput_autoscaler::capacity::EngineCapacity> {
    GoodputPolicy::new(
        GoodputConfig {
            interval_s: scenario.autoscale_interval_s,
            scale_down_window_s: WINDOW_S,
            min_total_replicas: u32::from(!scale_to_zero),
            slo: Some(scenario.slo),
            ..GoodputConfig::default()
        },
        capacity_for(scenario).unwrap(),
    )
}

/// The policy, shown no gateway signal (as the controller sees the cluster today).
struct WithoutGateway<A>(A);

impl<A: Autoscaler> Autoscaler for WithoutGateway<A> {
    fn name(&self) -> &str {
        "without-gateway"
    }
    fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision> {
        let mut view = view.clone();
        view.gateway_waiting = None;
        self.0.decide(&view)
    }
}

/// (sample time, replicas held) over the run.
fn replicas_over_time(sim: &Simulation) -> Vec<(f64, f64)> {
    let ts = &sim.run.timeseries;
    let held = &ts.replicas["h100-tp1"];
    ts.t_s.iter().copied().zip(held.iter().copied()).collect()
}

fn all_served(sim: &Simulation, workload: &Workload) {
    assert_eq!(sim.run.outcomes.len(), workload.requests.len());
    let lost = sim
        .run
        .outcomes
        .iter()
        .filter(|o| o.finish_s.is_none() || o.rejected)
        .count();
    assert_eq!(lost, 0, "requests lost");
}

#[test]
fn idle_fleet_goes_to_zero_and_wakes_on_the_first_request() {
    let scenario = Scenario::from_yaml(SCENARIO, "test").unwrap();
    let workload = workload();
    let mut goodput = policy(&scenario, true);
    let sim = simulate(&scenario, &workload, Some(&mut goodput), None, None).unwrap();
    all_served(&sim, &workload);
    let series = replicas_over_time(&sim);

    // Serving while busy.
    assert!(
        series
            .iter()
            .filter(|(t, _)| *t < BUSY_UNTIL_S)
            .all(|(_, r)| *r >= 1.0)
    );
    // Zero during the idle period, but only after a whole window without requests (the last
    // request of the busy period still runs for a moment after it arrived).
    let zero_at = series
        .iter()
        .find(|(t, r)| *t > BUSY_UNTIL_S && *t < WAKE_AT_S && *r == 0.0)
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("never reached zero while idle: {series:?}"));
    assert!(
        zero_at >= BUSY_UNTIL_S + WINDOW_S,
        "zero at {zero_at} s, before the idle window"
    );
    assert!(
        zero_at <= BUSY_UNTIL_S + WINDOW_S + 3.0 * INTERVAL_S,
        "zero only at {zero_at} s"
    );
    assert!(
        series
            .iter()
            .filter(|(t, _)| *t >= zero_at && *t < WAKE_AT_S)
            .all(|(_, r)| *r == 0.0),
        "woke without demand: {series:?}"
    );
    // The first request after the idle period wakes the fleet within one decision interval
    // and waits about one start-up time for its first token.
    let first = sim
        .run
        .outcomes
        .iter()
        .find(|o| o.arrival_s >= WAKE_AT_S)
        .unwrap();
    let ttft = first.first_token_s.unwrap() - first.arrival_s;
    assert!(ttft >= STARTUP_S, "served in {ttft} s with no replica up?");
    assert!(
        ttft <= STARTUP_S + INTERVAL_S + 15.0,
        "woke late: first token after {ttft} s"
    );
    assert!(
        series
            .iter()
            .any(|(t, r)| *t > WAKE_AT_S && *t <= WAKE_AT_S + INTERVAL_S + 5.0 && *r >= 1.0),
        "no replica within an interval of the first request: {series:?}"
    );
    // Once awake, the later requests are served normally.
    let late: Vec<_> = sim
        .run
        .outcomes
        .iter()
        .filter(|o| o.arrival_s >= WAKE_AT_S + STARTUP_S + 2.0 * INTERVAL_S)
        .collect();
    let slow = late
        .iter()
        .filter(|o| o.first_token_s.unwrap() - o.arrival_s > 2.0)
        .count();
    assert!(
        slow * 20 <= late.len(),
        "{slow} of {} slow after waking",
        late.len()
    );
}

#[test]
fn without_a_wake_signal_the_fleet_never_goes_to_zero() {
    let scenario = Scenario::from_yaml(SCENARIO, "test").unwrap();
    let workload = workload();
    let mut blind = WithoutGateway(policy(&scenario, true));
    let sim = simulate(&scenario, &workload, Some(&mut blind), None, None).unwrap();
    all_served(&sim, &workload);
    let series = replicas_over_time(&sim);
    assert!(series.iter().all(|(_, r)| *r >= 1.0), "{series:?}");
}

#[test]
fn without_scale_to_zero_one_replica_stays() {
    let scenario = Scenario::from_yaml(SCENARIO, "test").unwrap();
    let workload = workload();
    let mut goodput = policy(&scenario, false);
    let sim = simulate(&scenario, &workload, Some(&mut goodput), None, None).unwrap();
    all_served(&sim, &workload);
    let series = replicas_over_time(&sim);
    assert!(series.iter().all(|(_, r)| *r >= 1.0), "{series:?}");
}

#[test]
fn a_fleet_created_at_zero_wakes_on_its_first_request() {
    // Deployed with no replica and never served: no data, no forecast, only the gateway's
    // waiting requests.
    let scenario = Scenario::from_yaml(
        &SCENARIO.replace("replicas: 1, min_replicas", "replicas: 0, min_replicas"),
        "test",
    )
    .unwrap();
    assert_eq!(scenario.variants[0].replicas, 0);
    let mut workload = workload();
    workload.requests.retain(|r| r.arrival_s >= WAKE_AT_S);
    for (id, r) in workload.requests.iter_mut().enumerate() {
        r.id = id as u64;
    }
    let mut goodput = policy(&scenario, true);
    let sim = simulate(&scenario, &workload, Some(&mut goodput), None, None).unwrap();
    all_served(&sim, &workload);
    let first = &sim.run.outcomes[0];
    let ttft = first.first_token_s.unwrap() - first.arrival_s;
    assert!(
        (STARTUP_S..=STARTUP_S + INTERVAL_S + 15.0).contains(&ttft),
        "first token after {ttft} s"
    );
}
