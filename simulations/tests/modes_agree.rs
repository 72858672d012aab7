//! Event jumping must not change what happens: the same trace through the same cluster in
//! event-jumping and step-by-step modes gives every request the same TTFT and end-to-end latency
//! (within 1 %, in practice to rounding), on a smooth chat trace and on a prefix-heavy one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use goodput_sim::cluster::{RunOptions, run_cluster};
use goodput_sim::engine::StepMode;
use goodput_sim::policy::{FixedReplicas, LeastLoaded};
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::{Workload, trace, transform};

fn shared_data(file: &str) -> PathBuf {
    let dir = std::env::var_os("GOODPUT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing (../shared/data or GOODPUT_SHARED_DATA)",
        path.display()
    );
    path
}

const FLEET: &str = r#"
name: modes
model: llama-3.1-8b
slo: { ttft_ms: 1000, itl_ms: 60 }
pools:
  - { accelerator: h100, capacity: 8 }
  - { accelerator: a100, capacity: 8 }
  - { accelerator: l40s, capacity: 8 }
variants:
  - { name: h100, accelerator: h100, replicas: 2 }
  - { name: a100, accelerator: a100, replicas: 2 }
  - { name: l40s, accelerator: l40s, replicas: 4 }
workload: { generator: { rate: 1, duration_s: 1, lengths: azure-conv } }
drain_s: 3600
"#;

fn compare(workload: &Workload) {
    let scenario = Scenario::from_yaml(FLEET, "test").unwrap();
    let run = |mode| {
        let options = RunOptions {
            mode,
            progress: None,
        };
        run_cluster(
            &scenario,
            workload,
            &mut LeastLoaded,
            &mut FixedReplicas,
            &options,
        )
        .unwrap()
    };
    let jump = run(StepMode::EventJumping);
    let step = run(StepMode::StepByStep);
    assert_eq!(
        jump.engine_steps, step.engine_steps,
        "same engine steps in both modes"
    );
    assert!(
        jump.events < step.events / 5,
        "jumping saves events: {} vs {}",
        jump.events,
        step.events
    );
    let mut compared = 0;
    for (a, b) in jump.outcomes.iter().zip(&step.outcomes) {
        assert_eq!(a.variant, b.variant, "same routing");
        let (Some(fa), Some(fb)) = (a.finish_s, b.finish_s) else {
            assert_eq!(a.finish_s, b.finish_s);
            continue;
        };
        let (ta, tb) = (a.ttft_s().unwrap(), b.ttft_s().unwrap());
        assert!((ta - tb).abs() <= 0.01 * tb + 1e-9, "TTFT {ta} vs {tb}");
        let (ea, eb) = (fa - a.arrival_s, fb - b.arrival_s);
        assert!((ea - eb).abs() <= 0.01 * eb + 1e-9, "e2e {ea} vs {eb}");
        compared += 1;
    }
    assert!(
        compared as f64 > 0.99 * workload.requests.len() as f64,
        "{compared} compared"
    );
}

#[test]
fn azure_conversation_trace_agrees_per_request() {
    let w = trace::load_trace(&shared_data("azure-2023-conv.csv")).unwrap();
    // Twenty minutes keep the step-by-step reference quick in CI.
    let w = transform::truncate(w, 1200.0).unwrap();
    compare(&w);
}

#[test]
fn mooncake_prefix_trace_agrees_per_request() {
    let w = trace::load_trace(&shared_data("mooncake-conversation.jsonl")).unwrap();
    let w = transform::truncate(w, 600.0).unwrap();
    compare(&w);
}
