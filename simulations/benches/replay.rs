//! Simulator speed: a one-hour workload of ~20k chat requests (Azure-conversation length
//! profile, 5.5 req/s) through a 16-replica heterogeneous fleet, in event-jumping mode and in
//! step-by-step mode side by side. `cargo bench -p goodput-sim --bench replay`.

#![allow(clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use goodput_sim::cluster::{RunOptions, run_cluster};
use goodput_sim::engine::StepMode;
use goodput_sim::policy::{FixedReplicas, LeastLoaded};
use goodput_sim::scenario::Scenario;

const FLEET: &str = r#"
name: hour-16
model: llama-3.1-8b
slo: { ttft_ms: 1000, itl_ms: 60 }
pools:
  - { accelerator: h100, capacity: 8 }
  - { accelerator: a100, capacity: 8 }
  - { accelerator: l40s, capacity: 8 }
variants:
  - { name: h100, accelerator: h100, replicas: 4 }
  - { name: a100, accelerator: a100, replicas: 4 }
  - { name: l40s, accelerator: l40s, replicas: 8 }
workload:
  generator: { rate: 5.5, duration_s: 3600, arrival: { gamma: { cv: 1.1 } }, lengths: azure-conv, seed: 1 }
"#;

fn bench(c: &mut Criterion) {
    let scenario = Scenario::from_yaml(FLEET, "bench").expect("scenario");
    let workload =
        goodput_sim::run::load_workload(&scenario, std::path::Path::new(".")).expect("workload");
    eprintln!(
        "{} requests over {:.0} s",
        workload.requests.len(),
        workload.duration_s()
    );
    let mut group = c.benchmark_group("one-hour-16-replicas");
    group.sample_size(10);
    for (name, mode) in [
        ("event-jumping", StepMode::EventJumping),
        ("step-by-step", StepMode::StepByStep),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let options = RunOptions {
                    mode,
                    progress: None,
                };
                run_cluster(
                    &scenario,
                    &workload,
                    &mut LeastLoaded,
                    &mut FixedReplicas,
                    &options,
                )
                .expect("run")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
