//! Under noisy load goodput changes replicas less often than the reactive baselines. The
//! scenario `autoscaler/scenarios/noisy-h100.yaml` holds the mean rate still for an hour (30
//! req/s of Azure-conversation lengths, one H100 variant, 240 s start-up), so every scale
//! event answers noise. The workload runs four times: bursty arrivals (Gamma CV 3) with three
//! seeds, and Poisson arrivals. Over the four runs goodput must make fewer scale events than
//! each reactive policy (KEDA's SLO ratio, HPA on KV utilisation, WVA's saturation analyzer),
//! and hold the SLO in each. Totals rather than each run, since one run's count is a handful
//! of events that one burst can move. About 15 s in the optimised test profile; the figures
//! are in docs/autoscaling.md, "Noisy load".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use goodput_autoscaler::compare::compare;
use goodput_sim::report::RunReport;
use goodput_sim::run::load_workload;
use goodput_sim::scenario::{Scenario, WorkloadSpec};
use goodput_sim::workload::generate::ArrivalProcess;

const REACTIVE: [&str; 3] = ["keda-slo", "hpa-kv", "wva-saturation"];

fn run(arrival: ArrivalProcess, seed: u64) -> Vec<RunReport> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut scenario = Scenario::from_file(&dir.join("noisy-h100.yaml")).unwrap();
    match &mut scenario.workload {
        WorkloadSpec::Generator(g) => {
            g.arrival = arrival;
            g.seed = seed;
        }
        other => panic!("noisy-h100.yaml should generate its workload, has {other:?}"),
    }
    let workload = load_workload(&scenario, Path::new(".")).unwrap();
    let policies: Vec<String> = std::iter::once("goodput")
        .chain(REACTIVE)
        .map(str::to_string)
        .collect();
    let reports = compare(&scenario, &workload, &policies).unwrap();
    print!("{}", goodput_sim::report::table::compare_table(&reports));
    reports
}

/// Per policy, scale events summed over the runs; goodput's SLO attainment in each run.
#[test]
fn fewer_scale_events_than_the_reactive_policies() {
    let runs = [
        (ArrivalProcess::Gamma { cv: 3.0 }, 11),
        (ArrivalProcess::Gamma { cv: 3.0 }, 12),
        (ArrivalProcess::Gamma { cv: 3.0 }, 13),
        (ArrivalProcess::Poisson, 11),
    ];
    let mut events = vec![0usize; 1 + REACTIVE.len()];
    for (arrival, seed) in runs {
        println!("{arrival}, seed {seed}");
        let reports = run(arrival, seed);
        let by = |name: &str| reports.iter().find(|r| r.policy == name).unwrap();
        let g = by("goodput");
        assert!(
            g.requests.slo_attainment >= 0.99,
            "goodput's SLO attainment {} under steady load ({arrival}, seed {seed})",
            g.requests.slo_attainment
        );
        for (n, name) in std::iter::once("goodput").chain(REACTIVE).enumerate() {
            events[n] += by(name).scale_events.len();
        }
    }
    println!(
        "scale events over the runs: goodput {}, {REACTIVE:?} {:?}",
        events[0],
        &events[1..]
    );
    for (n, name) in REACTIVE.iter().enumerate() {
        assert!(
            events[0] < events[n + 1],
            "goodput made {} scale events over the runs, {name} {}",
            events[0],
            events[n + 1]
        );
    }
}
