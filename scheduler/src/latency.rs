//! Where predicted TTFT/TPOT come from: the in-process `goodput_predictor::Predictor` of each
//! variant, with the variant's physics prior standing in until a model has been fitted.
//!
//! Data flow: the picker asks [`LatencyModel::predict`] for a candidate's point predictions;
//! `None` means "no prediction" (no predictor for the variant, or the predictor is unavailable)
//! and sends the picker to its load-based fallback. Training samples go the other way through
//! [`LatencyModel::observe`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use goodput_predictor::{Features, Predictor, Sample};

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
#[derive(Debug, Default)]
pub struct VariantPredictors {
    predictors: Vec<Option<Arc<Predictor>>>,
    /// Set when the predictor must not be used (e.g. it failed or was switched off): the
    /// picker then runs on its load-based fallback.
    disabled: AtomicBool,
}

impl VariantPredictors {
    pub fn new(predictors: Vec<Option<Arc<Predictor>>>) -> Self {
        Self {
            predictors,
            disabled: AtomicBool::new(false),
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
        // The prior is only computed when it is the answer (it costs as much as a model).
        let prior = || models.physics.as_ref().map(|ph| ph.prior(f));
        if models.is_ready() {
            let (ttft, tpot) = models.predict_at(f, None);
            let tpot = if models.tpot.is_some() {
                Some(tpot)
            } else {
                prior().map(|p| p.tpot_ms)
            };
            (ttft.is_finite() && ttft >= 0.0).then_some(Predicted {
                ttft_ms: ttft,
                tpot_ms: tpot.filter(|t| t.is_finite()),
                learned: true,
            })
        } else {
            prior().map(|p| Predicted {
                ttft_ms: p.ttft_ms,
                tpot_ms: Some(p.tpot_ms),
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
}
