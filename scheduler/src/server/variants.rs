//! The server's per-variant latency predictors, created as endpoints of new variants appear.
//!
//! A variant is (accelerator, tensor parallelism, role): endpoints with the same key share one
//! in-process [`Predictor`] (and its background trainer). With a static endpoint list every
//! variant is known at start; with Kubernetes discovery a pod of a new variant can appear at
//! any time, so the registry grows on demand. It never shrinks: a variant whose pods all left
//! keeps what its predictor learned for when they come back, and variant indices stay valid
//! for every request still in flight (the count of variants is bounded by the distinct label
//! values in the pool).
//!
//! Data flow: [`super::pool::Pool`] asks [`Variants::variant_for`] for each endpoint it adds;
//! the picker reads [`Variants::latency`]; a dispatched request keeps the
//! [`Variants::predictor`] of its variant to train it when the response completes.

use std::sync::Arc;

use goodput_core::catalog::Catalog;
use goodput_predictor::{Predictor, PredictorConfig, Trainer, VariantPhysics};

use crate::latency::VariantPredictors;
use crate::server::pool::EndpointSpec;

/// (accelerator, tp, role code): endpoints with equal keys share a predictor.
pub type VariantKey = (Option<String>, u32, u8);

/// Why an endpoint's variant cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariantError {
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("starting the predictor trainer: {0}")]
    Trainer(String),
}

/// How predictors of new variants are made.
#[derive(Debug, Clone)]
pub struct PredictorSettings {
    /// False: no predictor at all (every pick is a load-based fallback).
    pub enabled: bool,
    /// Catalog model the endpoints serve (physics priors of endpoints naming an accelerator).
    pub model: String,
    /// Seconds between scheduled retrainings.
    pub retrain_interval_s: f64,
}

/// The registry of variants and their predictors.
pub struct Variants {
    settings: PredictorSettings,
    catalog: Catalog,
    keys: Vec<VariantKey>,
    predictors: Vec<Option<Arc<Predictor>>>,
    /// What the picker reads: rebuilt (cheap: one `Arc` per variant) when a variant is added,
    /// so that a pick reads a plain slice without another lock.
    latency: VariantPredictors,
    _trainers: Vec<Trainer>,
}

impl std::fmt::Debug for Variants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variants")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Variants {
    pub fn new(settings: PredictorSettings) -> Self {
        Self {
            settings,
            catalog: Catalog::builtin(),
            keys: Vec::new(),
            predictors: Vec::new(),
            latency: VariantPredictors::default(),
            _trainers: Vec::new(),
        }
    }

    /// A registry that makes no predictors (tests, `--no-predictor`).
    pub fn without_predictions() -> Self {
        Self::new(PredictorSettings {
            enabled: false,
            model: String::new(),
            retrain_interval_s: 10.0,
        })
    }

    /// The variant index of `spec`, creating its predictor on first sight.
    pub fn variant_for(&mut self, spec: &EndpointSpec) -> Result<usize, VariantError> {
        let key = spec.variant_key();
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            return Ok(i);
        }
        let predictor = if self.settings.enabled {
            let physics = match &spec.accelerator {
                Some(a) => {
                    let model = self
                        .catalog
                        .model(&self.settings.model)
                        .map_err(|e| VariantError::Catalog(e.to_string()))?;
                    let acc = self
                        .catalog
                        .accelerator(a)
                        .map_err(|e| VariantError::Catalog(e.to_string()))?;
                    Some(VariantPhysics::new(model, acc, spec.tp))
                }
                None => None,
            };
            let p = Arc::new(Predictor::new(PredictorConfig {
                physics,
                retrain_interval_s: self.settings.retrain_interval_s,
                ..Default::default()
            }));
            let trainer = p
                .spawn_trainer(unix_now)
                .map_err(|e| VariantError::Trainer(e.to_string()))?;
            self._trainers.push(trainer);
            Some(p)
        } else {
            None
        };
        self.keys.push(key);
        self.predictors.push(predictor);
        let max_correction = self.latency.max_correction;
        self.latency = VariantPredictors::new(self.predictors.clone());
        self.latency.max_correction = max_correction;
        Ok(self.keys.len() - 1)
    }

    /// The predictions the picker reads.
    pub fn latency(&self) -> &VariantPredictors {
        &self.latency
    }

    /// The predictor of variant `v` (None without one), for training by a finished request.
    pub fn predictor(&self, v: usize) -> Option<Arc<Predictor>> {
        self.predictors.get(v).and_then(Clone::clone)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_predictor::PodType;

    fn spec(addr: &str, acc: Option<&str>, role: PodType) -> EndpointSpec {
        EndpointSpec {
            addr: addr.into(),
            role,
            accelerator: acc.map(String::from),
            tp: 1,
        }
    }

    #[test]
    fn equal_keys_share_a_variant_and_unknown_accelerators_are_errors() {
        let mut v = Variants::new(PredictorSettings {
            enabled: true,
            model: "llama-3.1-8b".into(),
            retrain_interval_s: 10.0,
        });
        let a = v
            .variant_for(&spec("a:1", Some("h100"), PodType::Monolithic))
            .unwrap();
        let b = v
            .variant_for(&spec("b:1", Some("h100"), PodType::Monolithic))
            .unwrap();
        let c = v
            .variant_for(&spec("c:1", Some("h100"), PodType::Prefill))
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(v.predictor(a).is_some());
        assert_eq!(v.latency().len(), 2);
        let e = v
            .variant_for(&spec("d:1", Some("nonesuch"), PodType::Monolithic))
            .unwrap_err();
        assert!(e.to_string().contains("nonesuch"), "{e}");
        assert_eq!(v.len(), 2, "a failed variant is not registered");
    }
}
