//! Where predicted TTFT/TPOT come from: the in-process `goodput_predictor::Predictor` of each
//! variant, with the variant's physics prior standing in until a model has been fitted.
//!
//! Data flow: the picker asks [`LatencyModel::predict`] for a candidate's point predictions;
//! `None` means "no prediction" (no predictor for the variant, or the predictor is unavailable)
//! and sends the picker to its load-based fallback. Training samples go the other way through
//! [`LatencyModel::observe`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use goodput_predictor::features::prior_index;
use goodput_predictor::{Features, Predictor, Sample, Target};

/// Predicted latencies of one request on one endpoint, ms.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Predicted {
    pub ttft_ms: f64,
    /// None when no TPOT model or prior exists.
    pub tpot_ms: Option<f64>,
    /// Whether a fitted model (not only the physics prior) produced it.
    pub learned: bool,
}

/// A source of predictions, one per variant index.
pub trait LatencyModel {
    fn predict(&self, variant: usize, features: &Features) -> Option<Predicted>;
    /// A measured request with the features at its dispatch (training data).
    fn observe(&self, _variant: usize, _sample: Sample, _now_s: f64) {}
}

/// No predictions at all: every pick falls back to load.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPredictions;

impl LatencyModel for NoPredictions {
    fn predict(&self, _: usize, _: &Features) -> Option<Predicted> {
        None
    }
}

/// One in-process [`Predictor`] per variant (None for a variant without one).
#[derive(Debug)]
pub struct VariantPredictors {
    predictors: Vec<Option<Arc<Predictor>>>,
    /// Set when the predictor must not be used (e.g. it failed or was switched off): the
    /// picker then runs on its load-based fallback.
    disabled: AtomicBool,
    /// Largest factor a learned prediction may differ from the physics prior (≤ 1: unbounded).
    pub max_correction: f64,
}

/// Default of [`VariantPredictors::max_correction`].
pub const DEFAULT_MAX_CORRECTION: f64 = 4.0;

impl Default for VariantPredictors {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl VariantPredictors {
    pub fn new(predictors: Vec<Option<Arc<Predictor>>>) -> Self {
        Self {
            predictors,
            disabled: AtomicBool::new(false),
            max_correction: DEFAULT_MAX_CORRECTION,
        }
    }

    /// Turns predictions off or back on (training samples are still accepted).
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }

    pub fn get(&self, variant: usize) -> Option<&Arc<Predictor>> {
        self.predictors.get(variant).and_then(Option::as_ref)
    }

    pub fn len(&self) -> usize {
        self.predictors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.predictors.is_empty()
    }
}

impl LatencyModel for VariantPredictors {
    #[inline]
    fn predict(&self, variant: usize, f: &Features) -> Option<Predicted> {
        if self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        let p = self.get(variant)?;
        let models = p.models();
        // One encoding for both targets; the physics priors are its last features.
        let x = models.vector(f);
        let prior = |t: Target| {
            let v = x[prior_index(t)];
            (models.physics.is_some() && v.is_finite() && v > 0.0).then_some(v)
        };
        // A learned correction stays within `max_correction` of the physics prior: a model
        // fitted on the traffic its own picks produced has not seen the loads it did not send,
        // and must not extrapolate an endpoint into looking idle (docs/benchmarks.md).
        let bound = |t: Target, learned: f64| match prior(t) {
            Some(pr) if self.max_correction > 1.0 => {
                learned.clamp(pr / self.max_correction, pr * self.max_correction)
            }
            _ => learned,
        };
        if models.is_ready() {
            // The model's point with its version's online calibration (the bias learned from
            // the labels since it was fitted).
            let point = |t: Target, m: &goodput_predictor::model::TargetModel| {
                m.point(&x) * models.calibration(t).factor(None)
            };
            let ttft = models
                .ttft
                .as_ref()
                .map(|m| bound(Target::Ttft, point(Target::Ttft, m)))?;
            let tpot = match &models.tpot {
                Some(m) => Some(bound(Target::Tpot, point(Target::Tpot, m))),
                None => prior(Target::Tpot),
            };
            (ttft.is_finite() && ttft >= 0.0).then_some(Predicted {
                ttft_ms: ttft,
                tpot_ms: tpot.filter(|t| t.is_finite()),
                learned: true,
            })
        } else {
            Some(Predicted {
                ttft_ms: prior(Target::Ttft)?,
                tpot_ms: prior(Target::Tpot),
                learned: false,
            })
        }
    }

    fn observe(&self, variant: usize, sample: Sample, now_s: f64) {
        if let Some(p) = self.get(variant) {
            p.add_samples(&[sample], now_s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_core::catalog::Catalog;
    use goodput_predictor::{PredictorConfig, VariantPhysics};

    fn physics() -> VariantPhysics {
        let c = Catalog::builtin();
        VariantPhysics::new(
            c.model("llama-3.1-8b").unwrap(),
            c.accelerator("h100").unwrap(),
            1,
        )
    }

    #[test]
    fn physics_prior_until_fitted_and_none_when_disabled() {
        let p = Arc::new(Predictor::new(PredictorConfig {
            physics: Some(physics()),
            ..Default::default()
        }));
        let m = VariantPredictors::new(vec![Some(p), None]);
        let idle = Features {
            input_token_length: 1000,
            ..Default::default()
        };
        let busy = Features {
            num_request_running: 200,
            prefill_tokens_in_flight: 50_000,
            ..idle
        };
        let a = m.predict(0, &idle).unwrap();
        let b = m.predict(0, &busy).unwrap();
        assert!(!a.learned);
        assert!(b.ttft_ms > a.ttft_ms, "{a:?} {b:?}");
        assert!(m.predict(1, &idle).is_none(), "no predictor for variant 1");
        m.set_disabled(true);
        assert!(m.predict(0, &idle).is_none());
        assert!(NoPredictions.predict(0, &idle).is_none());
    }

    #[test]
    fn learned_predictions_stay_within_the_bound_of_the_prior() {
        let ph = physics();
        let p = Arc::new(Predictor::new(PredictorConfig {
            physics: Some(ph),
            ..Default::default()
        }));
        // Measurements 100x the physics: the model learns it, the bound caps it at 4x.
        let samples: Vec<Sample> = (0..2000u32)
            .map(|i| {
                let f = Features {
                    input_token_length: 50 + (i * 37) % 3000,
                    num_request_running: i % 40,
                    num_request_waiting: i % 3,
                    kv_cache_percentage: f64::from(i % 90) / 100.0,
                    ..Default::default()
                };
                let prior = ph.prior(&f);
                Sample {
                    features: f,
                    ttft_ms: Some(prior.ttft_ms * 100.0),
                    tpot_ms: Some(prior.tpot_ms * 100.0),
                }
            })
            .collect();
        p.add_samples(&samples, 0.0);
        p.retrain(goodput_predictor::RetrainReason::Manual, 1.0);
        assert!(p.models().is_ready());
        let f = Features {
            input_token_length: 1000,
            num_request_running: 10,
            ..Default::default()
        };
        let prior = ph.prior(&f);
        let mut m = VariantPredictors::new(vec![Some(p)]);
        let got = m.predict(0, &f).unwrap();
        assert!(got.learned);
        assert!(
            (got.ttft_ms - 4.0 * prior.ttft_ms).abs() < 1e-6 * prior.ttft_ms,
            "{got:?} vs {prior:?}"
        );
        m.max_correction = 0.0;
        let free = m.predict(0, &f).unwrap();
        assert!(
            free.ttft_ms > 20.0 * prior.ttft_ms,
            "unbounded: {free:?} vs {prior:?}"
        );
    }
}
