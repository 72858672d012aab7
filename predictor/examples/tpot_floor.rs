//! How much of the TPOT error is the future: the accuracy evaluation of `tests/accuracy.rs`
//! run twice, once with the features a router has at dispatch and once with an oracle that
//! knows what happens on the replica while the request decodes (its mean decoding batch and the
//! prompt tokens that arrive then). The gap between the two is error no dispatch-time predictor
//! can remove; the oracle's own error is what the models leave. docs/predictor.md quotes it.
//!
//! `cargo run --release -p goodput-predictor --example tpot_floor`

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement: a failed set-up should panic

#[path = "../tests/common/mod.rs"]
mod common;

use common::Knowledge;
use common::evaluation::{
    held_out_workloads, line, score_frozen, score_served, trained, training_data,
};
use goodput_predictor::Target;

fn main() {
    for knowledge in [Knowledge::AtDispatch, Knowledge::Future] {
        let how = match knowledge {
            Knowledge::AtDispatch => "at dispatch",
            Knowledge::Future => "future known",
        };
        let train = training_data(knowledge);
        let p = trained(&train);
        let m = p.models();
        let fitted = m.target(Target::Tpot).expect("fitted");
        eprintln!(
            "[{how}] TPOT in-window held-out: {:?} MAPE {:.2}% p90 coverage {:.3}",
            fitted.regressor.family(),
            fitted.accuracy.mape_percent,
            fitted.accuracy.coverage[1]
        );
        for (name, samples) in held_out_workloads(knowledge) {
            let p = trained(&train);
            line(
                name,
                &format!("{how}, model alone"),
                Target::Tpot,
                &score_frozen(&p, &samples, Target::Tpot),
            );
            let served = score_served(&p, &samples, true);
            line(
                name,
                &format!("{how}, calibrated online"),
                Target::Tpot,
                &served[Target::Tpot.index()],
            );
        }
    }
}
