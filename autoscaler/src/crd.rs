//! goodput's custom resources, group `goodput.dev`, version `v1alpha1`.
//!
//! - [`ModelAutoscaler`] (namespaced): one model, its SLOs, its variants (each a way of serving
//!   the model on one accelerator pool, with the workload it scales), its policy; the status the
//!   controller writes back.
//! - [`AcceleratorPool`] (cluster-scoped): an accelerator type, how many devices it offers, the
//!   price per device-hour, where its nodes are.
//!
//! The schema rejects what it can (ranges, enums, CEL rules such as `minReplicas <=
//! maxReplicas`); [`EngineSetup::from_spec`] checks the rest (pools exist, catalog ids are known)
//! and turns a spec plus its pools into what the decision engine takes (a simulator `Scenario`
//! for the capacity model and a `GoodputConfig`), with errors that name the field.
//!
//! Data flow: YAML/JSON -> `ModelAutoscalerSpec` + `AcceleratorPoolSpec`s -> [`EngineSetup`] ->
//! `GoodputPolicy` (see `controller::reconcile`).

use std::collections::BTreeMap;

use goodput_core::{Catalog, Role, Slo};
use goodput_sim::scenario::{EngineOverrides, PoolSpec, Scenario, VariantSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::goodput::{GoodputConfig, Routing};

/// The API group of goodput's resources.
pub const GROUP: &str = "goodput.dev";

/// Most variants one ModelAutoscaler may list (bounds the CEL rules' cost).
pub const MAX_VARIANTS: usize = 16;

/// One model to autoscale: its SLOs, its variants, how to act.
// Each `printcolumn(...)` repeats `type_`; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "goodput.dev",
    version = "v1alpha1",
    kind = "ModelAutoscaler",
    namespaced,
    status = "ModelAutoscalerStatus",
    shortname = "ma",
    category = "goodput",
    derive = "PartialEq",
    doc = "Autoscales the variants of one model to its latency objectives at the lowest accelerator cost.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "Actuation",
        type_ = "string",
        json_path = ".spec.policy.actuation"
    ),
    printcolumn(
        name = "Load",
        type_ = "number",
        json_path = ".status.load.arrivalRate",
        description = "Requests per second seen"
    ),
    printcolumn(
        name = "Forecast",
        type_ = "number",
        json_path = ".status.load.forecastRate",
        description = "Requests per second forecast"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Replicas wanted over all variants"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ModelAutoscalerSpec {
    /// The served model name: the value of vLLM's `model_name` label on every series.
    #[schemars(length(min = 1, max = 253))]
    pub model: String,
    /// The model's id in goodput's catalog (its size and architecture drive the capacity
    /// model); defaults to `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub catalog_model: Option<String>,
    pub slo: SloSpec,
    /// The ways of serving the model (one accelerator pool and role each).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("variant names must be unique"))]
    pub variants: Vec<ModelVariant>,
    #[serde(default)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub metrics: MetricsSpec,
}

/// A latency objective: `percentile` per cent of requests within `targetMs`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyTarget {
    /// Target in milliseconds.
    #[schemars(range(min = 0.001))]
    pub target_ms: f64,
    /// Percentile (0-100] of requests that must meet the target.
    #[serde(default = "default_percentile")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub percentile: f64,
}

fn default_percentile() -> f64 {
    95.0
}

/// The model's latency objectives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// Time to first token.
    pub ttft: LatencyTarget,
    /// Inter-token latency (mean time per output token of a request).
    pub itl: LatencyTarget,
}

/// What a variant's replicas do.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum VariantRole {
    #[default]
    Unified,
    Prefill,
    Decode,
}

impl From<VariantRole> for Role {
    fn from(r: VariantRole) -> Self {
        match r {
            VariantRole::Unified => Role::Unified,
            VariantRole::Prefill => Role::Prefill,
            VariantRole::Decode => Role::Decode,
        }
    }
}

/// The workload a variant scales: anything with a `/scale` subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// e.g. `apps/v1` or `leaderworkerset.x-k8s.io/v1`.
    #[serde(default = "default_api_version")]
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// `Deployment`, `StatefulSet` or `LeaderWorkerSet`.
    #[serde(default = "default_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Name in the ModelAutoscaler's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_api_version() -> String {
    "apps/v1".into()
}
fn default_kind() -> String {
    "Deployment".into()
}

/// Optional vLLM engine settings of a variant (vLLM's defaults otherwise).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EngineHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_num_seqs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_num_batched_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub gpu_memory_utilization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prefix_caching: Option<bool>,
}

/// One way of serving the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct ModelVariant {
    /// Unique within the model; also the value of the metrics' variant label.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default)]
    pub role: VariantRole,
    /// Name of the AcceleratorPool the replicas run on.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,
    /// Accelerators per replica (the tensor-parallel degree), a power of two.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self in [1, 2, 4, 8, 16, 32, 64]").message("acceleratorsPerReplica must be a power of two"))]
    pub accelerators_per_replica: u32,
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default)]
    #[schemars(range(max = 10000))]
    pub min_replicas: u32,
    #[serde(default = "default_max")]
    #[schemars(range(max = 10000))]
    pub max_replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineHints>,
}

fn one() -> u32 {
    1
}
fn default_max() -> u32 {
    64
}

/// How desired replicas reach the workloads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Actuation {
    /// Export `goodput_desired_replicas` for HPA (prometheus-adapter) or KEDA's prometheus trigger.
    #[default]
    Metrics,
    /// Serve KEDA's external scaler gRPC protocol.
    Keda,
    /// Patch the target's `/scale` subresource directly.
    Scale,
}

impl Actuation {
    pub fn as_str(self) -> &'static str {
        match self {
            Actuation::Metrics => "metrics",
            Actuation::Keda => "keda",
            Actuation::Scale => "scale",
        }
    }
}

/// When and how the autoscaler acts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub actuation: Actuation,
    /// Seconds between decisions.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 5, max = 3600))]
    pub interval_seconds: u32,
    /// Seconds from a scale-up decision to a ready replica (the forecast horizon adds it).
    #[serde(default = "default_startup")]
    #[schemars(range(max = 3600))]
    pub startup_seconds: u32,
    /// Scale-down takes the largest plan over this many seconds.
    #[serde(default = "default_stabilisation")]
    #[schemars(range(max = 86400))]
    pub scale_down_stabilization_seconds: u32,
    /// Most of the fleet's capacity, in percent, that may go within one stabilisation window
    /// (at least one replica's worth; 100: no limit), as an HPA `Percent` scale-down policy:
    /// traffic that pauses for a few minutes and returns does not take the fleet with it.
    #[serde(default = "default_scale_down_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_scale_down_percent: u32,
    /// Allow zero replicas over all variants after a stabilisation window without requests.
    /// Takes effect only with `metrics.gateway` set: a fleet at zero shows no demand in the
    /// engines' metrics, so the requests goodput's scheduler holds for lack of an endpoint are
    /// what wakes it. Without it one replica is kept.
    #[serde(default)]
    pub scale_to_zero: bool,
    /// Slowest variant a plan may mix in, as a share of the fastest planned variant's
    /// sustainable requests per second per replica. Routers that balance outstanding requests
    /// (least-requests, a queue-length scorer alone) give a much slower replica about as many
    /// concurrent requests as a fast one, so it misses the SLO; 0 mixes freely (for a router
    /// that weighs replicas by predicted latency).
    #[serde(default = "default_mixed_speed_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_mixed_speed_ratio: f64,
    /// How the router in front of the model spreads requests, which decides what a mix of
    /// variants carries: `latency-aware` (goodput's scheduler, llm-d's endpoint picker) or
    /// `count-balanced` (least outstanding requests or round-robin, blind to speed).
    #[serde(default)]
    pub routing: RoutingSpec,
}

/// The router in front of a model's replicas, as the optimiser models it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingSpec {
    /// By predicted latency or capacity-relative load: each variant of a mix carries its own
    /// rate.
    #[default]
    LatencyAware,
    /// By counts of outstanding requests, or round-robin: every replica holds about as many
    /// requests, so the variant that reaches its SLO at the fewest bounds what the others carry.
    CountBalanced,
}

impl From<RoutingSpec> for Routing {
    fn from(r: RoutingSpec) -> Self {
        match r {
            RoutingSpec::LatencyAware => Routing::LatencyAware,
            RoutingSpec::CountBalanced => Routing::CountBalanced,
        }
    }
}

fn default_interval() -> u32 {
    30
}
fn default_startup() -> u32 {
    240
}
fn default_stabilisation() -> u32 {
    300
}
fn default_scale_down_percent() -> u32 {
    (GoodputConfig::default().max_scale_down_share * 100.0).round() as u32
}
fn default_mixed_speed_ratio() -> f64 {
    GoodputConfig::default().min_speed_ratio
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            actuation: Actuation::Metrics,
            interval_seconds: default_interval(),
            startup_seconds: default_startup(),
            scale_down_stabilization_seconds: default_stabilisation(),
            max_scale_down_percent: default_scale_down_percent(),
            scale_to_zero: false,
            min_mixed_speed_ratio: default_mixed_speed_ratio(),
            routing: RoutingSpec::default(),
        }
    }
}

/// Where the model's metrics are and how they are labelled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Label carrying the variant name on vLLM's series (set by relabelling a pod label).
    #[serde(default = "default_variant_label")]
    #[schemars(regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub variant_label: String,
    /// Window of `rate()` and histogram quantiles, a PromQL duration.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub window: String,
    /// Extra label matchers (e.g. `namespace: llm`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matchers: BTreeMap<String, String>,
    /// Where goodput's scheduler in front of this model exports its series: the requests it
    /// holds or turns away for lack of an endpoint are demand the engines cannot show, the
    /// signal that wakes a fleet scaled to zero (`policy.scaleToZero`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayMetricsSpec>,
}

/// The scheduler's series for one model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayMetricsSpec {
    /// Label matchers selecting the scheduler's `goodput_scheduler_*` series (e.g.
    /// `job: goodput-scheduler`, `namespace: llm`). Empty selects every scheduler's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matchers: BTreeMap<String, String>,
}

fn default_variant_label() -> String {
    "variant".into()
}
fn default_window() -> String {
    "1m".into()
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            variant_label: default_variant_label(),
            window: default_window(),
            matchers: BTreeMap::new(),
            gateway: None,
        }
    }
}

/// What the controller last saw and decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelAutoscalerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// MetricsAvailable, Fitted, CapacityLimited, Ready.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStatus>,
    /// Replicas wanted over all variants.
    #[serde(default)]
    pub desired_replicas: u32,
    /// USD per hour of the desired fleet.
    #[serde(default)]
    pub cost_per_hour: f64,
    #[serde(default)]
    pub variants: Vec<VariantStatus>,
    /// Why the last decision is what it is.
    #[serde(default)]
    pub reason: String,
    /// RFC 3339 time of the last decision on fresh metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<String>,
}

/// The load seen and forecast.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    /// Requests per second seen (completions plus backlog).
    pub arrival_rate: f64,
    /// Requests per second forecast one start-up time plus one interval ahead, with margin.
    pub forecast_rate: f64,
    pub mean_input_tokens: f64,
    pub mean_output_tokens: f64,
}

/// One variant's replicas and predicted latency.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    pub name: String,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// Predicted TTFT at the desired fleet's load, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_ttft_ms: Option<f64>,
    /// Predicted inter-token latency at the desired fleet's load, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_itl_ms: Option<f64>,
    #[serde(default)]
    pub reason: String,
}

/// A pool of one accelerator type that variants draw devices from.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "goodput.dev",
    version = "v1alpha1",
    kind = "AcceleratorPool",
    shortname = "ap",
    category = "goodput",
    derive = "PartialEq",
    doc = "A pool of accelerators of one type that goodput's variants draw devices from.",
    printcolumn(
        name = "Accelerator",
        type_ = "string",
        json_path = ".spec.acceleratorType"
    ),
    printcolumn(name = "Devices", type_ = "integer", json_path = ".spec.devices"),
    printcolumn(
        name = "Price",
        type_ = "number",
        json_path = ".spec.pricePerDeviceHour",
        description = "USD per device-hour"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorPoolSpec {
    /// Accelerator id in goodput's catalog (h100, a100, l40s, tpu-v5e, ...).
    #[schemars(length(min = 1, max = 63))]
    pub accelerator_type: String,
    /// Devices the pool can offer at most, shared by every ModelAutoscaler whose variants name
    /// it (each model is planned within what the others hold).
    pub devices: u32,
    /// USD per device-hour; the catalog's list price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub price_per_device_hour: Option<f64>,
    /// Node labels of the pool's nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// Both CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in [ModelAutoscaler::crd(), AcceleratorPool::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

/// A spec the engine cannot run, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field}: {message}")]
    Field { field: String, message: String },
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// What the decision engine needs for one ModelAutoscaler.
#[derive(Debug, Clone)]
pub struct EngineSetup {
    /// Pools and variants as the simulator's scenario (the capacity model probes its engines).
    pub scenario: Scenario,
    pub config: GoodputConfig,
    /// Per variant: (accelerator type, pool name).
    pub accelerators: Vec<(String, String)>,
}

impl EngineSetup {
    /// Checks a spec against its pools and the catalog and builds the engine's inputs.
    /// `pools` maps AcceleratorPool names to their specs.
    pub fn from_spec(
        spec: &ModelAutoscalerSpec,
        pools: &BTreeMap<String, AcceleratorPoolSpec>,
        catalog: &Catalog,
    ) -> Result<Self, SpecError> {
        let catalog_model = spec.catalog_model.as_deref().unwrap_or(&spec.model);
        if spec.model.trim().is_empty() {
            return Err(field_err("model", "must not be empty"));
        }
        catalog.model(catalog_model).map_err(|e| {
            field_err(
                if spec.catalog_model.is_some() {
                    "catalogModel"
                } else {
                    "model"
                },
                format!("{e} (set spec.catalogModel to a catalog model id)"),
            )
        })?;
        for (name, t) in [("ttft", spec.slo.ttft), ("itl", spec.slo.itl)] {
            if !(t.target_ms.is_finite() && t.target_ms > 0.0) {
                return Err(field_err(
                    format!("slo.{name}.targetMs"),
                    format!(
                        "must be a positive number of milliseconds, got {}",
                        t.target_ms
                    ),
                ));
            }
            if !(t.percentile > 0.0 && t.percentile <= 100.0) {
                return Err(field_err(
                    format!("slo.{name}.percentile"),
                    format!("must be in (0, 100], got {}", t.percentile),
                ));
            }
        }
        if spec.variants.is_empty() {
            return Err(field_err("variants", "at least one variant is needed"));
        }
        if spec.variants.len() > MAX_VARIANTS {
            return Err(field_err(
                "variants",
                format!(
                    "at most {MAX_VARIANTS} variants, got {}",
                    spec.variants.len()
                ),
            ));
        }
        if spec.policy.interval_seconds == 0 {
            return Err(field_err("policy.intervalSeconds", "must be at least 1"));
        }
        let percent = spec.policy.max_scale_down_percent;
        if !(1..=100).contains(&percent) {
            return Err(field_err(
                "policy.maxScaleDownPercent",
                format!("must be between 1 and 100, got {percent}"),
            ));
        }
        let ratio = spec.policy.min_mixed_speed_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(field_err(
                "policy.minMixedSpeedRatio",
                format!("must be between 0 and 1, got {ratio}"),
            ));
        }
        let mut scope = crate::metrics::Scope::new(spec.model.clone());
        scope.variant_label = spec.metrics.variant_label.clone();
        scope.window = spec.metrics.window.clone();
        scope
            .validate()
            .map_err(|e| field_err("metrics", e.to_string()))?;

        let mut pool_specs: Vec<PoolSpec> = Vec::new();
        let mut variants = Vec::new();
        let mut accelerators = Vec::new();
        for (i, v) in spec.variants.iter().enumerate() {
            let at = format!("variants[{i}]");
            if v.name.is_empty() {
                return Err(field_err(format!("{at}.name"), "must not be empty"));
            }
            if spec.variants[..i].iter().any(|w| w.name == v.name) {
                return Err(field_err(
                    format!("{at}.name"),
                    format!("`{}` is used by an earlier variant", v.name),
                ));
            }
            if v.min_replicas > v.max_replicas {
                return Err(field_err(
                    format!("{at}.minReplicas"),
                    format!("{} exceeds maxReplicas {}", v.min_replicas, v.max_replicas),
                ));
            }
            let tp = v.accelerators_per_replica;
            if tp == 0 || !tp.is_power_of_two() {
                return Err(field_err(
                    format!("{at}.acceleratorsPerReplica"),
                    format!("must be a power of two, got {tp}"),
                ));
            }
            if v.scale_target_ref.name.is_empty() {
                return Err(field_err(
                    format!("{at}.scaleTargetRef.name"),
                    "must not be empty",
                ));
            }
            let pool = pools.get(&v.pool).ok_or_else(|| {
                field_err(
                    format!("{at}.pool"),
                    format!("no AcceleratorPool named `{}`", v.pool),
                )
            })?;
            catalog.accelerator(&pool.accelerator_type).map_err(|e| {
                field_err(
                    format!("{at}.pool"),
                    format!("AcceleratorPool `{}`: {e}", v.pool),
                )
            })?;
            // The simulator keys pools by accelerator type: two pools of one type are one pool
            // to the engine, with their devices added.
            match pool_specs
                .iter_mut()
                .find(|p| p.accelerator == pool.accelerator_type)
            {
                Some(p) => {
                    if !accelerators
                        .iter()
                        .any(|(_, name): &(String, String)| name == &v.pool)
                    {
                        p.capacity += pool.devices;
                    }
                }
                None => pool_specs.push(PoolSpec {
                    accelerator: pool.accelerator_type.clone(),
                    capacity: pool.devices,
                    startup_s: spec.policy.startup_seconds as f64,
                    price_per_hour: pool.price_per_device_hour,
                }),
            }
            accelerators.push((pool.accelerator_type.clone(), v.pool.clone()));
            let hints = v.engine.unwrap_or_default();
            variants.push(VariantSpec {
                name: v.name.clone(),
                accelerator: pool.accelerator_type.clone(),
                tp,
                role: v.role.into(),
                replicas: v.min_replicas,
                min_replicas: v.min_replicas,
                max_replicas: v.max_replicas,
                engine: EngineOverrides {
                    max_num_seqs: hints.max_num_seqs,
                    max_num_batched_tokens: hints.max_num_batched_tokens,
                    gpu_memory_utilization: hints.gpu_memory_utilization,
                    enable_prefix_caching: hints.enable_prefix_caching,
                },
            });
        }
        let slo = Slo {
            ttft_ms: spec.slo.ttft.target_ms,
            itl_ms: spec.slo.itl.target_ms,
            // The engine takes one percentile for both targets: the stricter one.
            percentile: spec.slo.ttft.percentile.max(spec.slo.itl.percentile),
        };
        let mut scenario = Scenario::builtin().map_err(|e| field_err("", e.to_string()))?;
        scenario.name = spec.model.clone();
        scenario.model = catalog_model.to_string();
        scenario.slo = slo;
        scenario.pools = pool_specs;
        scenario.variants = variants;
        scenario.autoscale_interval_s = spec.policy.interval_seconds as f64;
        scenario
            .validate(catalog)
            .map_err(|e| field_err("variants", e.to_string()))?;
        let config = GoodputConfig {
            scale_down_window_s: spec.policy.scale_down_stabilization_seconds as f64,
            max_scale_down_share: f64::from(spec.policy.max_scale_down_percent) / 100.0,
            interval_s: spec.policy.interval_seconds as f64,
            min_total_replicas: if spec.policy.scale_to_zero { 0 } else { 1 },
            min_speed_ratio: spec.policy.min_mixed_speed_ratio,
            routing: spec.policy.routing.into(),
            slo: Some(slo),
            ..GoodputConfig::default()
        };
        Ok(Self {
            scenario,
            config,
            accelerators,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_spec() -> ModelAutoscalerSpec {
        serde_saphyr::from_str(
            r#"
model: llama-3.1-8b
slo:
  ttft: { targetMs: 1000, percentile: 95 }
  itl: { targetMs: 60 }
variants:
  - name: h100
    pool: h100-pool
    scaleTargetRef: { name: llama-h100 }
    maxReplicas: 8
  - name: l40s
    pool: l40s-pool
    scaleTargetRef: { name: llama-l40s }
    minReplicas: 1
    maxReplicas: 16
policy: { actuation: scale, intervalSeconds: 15 }
"#,
        )
        .unwrap()
    }

    fn pools() -> BTreeMap<String, AcceleratorPoolSpec> {
        let p = |acc: &str, devices| AcceleratorPoolSpec {
            accelerator_type: acc.into(),
            devices,
            price_per_device_hour: None,
            node_selector: BTreeMap::new(),
        };
        [
            ("h100-pool".to_string(), p("h100", 8)),
            ("l40s-pool".to_string(), p("l40s", 16)),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn defaults_fill_in_and_the_spec_converts() {
        let spec = sample_spec();
        assert_eq!(spec.variants[0].accelerators_per_replica, 1);
        assert_eq!(spec.variants[0].scale_target_ref.kind, "Deployment");
        assert_eq!(spec.variants[0].scale_target_ref.api_version, "apps/v1");
        assert_eq!(spec.slo.itl.percentile, 95.0);
        assert_eq!(spec.policy.actuation, Actuation::Scale);
        assert_eq!(spec.metrics.variant_label, "variant");
        let setup = EngineSetup::from_spec(&spec, &pools(), &Catalog::builtin()).unwrap();
        assert_eq!(setup.scenario.variants.len(), 2);
        assert_eq!(setup.scenario.pools.len(), 2);
        assert_eq!(setup.scenario.pools[1].capacity, 16);
        assert_eq!(setup.scenario.variants[1].min_replicas, 1);
        assert_eq!(setup.config.interval_s, 15.0);
        assert_eq!(setup.config.min_total_replicas, 1);
        assert_eq!(setup.config.min_speed_ratio, 0.1);
        assert_eq!(spec.policy.max_scale_down_percent, 40);
        assert_eq!(setup.config.max_scale_down_share, 0.4);
        assert_eq!(setup.config.routing, Routing::LatencyAware);
        assert_eq!(setup.config.slo.map(|s| s.itl_ms), Some(60.0));
        assert_eq!(setup.accelerators[1], ("l40s".into(), "l40s-pool".into()));
    }

    #[test]
    fn the_routing_decides_how_mixes_are_planned() {
        let with = |routing: &str| -> Result<ModelAutoscalerSpec, String> {
            let text = format!(
                "model: m\nslo: {{ ttft: {{ targetMs: 1000 }}, itl: {{ targetMs: 60 }} }}\n\
                 variants: []\npolicy: {{ routing: {routing} }}\n"
            );
            serde_saphyr::from_str(&text).map_err(|e| e.to_string())
        };
        let spec = with("count-balanced").unwrap();
        assert_eq!(spec.policy.routing, RoutingSpec::CountBalanced);
        assert_eq!(Routing::from(spec.policy.routing), Routing::CountBalanced);
        assert_eq!(
            Routing::from(with("latency-aware").unwrap().policy.routing),
            Routing::LatencyAware
        );
        // A misspelt value is refused, naming what it got.
        let err = with("least-requests").unwrap_err();
        assert!(err.contains("least-requests"), "{err}");
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cat = Catalog::builtin();
        let check = |edit: &dyn Fn(&mut ModelAutoscalerSpec), field: &str| {
            let mut s = sample_spec();
            edit(&mut s);
            let err = EngineSetup::from_spec(&s, &pools(), &cat).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("spec.{field}")),
                "{err}"
            );
        };
        check(
            &|s| s.variants[1].pool = "missing".into(),
            "variants[1].pool",
        );
        check(
            &|s| s.policy.min_mixed_speed_ratio = 1.5,
            "policy.minMixedSpeedRatio",
        );
        check(
            &|s| s.policy.min_mixed_speed_ratio = f64::NAN,
            "policy.minMixedSpeedRatio",
        );
        check(
            &|s| s.policy.max_scale_down_percent = 0,
            "policy.maxScaleDownPercent",
        );
        check(
            &|s| s.policy.max_scale_down_percent = 101,
            "policy.maxScaleDownPercent",
        );
        check(
            &|s| s.variants[0].min_replicas = 9,
            "variants[0].minReplicas",
        );
        check(
            &|s| s.variants[0].accelerators_per_replica = 3,
            "variants[0].acceleratorsPerReplica",
        );
        check(&|s| s.variants[1].name = "h100".into(), "variants[1].name");
        check(&|s| s.slo.ttft.target_ms = 0.0, "slo.ttft.targetMs");
        check(&|s| s.slo.itl.percentile = 120.0, "slo.itl.percentile");
        check(&|s| s.model = "no-such-model".into(), "model");
        check(&|s| s.variants.clear(), "variants");
        check(&|s| s.metrics.window = "1 minute".into(), "metrics");
        let mut bad_pool = pools();
        if let Some(p) = bad_pool.get_mut("h100-pool") {
            p.accelerator_type = "abacus".into();
        }
        let err = EngineSetup::from_spec(&sample_spec(), &bad_pool, &cat).unwrap_err();
        assert!(err.to_string().contains("variants[0].pool"), "{err}");
    }

    #[test]
    fn crds_carry_printer_columns_status_and_cel_rules() {
        let yaml = crds_yaml().unwrap();
        assert_eq!(yaml.matches("---\n").count(), 2);
        for needle in [
            "kind: CustomResourceDefinition",
            "name: modelautoscalers.goodput.dev",
            "name: acceleratorpools.goodput.dev",
            "scope: Namespaced",
            "scope: Cluster",
            "status: {}",
            "x-kubernetes-validations",
            "self.minReplicas <= self.maxReplicas",
            "additionalPrinterColumns",
            ".status.load.arrivalRate",
        ] {
            assert!(yaml.contains(needle), "missing `{needle}`");
        }
    }
}
