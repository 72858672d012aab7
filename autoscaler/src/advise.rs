//! `goodput autoscaler advise`: the controller's decision from a real Prometheus, without a
//! cluster. The config file is a ModelAutoscaler spec plus the AcceleratorPools it names; each
//! step collects the model's metrics through the PromQL module, runs the same reconcile as the
//! controller (current replicas are the replicas Prometheus sees reporting), and returns the
//! outcome; [`render`] prints it per variant (current, desired, predicted latency, why).
//!
//! Data flow: config YAML -> [`AdviseConfig`]; every interval: Prometheus -> `Observation` ->
//! `Reconciler` -> `Outcome` -> table on stdout and, with `--serve`, the goodput_* gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use goodput_core::Catalog;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use tracing::Instrument;

use crate::controller::reconcile::{Outcome, Reconciler, ScaleState, Snapshot};
use crate::controller::shared_capacity::CapacityCache;
use crate::crd::{AcceleratorPoolSpec, ModelAutoscalerSpec, ModelAutoscalerStatus};
use crate::export::ControllerMetrics;
use crate::metrics::{Grouping, PromQuery, Scope, collect, collect_gateway};

/// The advise config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdviseConfig {
    /// Names the model in output and metric labels (the ModelAutoscaler's name in a cluster).
    #[serde(default = "default_name")]
    pub name: String,
    /// Namespace label of the exported metrics.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The ModelAutoscaler spec, exactly as in the custom resource.
    pub spec: ModelAutoscalerSpec,
    /// AcceleratorPool specs by name.
    pub pools: BTreeMap<String, AcceleratorPoolSpec>,
}

fn default_name() -> String {
    "advise".into()
}
fn default_namespace() -> String {
    "default".into()
}

/// Errors reading a config.
#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an advise config (spec + pools): {message}")]
    Parse { path: String, message: String },
}

impl AdviseConfig {
    /// Parses YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, AdviseError> {
        serde_saphyr::from_str(text).map_err(|e| AdviseError::Parse {
            path: origin.into(),
            // The parser's first line names the place and the cause; the rest is a snippet.
            message: e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, AdviseError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdviseError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The PromQL scope of the spec.
    pub fn scope(&self) -> Scope {
        scope_of(&self.spec)
    }
}

/// The PromQL scope a spec's metrics section describes.
pub fn scope_of(spec: &ModelAutoscalerSpec) -> Scope {
    let mut scope = Scope::new(spec.model.clone());
    scope.variant_label = spec.metrics.variant_label.clone();
    scope.window = spec.metrics.window.clone();
    scope.matchers = spec
        .metrics
        .matchers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    scope
}

/// The gateway's demand for lack of an endpoint where the spec names the scheduler's series
/// (`metrics.gateway`); None without it, or when the query fails (logged): no signal, so no
/// scale to zero, rather than a failed decision.
pub async fn gateway_demand<Q: PromQuery>(prom: &Q, spec: &ModelAutoscalerSpec) -> Option<u32> {
    let gateway = spec.metrics.gateway.as_ref()?;
    let matchers: Vec<(String, String)> = gateway
        .matchers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match collect_gateway(prom, &matchers, &spec.metrics.window)
        .instrument(tracing::info_span!("collect_gateway"))
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(model = %spec.model, error = %e, "gateway demand query failed");
            None
        }
    }
}

/// Runs advise steps against one Prometheus.
pub struct Advisor<Q: PromQuery> {
    prom: Q,
    config: AdviseConfig,
    reconciler: Reconciler,
    previous: Option<ModelAutoscalerStatus>,
    last_current: Vec<Option<ScaleState>>,
    metrics: Option<ControllerMetrics>,
}

impl<Q: PromQuery> Advisor<Q> {
    pub fn new(prom: Q, config: AdviseConfig, metrics: Option<ControllerMetrics>) -> Self {
        let n = config.spec.variants.len();
        Self {
            prom,
            config,
            reconciler: Reconciler::new(Catalog::builtin(), CapacityCache::default()),
            previous: None,
            last_current: vec![None; n],
            metrics,
        }
    }

    /// One collection and decision at `now`, traced as `advise` with `collect_metrics` and
    /// `decide` inside.
    #[tracing::instrument(
        name = "advise",
        skip_all,
        fields(
            namespace = %self.config.namespace,
            name = %self.config.name,
            model = %self.config.spec.model,
            desired = tracing::field::Empty,
            reason = tracing::field::Empty,
        )
    )]
    pub async fn step(&mut self, now: Timestamp) -> Outcome {
        let scope = self.config.scope();
        let observed = collect(&self.prom, &scope, Grouping::Variant)
            .instrument(tracing::info_span!("collect_metrics"))
            .await
            .map_err(|e| e.to_string());
        if let Ok(obs) = &observed {
            // No cluster: the replicas serving are those Prometheus sees reporting.
            self.last_current = self
                .config
                .spec
                .variants
                .iter()
                .map(|v| {
                    let n = obs
                        .get(&vec![v.name.clone()])
                        .map_or(0, |l| l.replicas_reporting);
                    Some(ScaleState { spec: n, status: n })
                })
                .collect();
        }
        let gateway_waiting = gateway_demand(&self.prom, &self.config.spec).await;
        let current = self.last_current.clone();
        // Timed without the Prometheus queries above, as the controller times its passes.
        let started = std::time::Instant::now();
        let decide = tracing::info_span!("decide").entered();
        let out = self.reconciler.reconcile(&Snapshot {
            namespace: &self.config.namespace,
            name: &self.config.name,
            generation: None,
            spec: &self.config.spec,
            pools: &self.config.pools,
            current: &current,
            metrics: observed.as_ref().map_err(|e| e.clone()),
            gateway_waiting,
            previous: self.previous.as_ref(),
            now,
            // One model: no other holds devices in its pools.
            others: &BTreeMap::new(),
        });
        drop(decide);
        let took = started.elapsed();
        let span = tracing::Span::current();
        span.record("desired", out.status.desired_replicas);
        span.record("reason", out.status.reason.as_str());
        if let Some(m) = &self.metrics {
            m.reconcile_duration_seconds.observe(took.as_secs_f64());
            let slo = (
                self.config.spec.slo.ttft.target_ms / 1e3,
                self.config.spec.slo.itl.target_ms / 1e3,
            );
            m.record(&self.config.namespace, &self.config.spec.model, slo, &out);
            for (name, used) in &out.pool_devices_used {
                if let Some(pool) = self.config.pools.get(name) {
                    m.pool(name, &pool.accelerator_type, pool.devices, *used);
                }
            }
        }
        self.previous = Some(out.status.clone());
        out
    }
}

/// A readable report of one outcome.
pub fn render(name: &str, out: &Outcome) -> String {
    let mut s = String::new();
    let st = &out.status;
    let load = st.load.unwrap_or_default();
    let _ = writeln!(
        s,
        "{name}: seen {:.2} req/s, forecast {:.2} req/s, {} replicas desired, ${:.2}/h",
        load.arrival_rate, load.forecast_rate, st.desired_replicas, st.cost_per_hour
    );
    for c in &st.conditions {
        let _ = writeln!(
            s,
            "  {}={} ({}): {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    let _ = writeln!(
        s,
        "  {:<16} {:>8} {:>8} {:>10} {:>9}  reason",
        "variant", "current", "desired", "ttft_ms", "itl_ms"
    );
    for v in &st.variants {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let _ = writeln!(
            s,
            "  {:<16} {:>8} {:>8} {:>10} {:>9}  {}",
            v.name,
            v.current_replicas,
            v.desired_replicas,
            f(v.predicted_ttft_ms),
            f(v.predicted_itl_ms),
            v.reason
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_and_names_bad_fields() {
        let text = r#"
name: llama
spec:
  model: llama-3.1-8b
  slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 60 } }
  variants:
    - { name: h100, pool: h100, scaleTargetRef: { name: llama-h100 } }
pools:
  h100: { acceleratorType: h100, devices: 8 }
"#;
        let c = AdviseConfig::from_yaml(text, "test.yaml").unwrap();
        assert_eq!(c.pools["h100"].devices, 8);
        assert_eq!(c.scope().variant_label, "variant");
        let err = AdviseConfig::from_yaml("spec: {}\npools: {}\n", "bad.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bad.yaml is not an advise config"), "{msg}");
        assert!(msg.contains("model"), "{msg}");
    }

    proptest::proptest! {
        /// Any text, YAML-looking or not, is a config or an error, never a panic.
        #[test]
        fn any_text_parses_or_errors(text in "(spec:|pools:|  |model: |[a-z{}:,\\[\\]\n -]){0,40}") {
            if let Err(e) = AdviseConfig::from_yaml(&text, "fuzz.yaml") {
                proptest::prop_assert!(e.to_string().starts_with("fuzz.yaml is not an advise config"));
            }
        }
    }
}
