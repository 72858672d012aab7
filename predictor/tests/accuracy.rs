//! Accuracy on simulator data. Guards five behaviours: (1) conformal calibration: on the
//! held-out slice of the training distribution p90 covers 88-92 % of requests; (2) on two
//! workloads never trained on (other length mix, envelope, burstiness, prefix sharing), the
//! predictions served, calibrated online from the labels as they arrive (each request's labels
//! reach the predictor when it finishes, as llm-d's EPP sends them), cover 88-92 % at p90;
//! (3) their TTFT MAPE is within the 5 % and their TPOT MAPE within a regression bound
//! (the 5 % is NOT met for TPOT on unseen workloads: see docs/predictor.md, "Accuracy");
//! (4) on both, retrained every 30 s on what has arrived as in service (each request still
//! predicted before its labels exist), TTFT gets more accurate, TPOT no worse, and p90 coverage
//! stays 88-92 %; (5) on three more unseen workloads (a heavier load than any trained, long
//! prompts under an envelope, prefix-heavy bursty code), served the same way, p90 covers
//! 88-92 % and TTFT is within 5 % but on the code traffic, which has a regression bound. The
//! model's own (frozen) figures on the unseen workloads are printed next to them. The predictor
//! is per variant (H100 here) with the variant's physics priors, as goodput's scheduler keeps
//! it.
//!
//! Run with `--nocapture` to see the figures (docs/predictor.md quotes them).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed set-up should panic

mod common;

use common::Knowledge;
use common::evaluation::{
    held_out_workloads, line, more_held_out_workloads, score_frozen, score_predictions,
    score_prequential, score_served, serve_prequential, trained, training_data,
    ttft_by_later_prompts,
};
use goodput_predictor::model::QUANTILES;
use goodput_predictor::{Accuracy, Target};

/// Simulated seconds between retrainings in the in-service scoring (the trainer's default is
/// 10 s of wall time; 10 s and 30 s give MAPE within 0.1 point of each other).
const RETRAIN_EVERY_S: f64 = 30.0;

#[test]
fn held_out_workloads_meet_the_coverage_target_and_mape_bounds() {
    let train = training_data(Knowledge::AtDispatch);
    let p = trained(&train);
    let models = p.models();
    for t in Target::ALL {
        let m = models.target(t).expect("fitted");
        eprintln!(
            "{}: {} training rows of {} samples, families {:?}, chose {:?}; in-window held-out {:?}",
            t.as_str(),
            m.training_rows,
            train.len(),
            m.candidates,
            m.regressor.family(),
            m.accuracy
        );
    }
    for t in Target::ALL {
        let cov = models.target(t).expect("fitted").accuracy.coverage[1];
        assert!(
            (0.88..=0.92).contains(&cov),
            "{}: in-distribution p90 coverage {cov}",
            t.as_str()
        );
    }
    let mut failures = Vec::new();
    for (name, samples) in held_out_workloads(Knowledge::AtDispatch) {
        // A predictor of its own per workload, so that one workload's calibration does not
        // carry into the next.
        let p = trained(&train);
        for t in Target::ALL {
            line(name, "model alone", t, &score_frozen(&p, &samples, t));
        }
        let replayed = score_served(&p, &samples, false);
        for t in Target::ALL {
            line(
                name,
                "calibrated online, labels only",
                t,
                &replayed[t.index()],
            );
        }
        let p = trained(&train);
        let served = score_served(&p, &samples, true);
        for t in Target::ALL {
            let a = &served[t.index()];
            assert!(a.rows > 1000, "{name}: too few rows");
            // TTFT: the 5 %. TPOT: today's figures plus a margin (what limits it is the
            // batch that forms after dispatch, examples/accuracy_limits.rs).
            let bound = match t {
                Target::Ttft => 5.0,
                Target::Tpot => 10.5,
            };
            check_served(&mut failures, name, t, a, bound);
        }
        // In service the trainer also refits on the workload as it arrives: each request is
        // still predicted before its labels exist. Learning from it must help TTFT (the
        // features describe its state; TPOT is bounded by the batch after dispatch, see
        // examples/accuracy_limits.rs) and keep the coverage target through the new versions.
        let p = trained(&train);
        let in_service = score_prequential(&p, &samples, true, Some(RETRAIN_EVERY_S));
        for t in Target::ALL {
            let a = &in_service[t.index()];
            let before = &served[t.index()];
            line(name, "retrained every 30 s, as in service", t, a);
            if !(0.88..=0.92).contains(&a.coverage[1]) {
                failures.push(format!(
                    "{name} {} retrained: p90 coverage {:.3}",
                    t.as_str(),
                    a.coverage[1]
                ));
            }
            let allowed = match t {
                Target::Ttft => before.mape_percent,
                Target::Tpot => before.mape_percent + 0.5,
            };
            if a.mape_percent > allowed {
                failures.push(format!(
                    "{name} {} retrained: MAPE {:.2}% (without retraining {:.2}%)",
                    t.as_str(),
                    a.mape_percent,
                    before.mape_percent
                ));
            }
        }
    }
    // Three more unseen workloads, served as above: the 5 % TTFT target on the heavier
    // load and the long prompts. On prefix-heavy bursty code traffic, a regression bound on all
    // requests, and the 5 % on those no later prompt reached the replica before their first
    // token: a burst's next prompts share the prefill step of the one dispatched just before
    // them, which no prediction at its dispatch can know (docs/predictor.md, "Accuracy").
    let joined = more_held_out_workloads(Knowledge::FutureWait);
    for ((name, samples), (_, later)) in more_held_out_workloads(Knowledge::AtDispatch)
        .into_iter()
        .zip(&joined)
    {
        let p = trained(&train);
        let served = serve_prequential(&p, &samples, true, None);
        let code = name.starts_with("azure-code");
        for t in Target::ALL {
            let bound = match (code, t) {
                (false, Target::Ttft) => 5.0,
                (true, Target::Ttft) => 6.5,
                (false, Target::Tpot) => 12.5,
                (true, Target::Tpot) => 14.5,
            };
            let all = score_predictions(&samples, &served, t, |_| true);
            check_served(&mut failures, name, t, &all, bound);
        }
        if code {
            let (alone, _) = ttft_by_later_prompts(name, &samples, later, &served);
            if alone.mape_percent > 5.0 || alone.rows < samples.len() / 2 {
                failures.push(format!(
                    "{name} ttft, no later prompt before the first token: MAPE {:.2}% over {} rows",
                    alone.mape_percent, alone.rows
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Prints what was served on an unseen workload and records where it misses the issue's
/// coverage target (p90 covering 88-92 %) or its MAPE `bound`.
fn check_served(failures: &mut Vec<String>, name: &str, t: Target, a: &Accuracy, bound: f64) {
    line(
        name,
        "calibrated online, labels with the served prediction",
        t,
        a,
    );
    if !(0.88..=0.92).contains(&a.coverage[1]) {
        failures.push(format!(
            "{name} {}: p{} coverage {:.3}",
            t.as_str(),
            QUANTILES[1] * 100.0,
            a.coverage[1]
        ));
    }
    if a.mape_percent > bound {
        failures.push(format!(
            "{name} {}: MAPE {:.2}% (bound {bound}%)",
            t.as_str(),
            a.mape_percent
        ));
    }
}
