//! `goodput sim compare` runs several policies at a time (`--jobs`). What a user relies on: the
//! table and `compare.json` do not depend on how many run at once (each run is seeded by the
//! scenario alone), reports come back in the order the policies were named, every run is
//! handed to the caller once (`--requests` writes one file per policy), and a failure names its
//! policy and stops the comparison.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use goodput_autoscaler::compare::{CompareError, compare_each};
use goodput_sim::run::load_workload;
use goodput_sim::scenario::Scenario;

/// Ten minutes of bursty chat traffic on two kinds of GPU.
fn scenario() -> Scenario {
    let yaml = r#"
name: jobs
model: llama-3.1-8b
slo: { ttft_ms: 1000, itl_ms: 60, percentile: 95 }
pools:
  - { accelerator: h100, capacity: 8, startup_s: 120 }
  - { accelerator: a100, capacity: 8, startup_s: 120 }
variants:
  - { name: h100, accelerator: h100, tp: 1, replicas: 1, min_replicas: 0, max_replicas: 8 }
  - { name: a100, accelerator: a100, tp: 1, replicas: 1, min_replicas: 0, max_replicas: 8 }
workload:
  generator:
    rate: 6
    duration_s: 600
    lengths: azure-conv
    arrival: { gamma: { cv: 2.0 } }
    seed: 3
router: least-loaded
"#;
    Scenario::from_yaml(yaml, "jobs").unwrap()
}

const POLICIES: [&str; 5] = ["goodput", "keda-slo", "fixed", "hpa-kv", "wva-saturation"];

#[test]
fn policies_run_at_once_give_the_same_reports_in_the_order_named() {
    let s = scenario();
    let w = load_workload(&s, std::path::Path::new(".")).unwrap();
    let policies: Vec<String> = POLICIES.iter().map(|p| p.to_string()).collect();
    let run = |jobs: usize| {
        let handed = Mutex::new(Vec::new());
        let reports = compare_each(&s, &w, &policies, None, jobs, &mut |name, sim| {
            handed
                .lock()
                .unwrap()
                .push((name.to_string(), sim.report.requests.total));
            Ok(())
        })
        .unwrap();
        (reports, handed.into_inner().unwrap())
    };
    let (mut one, handed_one) = run(1);
    let (mut four, mut handed_four) = run(4);
    let names: Vec<&str> = four.iter().map(|r| r.policy.as_str()).collect();
    assert_eq!(
        names, POLICIES,
        "reports in the order the policies were named"
    );
    // Everything but how long each run took on the clock.
    for r in one.iter_mut().chain(four.iter_mut()) {
        r.wall_time_s = 0.0;
    }
    for (a, b) in one.iter().zip(&four) {
        assert!(
            a == b,
            "{}: one at a time and four at a time differ (attainment {} / {}, cost {} / {})",
            a.policy,
            a.requests.slo_attainment,
            b.requests.slo_attainment,
            a.cost_usd,
            b.cost_usd
        );
    }
    // Every run reaches the caller once, with the whole workload.
    handed_four.sort();
    let mut expected: Vec<(String, u64)> = handed_one;
    expected.sort();
    assert_eq!(handed_four, expected);
    assert_eq!(expected.len(), POLICIES.len());
    assert!(expected.iter().all(|(_, n)| *n == w.requests.len() as u64));
}

#[test]
fn a_failure_names_its_policy_and_stops_the_comparison() {
    let s = scenario();
    let w = load_workload(&s, std::path::Path::new(".")).unwrap();
    let policies: Vec<String> = POLICIES.iter().map(|p| p.to_string()).collect();
    for jobs in [1, 2] {
        let handed = Mutex::new(0usize);
        let err = compare_each(&s, &w, &policies, None, jobs, &mut |name, _| {
            *handed.lock().unwrap() += 1;
            if name == "keda-slo" {
                Err("disk full".to_string())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        match err {
            CompareError::Run { policy, message } => {
                assert_eq!(policy, "keda-slo", "{jobs} at a time");
                assert!(message.contains("disk full"), "{message}");
            }
            other => panic!("expected a run error, got {other:?}"),
        }
        if jobs == 1 {
            // goodput, then keda-slo failed: nothing after it ran.
            assert_eq!(*handed.lock().unwrap(), 2);
        }
    }
    // A misspelt policy fails before anything runs.
    let mut ran = false;
    let err = compare_each(
        &s,
        &w,
        &["goodput".to_string(), "keda".to_string()],
        None,
        2,
        &mut |_, _| {
            ran = true;
            Ok(())
        },
    )
    .unwrap_err();
    assert!(matches!(err, CompareError::UnknownPolicy(p) if p == "keda"));
    assert!(!ran);
}
