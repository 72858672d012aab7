//! The controller's and `advise`'s metrics (the `goodput_*` names of the metrics contract),
//! registered on a Registry the caller passes in (no globals).
//!
//! Data flow: each reconcile's outcome ([`crate::controller::reconcile::Outcome`]) is written
//! here with [`ControllerMetrics::record`]; `/metrics` encodes the registry. HPA (through
//! prometheus-adapter) and KEDA's prometheus trigger read `goodput_desired_replicas`; with
//! `--wva-metrics` the same numbers are also exported as WVA's `wva_desired_replicas` so that
//! objects written for WVA keep working. Labels are bounded by the objects in the cluster
//! (namespace, model, variant, accelerator, role).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type FGauge = Gauge<f64, AtomicU64>;

/// Per-variant labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VariantLabels {
    pub namespace: String,
    pub model: String,
    pub variant: String,
    pub accelerator: String,
    pub role: String,
}

impl VariantLabels {
    /// The labels of one variant's decision.
    fn of(namespace: &str, model: &str, d: &crate::controller::reconcile::Desired) -> Self {
        Self {
            namespace: namespace.into(),
            model: model.into(),
            variant: d.variant.clone(),
            accelerator: d.accelerator.clone(),
            role: d.role.as_str().into(),
        }
    }
}

/// Per-model labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub namespace: String,
    pub model: String,
}

/// Direction of a decision.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Hold => "hold",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub model: String,
    pub direction: Direction,
}

/// Why a reconcile failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ErrorReason {
    Metrics,
    Kube,
    InvalidSpec,
    Actuation,
}

impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Metrics => "metrics",
            ErrorReason::Kube => "kube",
            ErrorReason::InvalidSpec => "invalid_spec",
            ErrorReason::Actuation => "actuation",
        }
    }
}

impl EncodeLabelValue for ErrorReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: ErrorReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub accelerator: String,
}

/// WVA's label names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WvaLabels {
    pub variant_name: String,
    pub namespace: String,
    pub accelerator_type: String,
}

/// Every metric the controller and `advise` export.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub desired_replicas: Family<VariantLabels, FGauge>,
    pub current_replicas: Family<VariantLabels, FGauge>,
    pub predicted_ttft_seconds: Family<VariantLabels, FGauge>,
    pub predicted_itl_seconds: Family<VariantLabels, FGauge>,
    pub arrival_rate: Family<ModelLabels, FGauge>,
    pub forecast_arrival_rate: Family<ModelLabels, FGauge>,
    pub cost_per_hour: Family<ModelLabels, FGauge>,
    pub slo_ttft_seconds: Family<ModelLabels, FGauge>,
    pub slo_itl_seconds: Family<ModelLabels, FGauge>,
    pub metrics_available: Family<ModelLabels, FGauge>,
    pub capacity_limited: Family<ModelLabels, FGauge>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration_seconds: Histogram,
    pub pool_devices_capacity: Family<PoolLabels, FGauge>,
    pub pool_devices_used: Family<PoolLabels, FGauge>,
    /// WVA's `wva_desired_replicas`, when asked for.
    pub wva_desired_replicas: Option<Family<WvaLabels, FGauge>>,
}

impl ControllerMetrics {
    /// Registers every metric on `registry` (give it the prefix `goodput`); the WVA-named gauge
    /// goes on `wva` (no prefix) when given.
    pub fn register(registry: &mut Registry, wva: Option<&mut Registry>) -> Self {
        let m = Self {
            desired_replicas: Family::default(),
            current_replicas: Family::default(),
            predicted_ttft_seconds: Family::default(),
            predicted_itl_seconds: Family::default(),
            arrival_rate: Family::default(),
            forecast_arrival_rate: Family::default(),
            cost_per_hour: Family::default(),
            slo_ttft_seconds: Family::default(),
            slo_itl_seconds: Family::default(),
            metrics_available: Family::default(),
            capacity_limited: Family::default(),
            decisions: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            pool_devices_capacity: Family::default(),
            pool_devices_used: Family::default(),
            wva_desired_replicas: wva.as_ref().map(|_| Family::default()),
        };
        let r = registry;
        r.register(
            "desired_replicas",
            "Replicas goodput wants for a variant",
            m.desired_replicas.clone(),
        );
        r.register(
            "current_replicas",
            "Replicas a variant's workload has",
            m.current_replicas.clone(),
        );
        r.register(
            "predicted_ttft_seconds",
            "Predicted time to first token at the desired fleet's load",
            m.predicted_ttft_seconds.clone(),
        );
        r.register(
            "predicted_itl_seconds",
            "Predicted inter-token latency at the desired fleet's load",
            m.predicted_itl_seconds.clone(),
        );
        r.register(
            "arrival_rate",
            "Requests per second seen",
            m.arrival_rate.clone(),
        );
        r.register(
            "forecast_arrival_rate",
            "Requests per second forecast, with margin",
            m.forecast_arrival_rate.clone(),
        );
        r.register(
            "cost_per_hour",
            "USD per hour of the desired fleet",
            m.cost_per_hour.clone(),
        );
        r.register(
            "slo_ttft_seconds",
            "TTFT target",
            m.slo_ttft_seconds.clone(),
        );
        r.register("slo_itl_seconds", "ITL target", m.slo_itl_seconds.clone());
        r.register(
            "metrics_available",
            "1 when the last metrics collection succeeded",
            m.metrics_available.clone(),
        );
        r.register(
            "capacity_limited",
            "1 when the pools cannot carry the forecast load",
            m.capacity_limited.clone(),
        );
        r.register("decisions", "Decisions by direction", m.decisions.clone());
        r.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time of one reconcile, metrics collection included",
            m.reconcile_duration_seconds.clone(),
        );
        r.register(
            "pool_devices_capacity",
            "Devices an AcceleratorPool offers",
            m.pool_devices_capacity.clone(),
        );
        r.register(
            "pool_devices_used",
            "Devices a pool's replicas hold, over every model that uses it (per variant the larger of its current and desired replicas)",
            m.pool_devices_used.clone(),
        );
        // Every reason starts at 0, so that rate() and alerts see a series before the first error.
        for reason in [
            ErrorReason::Metrics,
            ErrorReason::Kube,
            ErrorReason::InvalidSpec,
            ErrorReason::Actuation,
        ] {
            let _ = m.reconcile_errors.get_or_create(&ErrorLabels { reason });
        }
        if let (Some(w), Some(f)) = (wva, &m.wva_desired_replicas) {
            w.register(
                "wva_desired_replicas",
                "Desired replicas under WVA's name (for HPA/KEDA objects written for WVA)",
                f.clone(),
            );
        }
        m
    }

    /// Counts a failed reconcile.
    pub fn error(&self, reason: ErrorReason) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    /// Writes one reconcile's outcome (`model` is the spec's served model name).
    pub fn record(
        &self,
        namespace: &str,
        model: &str,
        slo: (f64, f64),
        outcome: &crate::controller::reconcile::Outcome,
    ) {
        let ml = ModelLabels {
            namespace: namespace.into(),
            model: model.into(),
        };
        if let Some(e) = outcome.error {
            self.error(e);
        }
        self.metrics_available
            .get_or_create(&ml)
            .set(f64::from(u8::from(outcome.metrics_available)));
        self.slo_ttft_seconds.get_or_create(&ml).set(slo.0);
        self.slo_itl_seconds.get_or_create(&ml).set(slo.1);
        if outcome.desired.is_empty() {
            // Invalid spec: nothing decided, the last exported numbers stand.
            return;
        }
        self.capacity_limited
            .get_or_create(&ml)
            .set(f64::from(u8::from(outcome.capacity_limited)));
        self.arrival_rate
            .get_or_create(&ml)
            .set(outcome.arrival_rate);
        self.forecast_arrival_rate
            .get_or_create(&ml)
            .set(outcome.forecast_rate);
        self.cost_per_hour
            .get_or_create(&ml)
            .set(outcome.status.cost_per_hour);
        self.decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.into(),
                model: model.into(),
                direction: outcome.direction,
            })
            .inc();
        for d in &outcome.desired {
            let vl = VariantLabels::of(namespace, model, d);
            self.desired_replicas
                .get_or_create(&vl)
                .set(d.replicas as f64);
            if let Some(c) = d.current {
                self.current_replicas.get_or_create(&vl).set(c as f64);
            }
            match d.predicted_ttft_s {
                Some(t) => {
                    self.predicted_ttft_seconds.get_or_create(&vl).set(t);
                }
                None => {
                    self.predicted_ttft_seconds.remove(&vl);
                }
            }
            match d.predicted_itl_s {
                Some(t) => {
                    self.predicted_itl_seconds.get_or_create(&vl).set(t);
                }
                None => {
                    self.predicted_itl_seconds.remove(&vl);
                }
            }
            if let Some(w) = &self.wva_desired_replicas {
                w.get_or_create(&WvaLabels {
                    variant_name: d.variant.clone(),
                    namespace: namespace.into(),
                    accelerator_type: d.accelerator.clone(),
                })
                .set(d.replicas as f64);
            }
        }
    }

    /// Sets each variant's current replicas only: a target scaled between decisions (seen by the
    /// watch on Deployments and StatefulSets) shows on the dashboards without a new decision.
    pub fn current(
        &self,
        namespace: &str,
        model: &str,
        desired: &[crate::controller::reconcile::Desired],
    ) {
        for d in desired {
            if let Some(c) = d.current {
                let vl = VariantLabels::of(namespace, model, d);
                self.current_replicas.get_or_create(&vl).set(c as f64);
            }
        }
    }

    /// Sets a pool's capacity and the devices held in it by every model that uses it.
    pub fn pool(&self, pool: &str, accelerator: &str, capacity: u32, used: u32) {
        let l = PoolLabels {
            pool: pool.into(),
            accelerator: accelerator.into(),
        };
        self.pool_devices_capacity
            .get_or_create(&l)
            .set(capacity as f64);
        self.pool_devices_used.get_or_create(&l).set(used as f64);
    }

    /// Forgets a deleted ModelAutoscaler's series (labels stay bounded by what exists).
    pub fn forget(&self, namespace: &str, model: &str, variants: &[VariantLabels]) {
        let ml = ModelLabels {
            namespace: namespace.into(),
            model: model.into(),
        };
        for f in [
            &self.arrival_rate,
            &self.forecast_arrival_rate,
            &self.cost_per_hour,
            &self.slo_ttft_seconds,
            &self.slo_itl_seconds,
            &self.metrics_available,
            &self.capacity_limited,
        ] {
            f.remove(&ml);
        }
        for v in variants {
            for f in [
                &self.desired_replicas,
                &self.current_replicas,
                &self.predicted_ttft_seconds,
                &self.predicted_itl_seconds,
            ] {
                f.remove(v);
            }
            if let Some(w) = &self.wva_desired_replicas {
                w.remove(&WvaLabels {
                    variant_name: v.variant.clone(),
                    namespace: v.namespace.clone(),
                    accelerator_type: v.accelerator.clone(),
                });
            }
        }
    }
}

/// A registry with goodput's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("goodput")
}

/// Text exposition (OpenMetrics) of several registries, in order.
pub fn encode(registries: &[&Registry]) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    for (i, r) in registries.iter().enumerate() {
        let mut part = String::new();
        prometheus_client::encoding::text::encode(&mut part, r)?;
        // Each encoding ends with `# EOF`; only the last one may keep it.
        if i + 1 < registries.len() {
            part = part.trim_end().trim_end_matches("# EOF").to_string();
        }
        out.push_str(&part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let mut r = registry();
        let mut w = Registry::default();
        let m = ControllerMetrics::register(&mut r, Some(&mut w));
        let v = VariantLabels {
            namespace: "llm".into(),
            model: "llama".into(),
            variant: "h100".into(),
            accelerator: "h100".into(),
            role: "unified".into(),
        };
        m.desired_replicas.get_or_create(&v).set(3.0);
        if let Some(f) = &m.wva_desired_replicas {
            f.get_or_create(&WvaLabels {
                variant_name: "h100".into(),
                namespace: "llm".into(),
                accelerator_type: "h100".into(),
            })
            .set(3.0);
        }
        m.error(ErrorReason::InvalidSpec);
        m.decisions
            .get_or_create(&DecisionLabels {
                namespace: "llm".into(),
                model: "llama".into(),
                direction: Direction::Up,
            })
            .inc();
        let text = encode(&[&r, &w]).unwrap();
        assert!(text.contains(
            "goodput_desired_replicas{namespace=\"llm\",model=\"llama\",variant=\"h100\",accelerator=\"h100\",role=\"unified\"} 3.0"
        ), "{text}");
        assert!(text.contains("goodput_reconcile_errors_total{reason=\"invalid_spec\"} 1"));
        // The other reasons exist at 0 before their first error.
        assert!(text.contains("goodput_reconcile_errors_total{reason=\"kube\"} 0"));
        assert!(text.contains(
            "goodput_decisions_total{namespace=\"llm\",model=\"llama\",direction=\"up\"} 1"
        ));
        assert!(text.contains(
            "wva_desired_replicas{variant_name=\"h100\",namespace=\"llm\",accelerator_type=\"h100\"} 3.0"
        ));
        assert_eq!(text.matches("# EOF").count(), 1);
        m.forget("llm", "llama", &[v]);
        let text = encode(&[&r]).unwrap();
        assert!(!text.contains("goodput_desired_replicas{"), "{text}");
    }
}
