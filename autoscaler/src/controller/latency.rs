//! Predicted TTFT and inter-token latency of one replica at a given request rate, for the
//! status and the `goodput_predicted_*` gauges.
//!
//! A closed-form estimate on the engine model's roofline step costs (the same `StepCost` the
//! simulator and the capacity probes use), not a simulation: TTFT is one prefill of the mean
//! uncached prompt, inflated by an M/D/1 queueing wait at the prefill utilisation; ITL is the
//! decode step time at the batch Little's law gives (rate x output tokens x ITL, solved by
//! fixed-point iteration), stretched by the share of time prefills interrupt decoding. It is
//! what a user reads next to the SLO; the decision itself comes from the capacity probes.

use goodput_core::perf::StepWork;
use goodput_sim::engine::EngineParams;

use crate::capacity::LoadShape;

/// Predicted (TTFT, ITL) in seconds for one replica serving `rate` requests per second of
/// `shape`; None when the replica gets no load or the numbers are not finite.
pub fn predict(engine: &EngineParams, shape: &LoadShape, rate: f64) -> Option<(f64, f64)> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let input = shape.mean_input_tokens.max(1.0);
    let output = shape.mean_output_tokens.max(1.0);
    let hit = shape.prefix_hit_rate.clamp(0.0, 1.0);
    let cached = (input * hit).floor() as u64;
    let fresh = (input as u64).saturating_sub(cached).max(1);
    let mut w = StepWork::default();
    w.add(fresh, cached, true);
    let prefill = engine.cost.step_time(&w);
    // Prefill utilisation, kept below 1 so that an overloaded replica reads as slow, not NaN.
    let rho = (rate * prefill).min(0.95);
    let ttft = prefill * (1.0 + rho / (2.0 * (1.0 - rho)));
    let max_batch = engine.limits.max_num_seqs.max(1) as f64;
    let mut itl = engine.cost.decode_step_time(1.0, input + output / 2.0, 0);
    for _ in 0..30 {
        let batch = (rate * output * itl).clamp(1.0, max_batch);
        let step = engine
            .cost
            .decode_step_time(batch, batch * (input + output / 2.0), 0);
        itl = step / (1.0 - rho);
    }
    (ttft.is_finite() && itl.is_finite()).then_some((ttft, itl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_sim::cluster::resolve_variants;
    use goodput_sim::scenario::Scenario;

    #[test]
    fn latency_grows_with_load_and_is_in_a_plausible_range() {
        let s = Scenario::builtin().unwrap();
        let v = resolve_variants(&s, s.mode).unwrap();
        let shape = LoadShape {
            mean_input_tokens: 1000.0,
            mean_output_tokens: 200.0,
            prefix_hit_rate: 0.0,
        };
        let (t1, i1) = predict(&v[0].engine, &shape, 0.5).unwrap();
        let (t2, i2) = predict(&v[0].engine, &shape, 5.0).unwrap();
        assert!(t2 > t1 && i2 > i1, "{t1} {t2} {i1} {i2}");
        // An 8B model on an H100: tens of ms to prefill 1000 tokens, ms-scale decode steps.
        assert!(t1 > 0.005 && t1 < 0.5, "{t1}");
        assert!(i1 > 0.002 && i1 < 0.1, "{i1}");
        assert!(predict(&v[0].engine, &shape, 0.0).is_none());
    }
}
