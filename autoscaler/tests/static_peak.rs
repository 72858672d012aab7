//! The static baseline is the cheapest fixed fleet that holds the SLO on the workload, found by
//! simulation: on a one-variant scenario it is the smallest replica count reaching 99 %, and one
//! replica fewer misses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use goodput_autoscaler::compare::{STATIC_PEAK_ATTAINMENT, prepare};
use goodput_sim::run::{load_workload, simulate};
use goodput_sim::scenario::{Scenario, WorkloadSpec};

#[test]
fn the_static_fleet_is_the_smallest_that_holds_the_slo() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut scenario = Scenario::from_file(&dir.join("noisy-h100.yaml")).unwrap();
    if let WorkloadSpec::Generator(g) = &mut scenario.workload {
        g.duration_s = 600.0;
    }
    let workload = load_workload(&scenario, Path::new(".")).unwrap();
    let prepared = prepare("static-peak", &scenario, &workload).unwrap();
    let n = prepared.scenario.variants[0].replicas;
    let attainment = |replicas: u32| {
        let mut s = scenario.clone();
        s.variants[0].replicas = replicas;
        simulate(&s, &workload, None, None, None)
            .unwrap()
            .report
            .requests
            .slo_attainment
    };
    let at_n = attainment(n);
    let below = attainment(n - 1);
    eprintln!(
        "static fleet {n} replicas: {at_n}; {} replicas: {below}",
        n - 1
    );
    assert!(at_n >= STATIC_PEAK_ATTAINMENT, "{n} replicas reach {at_n}");
    assert!(
        below < STATIC_PEAK_ATTAINMENT,
        "{} replicas already reach {below}: {n} is not the smallest",
        n - 1
    );
}
