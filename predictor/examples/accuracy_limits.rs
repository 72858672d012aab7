//! What limits the predictor's accuracy on workloads it was not trained on, measured with the
//! evaluation of `tests/accuracy.rs`:
//! - **the future**: the same evaluation with an oracle that knows what happens on the replica
//!   while a request decodes (its mean decoding batch and the prompt tokens that arrive then).
//!   The gap to the dispatch-time features is TPOT error no dispatch-time predictor can remove;
//!   the oracle's own error is what the models leave. For TTFT, the served predictions are
//!   scored apart on the requests that later prompts reached the replica before the first
//!   token of (a burst's next prompts share the prefill step of the one dispatched just before
//!   them), which no dispatch-time predictor can know of.
//! - **what has been seen**: the accuracy test never retrains during an unseen workload; in
//!   service the trainer retrains on a cadence on what has arrived. Here every request is still
//!   predicted before its own labels exist (test-then-train), with a retraining every 30 s of
//!   simulated time.
//!
//! docs/predictor.md quotes the figures.
//!
//! `cargo run --release -p goodput-predictor --example accuracy_limits` (about 20 seconds)

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement: a failed set-up should panic

#[path = "../tests/common/mod.rs"]
mod common;

use common::Knowledge;
use common::Timed;
use common::evaluation::{
    held_out_workloads, joined_after_dispatch, line, more_held_out_workloads, score_frozen,
    score_predictions, score_prequential, score_served, serve_prequential, trained, training_data,
    ttft_by_later_prompts,
};
use goodput_predictor::Target;

fn main() {
    ttft_split_by_later_prompts();
    for knowledge in [Knowledge::AtDispatch, Knowledge::Future] {
        let (how, target) = match knowledge {
            Knowledge::Future => ("future known", Target::Tpot),
            _ => ("at dispatch", Target::Tpot),
        };
        let train = training_data(knowledge);
        let p = trained(&train);
        let m = p.models();
        let fitted = m.target(target).expect("fitted");
        eprintln!(
            "[{how}] {target:?} in-window held-out: {:?} MAPE {:.2}% p90 coverage {:.3}",
            fitted.regressor.family(),
            fitted.accuracy.mape_percent,
            fitted.accuracy.coverage[1]
        );
        for (name, samples) in held_out_workloads(knowledge) {
            let p = trained(&train);
            line(
                name,
                &format!("{how}, model alone"),
                target,
                &score_frozen(&p, &samples, target),
            );
            let served = score_served(&p, &samples, true);
            line(
                name,
                &format!("{how}, calibrated online"),
                target,
                &served[target.index()],
            );
            if knowledge == Knowledge::AtDispatch {
                line(
                    name,
                    "at dispatch, model alone",
                    Target::Ttft,
                    &score_frozen(&p, &samples, Target::Ttft),
                );
                let p = trained(&train);
                let served = score_prequential(&p, &samples, true, Some(30.0));
                for t in Target::ALL {
                    line(
                        name,
                        "at dispatch, online + retrained every 30 s",
                        t,
                        &served[t.index()],
                    );
                }
            }
        }
    }
}

/// Served TTFT on every unseen workload, split by whether later prompts reached the replica
/// before the request's first token.
fn ttft_split_by_later_prompts() {
    let train = training_data(Knowledge::AtDispatch);
    let at = held_out_workloads(Knowledge::AtDispatch)
        .into_iter()
        .chain(more_held_out_workloads(Knowledge::AtDispatch));
    let joined = held_out_workloads(Knowledge::FutureWait)
        .into_iter()
        .chain(more_held_out_workloads(Knowledge::FutureWait));
    for ((name, samples), (_, later)) in at.zip(joined) {
        let p = trained(&train);
        let served = serve_prequential(&p, &samples, true, None);
        let t = Target::Ttft;
        line(
            name,
            "served, all",
            t,
            &score_predictions(&samples, &served, t, |_| true),
        );
        ttft_by_later_prompts(name, &samples, &later, &served);
        share_reached_by_gap(name, &samples, &joined_after_dispatch(&samples, &later));
    }
}

/// How often later prompts reach a request before its first token, by the time since the
/// previous dispatch to its replica: were it over half anywhere, a dispatch-time feature could
/// tell a median prediction to expect them.
fn share_reached_by_gap(name: &str, samples: &[Timed], joined: &[bool]) {
    const EDGES_MS: [f64; 7] = [0.1, 1.0, 10.0, 50.0, 200.0, 1000.0, f64::INFINITY];
    let mut counts = [(0usize, 0usize); EDGES_MS.len()];
    let mut previous: Vec<Option<f64>> = Vec::new();
    for (s, &reached) in samples.iter().zip(joined) {
        if previous.len() <= s.replica {
            previous.resize(s.replica + 1, None);
        }
        let gap_ms = previous[s.replica].map_or(f64::INFINITY, |p| (s.dispatched_s - p) * 1e3);
        previous[s.replica] = Some(s.dispatched_s);
        let bucket = EDGES_MS
            .iter()
            .position(|&e| gap_ms < e)
            .unwrap_or(EDGES_MS.len() - 1);
        counts[bucket].0 += 1;
        counts[bucket].1 += usize::from(reached);
    }
    let shares: Vec<String> = EDGES_MS
        .iter()
        .zip(counts)
        .filter(|(_, (n, _))| *n > 0)
        .map(|(e, (n, k))| format!("< {e} ms: {:.2} of {n}", k as f64 / n as f64))
        .collect();
    eprintln!(
        "{name}: share reached by later prompts, by the gap since the previous dispatch to the replica: {}",
        shares.join(", ")
    );
}
