//! One capacity model shared by every ModelAutoscaler the controller runs.
//!
//! The engine's [`EngineCapacity`] probes the vLLM engine model (a bisection over simulated
//! runs) and caches per (variant, shape). A cluster usually has many ModelAutoscalers whose
//! variants are the same model on the same accelerators at the same SLO; [`SharedCapacity`]
//! keys each variant by everything its probe depends on (engine parameters and SLO), so a probe
//! is paid once per distinct variant cluster-wide, and a changed spec keeps what it had learnt.
//!
//! Data flow: policy asks `max_rate(variant, shape)` (or `concurrency`) -> key of that variant
//! -> the cached `EngineCapacity` for the key (created on first use) -> its own shape cache or
//! a probe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use goodput_core::Slo;
use goodput_sim::engine::EngineParams;

use crate::capacity::{CapacityModel, EngineCapacity, LoadShape};
use crate::compare::PROBE_QUANTILE;

/// The process-wide cache (clone it to share).
#[derive(Clone, Default)]
pub struct CapacityCache(Arc<Mutex<HashMap<String, EngineCapacity>>>);

impl CapacityCache {
    /// Distinct variant configurations probed so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A model's variants as the capacity model sees them, answered from the shared cache.
pub struct SharedCapacity {
    cache: CapacityCache,
    engines: Vec<EngineParams>,
    keys: Vec<String>,
    slo: Slo,
}

impl SharedCapacity {
    /// Variants' engines in spec order, all at `slo`.
    pub fn new(cache: CapacityCache, engines: Vec<EngineParams>, slo: Slo) -> Self {
        // Debug output covers every field the probe reads (step costs, limits, KV capacity,
        // role, step mode, context length) and the SLO.
        let keys = engines.iter().map(|e| format!("{e:?}|{slo:?}")).collect();
        Self {
            cache,
            engines,
            keys,
            slo,
        }
    }
}

impl SharedCapacity {
    /// Runs `ask` on the shared model of `variant`'s key (created on first use).
    fn with_model(&self, variant: usize, ask: impl FnOnce(&mut EngineCapacity) -> f64) -> f64 {
        let (Some(key), Some(engine)) = (self.keys.get(variant), self.engines.get(variant)) else {
            return 0.0;
        };
        let mut map = self.cache.0.lock().unwrap_or_else(|p| p.into_inner());
        ask(map
            .entry(key.clone())
            .or_insert_with(|| EngineCapacity::new(vec![engine.clone()], self.slo, PROBE_QUANTILE)))
    }
}

impl CapacityModel for SharedCapacity {
    fn max_rate(&mut self, variant: usize, shape: &LoadShape) -> f64 {
        self.with_model(variant, |m| m.max_rate(0, shape))
    }

    fn concurrency(&mut self, variant: usize, shape: &LoadShape) -> f64 {
        self.with_model(variant, |m| m.concurrency(0, shape))
    }
}
