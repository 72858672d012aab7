//! Driving goodput's policy over hand-made views: each decision applied at once (the replicas
//! it asks for ready the moment they are asked for), so the next decision sees the fleet the
//! last one left.

#![allow(dead_code)] // each test binary uses its own part

use goodput_autoscaler::capacity::CapacityModel;
use goodput_autoscaler::goodput::GoodputPolicy;
use goodput_core::VariantLoad;
use goodput_sim::policy::ClusterView;

/// What `replicas` ready replicas report serving `rate` req/s of 1000-token prompts with
/// `output_tokens`-token answers, fresh (10 s old); none without replicas.
pub fn served(replicas: u32, rate: f64, output_tokens: f64) -> Option<VariantLoad> {
    (replicas > 0).then(|| VariantLoad {
        replicas_reporting: replicas,
        request_rate: rate,
        mean_prompt_tokens: 1000.0,
        mean_output_tokens: output_tokens,
        age_s: 10.0,
        ..Default::default()
    })
}

/// One decision on `view`, applied; then the clock moves on by `interval_s`. Returns the
/// targets of every variant after it.
pub fn decide_and_apply<C: CapacityModel>(
    policy: &mut GoodputPolicy<C>,
    view: &mut ClusterView,
    interval_s: f64,
) -> Vec<u32> {
    for d in policy.decide(view) {
        let v = &mut view.variants[d.variant];
        v.target = d.replicas;
        v.ready = d.replicas;
    }
    view.now_s += interval_s;
    view.variants.iter().map(|v| v.target).collect()
}
