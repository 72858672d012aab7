//! Prefill/decode disaggregation: prefill replicas compute the prompt, the KV cache travels to a
//! decode replica after a transfer delay from its size and the link, and the decode replica
//! produces every output token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use goodput_core::Catalog;
use goodput_core::perf::kv_transfer_time;
use goodput_sim::cluster::{ClusterRun, RunOptions, run_cluster};
use goodput_sim::engine::StepMode;
use goodput_sim::policy::{FixedReplicas, LeastLoaded};
use goodput_sim::profile::profile;
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::{RequestSpec, Workload};

const PD: &str = r#"
name: pd
model: llama-3.1-70b
slo: { ttft_ms: 2000, itl_ms: 80 }
pools:
  - { accelerator: h100, capacity: 16 }
variants:
  - { name: prefill, accelerator: h100, tp: 4, role: prefill, replicas: 1 }
  - { name: decode, accelerator: h100, tp: 4, role: decode, replicas: 1 }
kv_transfer: { setup_ms: 1.0, efficiency: 0.7 }
workload: { generator: { rate: 1, duration_s: 1, lengths: azure-conv } }
"#;

fn workload(n: u64, gap_s: f64) -> Workload {
    Workload {
        name: "spaced".into(),
        hash_block_tokens: 16,
        requests: (0..n)
            .map(|id| RequestSpec {
                id,
                arrival_s: id as f64 * gap_s,
                input_tokens: 4096,
                output_tokens: 64,
                hash_ids: vec![],
            })
            .collect(),
    }
}

/// Runs `w` on the scenario `yaml` with its replicas fixed, behind least-loaded routing.
fn run_fixed(yaml: &str, w: &Workload) -> ClusterRun {
    let scenario = Scenario::from_yaml(yaml, "pd").unwrap();
    let options = RunOptions {
        mode: StepMode::EventJumping,
        progress: None,
    };
    run_cluster(&scenario, w, &mut LeastLoaded, &mut FixedReplicas, &options).unwrap()
}

#[test]
fn isolated_requests_pay_prefill_plus_kv_transfer_before_the_first_token() {
    let run = run_fixed(PD, &workload(5, 30.0));
    let c = Catalog::builtin();
    let (m, h100) = (
        c.model("llama-3.1-70b").unwrap(),
        c.accelerator("h100").unwrap(),
    );
    let transfer = kv_transfer_time(m, h100, 4, 4096, 1e-3, 0.7);
    // 4096 tokens x 320 KiB / 4 ranks over 400 Gb/s at 70 %: about 7.5 ms plus setup.
    assert!((0.005..0.02).contains(&transfer), "{transfer}");
    let p = profile(&c, "llama-3.1-70b", "h100", 4, 4096, 1, None).unwrap();
    for o in &run.outcomes {
        assert_eq!(o.variant, Some(1), "tokens come from the decode variant");
        assert_eq!(o.output_tokens, 64);
        let ttft = o.ttft_s().unwrap();
        // prefill + transfer + the decode replica's first step (one token, ~30 ms)
        let floor = p.prefill_ms / 1e3 + transfer;
        assert!(
            ttft > floor && ttft < floor + 0.1,
            "ttft {ttft} vs floor {floor}"
        );
    }
    assert_eq!(run.served_per_variant, vec![5, 5]);
}

#[test]
fn prefill_and_decode_must_come_together() {
    let text = PD.replace(
        "  - { name: decode, accelerator: h100, tp: 4, role: decode, replicas: 1 }\n",
        "",
    );
    let scenario = Scenario::from_yaml(&text, "pd").unwrap();
    let err = scenario
        .validate(&scenario.catalog().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefill and decode"), "{err}");
}

#[test]
fn prompts_go_to_prefill_replicas_only_while_a_decode_replica_can_take_them() {
    // A unified replica beside a prefill replica whose decode stage has no replica up (a
    // model leaving, or not yet on, the P/D path): every request is served whole by the
    // unified replica instead of being prefilled and held with nowhere to decode.
    let text = PD
        .replace(
            "  - { name: decode, accelerator: h100, tp: 4, role: decode, replicas: 1 }\n",
            "  - { name: decode, accelerator: h100, tp: 4, role: decode, replicas: 0 }\n  - { name: unified, accelerator: h100, tp: 4, replicas: 1 }\n",
        );
    let run = run_fixed(&text, &workload(20, 1.0));
    assert_eq!(run.outcomes.len(), 20);
    for o in &run.outcomes {
        assert_eq!(
            o.variant,
            Some(2),
            "served whole by the unified variant: {o:?}"
        );
        assert!(o.finish_s.is_some() && !o.rejected, "{o:?}");
        assert_eq!(o.output_tokens, 64);
    }
}
