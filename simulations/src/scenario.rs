//! Scenarios: the cluster a simulation runs (accelerator pools, the model, its variants and SLOs)
//! and the workload it serves, read from YAML or taken from the built-in default.
//!
//! Everything is validated up front ([`Scenario::validate`]) so that a bad file fails with a
//! message naming the field, before any simulated second passes.

use std::path::Path;

use goodput_core::catalog::EngineLimits;
use goodput_core::{Catalog, Role, Slo};
use serde::{Deserialize, Serialize};

use crate::engine::StepMode;
use crate::workload::generate::GeneratorSpec;

/// Errors from reading or checking a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path} is not valid YAML for a scenario: {message}")]
    Parse { path: String, message: String },
    #[error("scenario: {0}")]
    Invalid(String),
    #[error("scenario catalog: {0}")]
    Catalog(#[from] goodput_core::CatalogError),
}

/// A pool of one accelerator type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Catalog accelerator id.
    pub accelerator: String,
    /// Devices the pool can offer at most.
    pub capacity: u32,
    /// Seconds from a scale-up decision to a ready replica.
    #[serde(default = "default_startup_s")]
    pub startup_s: f64,
    /// Overrides the catalog price, USD per device-hour.
    #[serde(default)]
    pub price_per_hour: Option<f64>,
}

fn default_startup_s() -> f64 {
    240.0
}

/// Overrides of vLLM's engine defaults for one variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOverrides {
    pub max_num_seqs: Option<u32>,
    pub max_num_batched_tokens: Option<u32>,
    pub gpu_memory_utilization: Option<f64>,
    pub enable_prefix_caching: Option<bool>,
}

/// One way of serving the model: an accelerator type, a TP degree and a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    pub accelerator: String,
    #[serde(default = "one")]
    pub tp: u32,
    #[serde(default = "unified")]
    pub role: Role,
    /// Replicas at the start (ready at t = 0).
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "default_max")]
    pub max_replicas: u32,
    #[serde(default)]
    pub engine: EngineOverrides,
}

fn one() -> u32 {
    1
}
fn unified() -> Role {
    Role::Unified
}
fn default_max() -> u32 {
    64
}

/// Where the requests come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum WorkloadSpec {
    /// A trace file (Azure CSV or Mooncake JSONL), relative paths from the scenario's folder.
    Trace {
        path: String,
        /// Multiply the arrival rate by compressing time (1 = as recorded).
        #[serde(default)]
        rate_scale: Option<f64>,
        /// Replay only the first this many seconds.
        #[serde(default)]
        max_duration_s: Option<f64>,
    },
    /// A built-in generator.
    Generator(GeneratorSpec),
}

/// KV-cache hand-off between prefill and decode replicas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvTransferSpec {
    /// Per-transfer setup, ms (RDMA: 0.5-2 ms).
    pub setup_ms: f64,
    /// Fraction of the NIC's line rate achieved.
    pub efficiency: f64,
}

impl Default for KvTransferSpec {
    fn default() -> Self {
        Self {
            setup_ms: 1.0,
            efficiency: 0.7,
        }
    }
}

/// What the autoscaler sees, like Prometheus scraping vLLM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationSpec {
    /// Scrape interval, seconds.
    pub scrape_interval_s: f64,
    /// Delay before a scrape is visible to queries (ingestion, rule evaluation), seconds.
    pub lag_s: f64,
    /// Window of `rate()` and `histogram_quantile()`, seconds.
    pub window_s: f64,
}

impl Default for ObservationSpec {
    fn default() -> Self {
        Self {
            scrape_interval_s: 15.0,
            lag_s: 15.0,
            window_s: 60.0,
        }
    }
}

/// A complete simulation set-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Catalog model id.
    pub model: String,
    pub slo: Slo,
    pub pools: Vec<PoolSpec>,
    pub variants: Vec<VariantSpec>,
    pub workload: WorkloadSpec,
    /// Routing policy: `round-robin` or `least-loaded`.
    #[serde(default = "default_router")]
    pub router: String,
    /// Seconds after the last arrival to let in-flight requests finish.
    #[serde(default = "default_drain")]
    pub drain_s: f64,
    #[serde(default)]
    pub kv_transfer: KvTransferSpec,
    #[serde(default)]
    pub observation: ObservationSpec,
    /// Autoscaler decision interval, seconds.
    #[serde(default = "default_interval")]
    pub autoscale_interval_s: f64,
    /// Time-series sample interval, seconds (0 = about 300 samples over the run).
    #[serde(default)]
    pub sample_interval_s: f64,
    #[serde(default = "default_mode")]
    pub mode: StepMode,
    /// Extra catalog entries or price overrides, inline YAML.
    #[serde(default)]
    pub catalog: Option<String>,
}

fn default_router() -> String {
    "round-robin".into()
}
fn default_drain() -> f64 {
    600.0
}
fn default_interval() -> f64 {
    30.0
}
fn default_mode() -> StepMode {
    StepMode::EventJumping
}

/// The built-in scenario: Llama-3.1-8B on a mixed H100 / A100 / L40S / TPU v5e fleet under a
/// bursty chat workload with the Azure-conversation length profile, 10 minutes.
pub const DEFAULT_SCENARIO: &str = r#"
name: heterogeneous-llama-8b
model: llama-3.1-8b
slo: { ttft_ms: 1000, itl_ms: 60, percentile: 95 }
pools:
  - { accelerator: h100, capacity: 8 }
  - { accelerator: a100, capacity: 8 }
  - { accelerator: l40s, capacity: 16 }
  - { accelerator: tpu-v5e, capacity: 32 }
variants:
  - { name: h100-tp1, accelerator: h100, tp: 1, replicas: 2, max_replicas: 8 }
  - { name: a100-tp1, accelerator: a100, tp: 1, replicas: 2, max_replicas: 8 }
  - { name: l40s-tp1, accelerator: l40s, tp: 1, replicas: 2, max_replicas: 16 }
  - { name: v5e-tp4, accelerator: tpu-v5e, tp: 4, replicas: 2, max_replicas: 8 }
workload:
  generator:
    rate: 12
    duration_s: 600
    arrival: { gamma: { cv: 2.0 } }
    envelope: { steps: [[0, 1.0], [200, 1.6], [400, 0.8]] }
    lengths: azure-conv
    seed: 7
router: least-loaded
"#;

impl Scenario {
    /// The built-in default scenario.
    pub fn builtin() -> Result<Self, ScenarioError> {
        Self::from_yaml(DEFAULT_SCENARIO, "<built-in>")
    }

    /// Parses a scenario from YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        serde_saphyr::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })
    }

    /// Reads a scenario file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The catalog with this scenario's additions.
    pub fn catalog(&self) -> Result<Catalog, ScenarioError> {
        let mut c = Catalog::builtin();
        if let Some(extra) = &self.catalog {
            c.extend_from_yaml(extra)?;
        }
        Ok(c)
    }

    /// Engine limits of a variant: vLLM's defaults for its accelerator plus overrides.
    pub fn engine_limits(
        &self,
        v: &VariantSpec,
        catalog: &Catalog,
    ) -> Result<EngineLimits, ScenarioError> {
        let acc = catalog.accelerator(&v.accelerator)?;
        let mut l = EngineLimits::vllm_defaults(acc);
        if let Some(x) = v.engine.max_num_seqs {
            l.max_num_seqs = x;
        }
        if let Some(x) = v.engine.max_num_batched_tokens {
            l.max_num_batched_tokens = x;
        }
        if let Some(x) = v.engine.gpu_memory_utilization {
            l.gpu_memory_utilization = x;
        }
        if let Some(x) = v.engine.enable_prefix_caching {
            l.enable_prefix_caching = x;
        }
        Ok(l)
    }

    /// Checks every cross-reference and range; the message names the offending field.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        catalog.model(&self.model)?;
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if !pos(self.slo.ttft_ms) || !pos(self.slo.itl_ms) {
            return bad("slo.ttft_ms and slo.itl_ms must be positive".into());
        }
        if !(self.slo.percentile > 0.0 && self.slo.percentile <= 100.0) {
            return bad(format!(
                "slo.percentile must be in (0, 100], got {}",
                self.slo.percentile
            ));
        }
        if self.pools.is_empty() {
            return bad("pools: at least one pool is needed".into());
        }
        for (i, p) in self.pools.iter().enumerate() {
            catalog.accelerator(&p.accelerator)?;
            if !(p.startup_s.is_finite() && p.startup_s >= 0.0) {
                return bad(format!("pools[{i}].startup_s must be >= 0"));
            }
            if let Some(price) = p.price_per_hour
                && !(price.is_finite() && price >= 0.0)
            {
                return bad(format!("pools[{i}].price_per_hour must be >= 0"));
            }
            if self.pools[..i]
                .iter()
                .any(|q| q.accelerator == p.accelerator)
            {
                return bad(format!("pools[{i}]: a second pool of `{}`", p.accelerator));
            }
        }
        if self.variants.is_empty() {
            return bad("variants: at least one variant is needed".into());
        }
        let model = catalog.model(&self.model)?;
        for (i, v) in self.variants.iter().enumerate() {
            let at = format!("variants[{i}] ({})", v.name);
            if v.name.is_empty() || self.variants[..i].iter().any(|w| w.name == v.name) {
                return bad(format!("{at}: names must be non-empty and unique"));
            }
            if !self.pools.iter().any(|p| p.accelerator == v.accelerator) {
                return bad(format!("{at}: no pool of accelerator `{}`", v.accelerator));
            }
            if v.tp == 0 || !v.tp.is_power_of_two() {
                return bad(format!("{at}: tp must be a power of two, got {}", v.tp));
            }
            if v.min_replicas > v.max_replicas || v.replicas > v.max_replicas {
                return bad(format!(
                    "{at}: need min_replicas <= replicas <= max_replicas"
                ));
            }
            let limits = self.engine_limits(v, catalog)?;
            if limits.max_num_seqs == 0 || limits.max_num_batched_tokens == 0 {
                return bad(format!("{at}: engine limits must be positive"));
            }
            if !(limits.gpu_memory_utilization > 0.0 && limits.gpu_memory_utilization <= 1.0) {
                return bad(format!(
                    "{at}: engine.gpu_memory_utilization must be in (0, 1]"
                ));
            }
            let acc = catalog.accelerator(&v.accelerator)?;
            let kv = goodput_core::perf::kv_capacity_tokens(model, acc, v.tp, &limits);
            if kv < limits.block_size as u64 * 16 {
                return bad(format!(
                    "{at}: {} does not fit on {} x {} (KV capacity {kv} tokens)",
                    self.model, v.tp, v.accelerator
                ));
            }
        }
        let has = |r: Role| self.variants.iter().any(|v| v.role == r);
        if has(Role::Prefill) != has(Role::Decode) {
            return bad("variants: prefill and decode variants must come together".into());
        }
        if !has(Role::Unified) && !has(Role::Prefill) {
            return bad("variants: no variant can serve requests".into());
        }
        for (name, x) in [
            ("drain_s", self.drain_s),
            ("autoscale_interval_s", self.autoscale_interval_s),
            (
                "observation.scrape_interval_s",
                self.observation.scrape_interval_s,
            ),
            ("observation.window_s", self.observation.window_s),
            ("kv_transfer.efficiency", self.kv_transfer.efficiency),
        ] {
            if !pos(x) {
                return bad(format!("{name} must be positive, got {x}"));
            }
        }
        if !(self.observation.lag_s >= 0.0 && self.kv_transfer.setup_ms >= 0.0)
            || self.sample_interval_s < 0.0
        {
            return bad(
                "observation.lag_s, kv_transfer.setup_ms and sample_interval_s must be >= 0".into(),
            );
        }
        if !matches!(self.router.as_str(), "round-robin" | "least-loaded") {
            return bad(format!(
                "router `{}` is unknown (round-robin, least-loaded)",
                self.router
            ));
        }
        Ok(())
    }
}
