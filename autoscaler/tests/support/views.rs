//! Driving goodput's policy over hand-made views: each decision applied at once (the replicas
//! it asks for ready the moment they are asked for), so the next decision sees the fleet the
//! last one left.

#![allow(dead_code)] // each test binary uses its own part

use goodput_autoscaler::capacity::CapacityModel;
use goodput_autoscaler::goodput::GoodputPolicy;
use goodput_core::{Role, VariantLoad};
use goodput_sim::policy::{ClusterView, VariantView};

/// A variant with `replicas` ready (none starting or draining), a minimum of 0 and nothing
/// observed yet.
pub fn variant(
    name: &str,
    accelerator: &str,
    role: Role,
    price_per_hour: f64,
    replicas: u32,
    max_replicas: u32,
) -> VariantView {
    VariantView {
        name: name.into(),
        accelerator: accelerator.into(),
        tp: 1,
        role,
        price_per_hour,
        min_replicas: 0,
        max_replicas,
        target: replicas,
        ready: replicas,
        starting: 0,
        draining: 0,
        load: None,
    }
}

/// What `replicas` replicas report serving `rate` req/s of 1000-token prompts with
/// `output_tokens`-token answers, fresh (10 s old), well inside any SLO.
pub fn load(replicas: u32, rate: f64, output_tokens: f64) -> VariantLoad {
    VariantLoad {
        replicas_reporting: replicas,
        request_rate: rate,
        mean_prompt_tokens: 1000.0,
        mean_output_tokens: output_tokens,
        age_s: 10.0,
        ..Default::default()
    }
}

/// [`load`] where there are replicas to report it; none without.
pub fn served(replicas: u32, rate: f64, output_tokens: f64) -> Option<VariantLoad> {
    (replicas > 0).then(|| load(replicas, rate, output_tokens))
}

/// `decisions` decisions, each after `observe` sets what the variants report, each applied
/// ([`decide_and_apply`]); returns the targets after each.
pub fn run_decisions<C: CapacityModel>(
    policy: &mut GoodputPolicy<C>,
    view: &mut ClusterView,
    interval_s: f64,
    decisions: usize,
    mut observe: impl FnMut(&mut ClusterView),
) -> Vec<Vec<u32>> {
    (0..decisions)
        .map(|_| {
            observe(view);
            decide_and_apply(policy, view, interval_s)
        })
        .collect()
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
