//! The predictor's own Prometheus metrics (prometheus-client, no global registry): window size,
//! retrainings, held-out accuracy per target (MAPE, pinball loss and coverage per quantile),
//! and the live accuracy and multipliers of the online calibration. Labels are bounded: `target` ∈ {ttft, tpot}, `quantile` ∈ {0.5, 0.9, 0.99},
//! `reason` ∈ {schedule, drift, manual}, `family` ∈ {linear, gbdt}.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::features::Target;
use crate::model::QUANTILES;
use crate::online::LiveAccuracy;
use crate::predictor::{ModelSet, RetrainReason};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    pub target: &'static str,
    pub quantile: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub target: &'static str,
    pub family: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Metrics of one [`crate::Predictor`].
#[derive(Debug, Default, Clone)]
pub struct PredictorMetrics {
    pub samples: Counter,
    pub window_rows: Family<TargetLabels, Gauge>,
    pub retrains: Family<ReasonLabels, Counter>,
    pub retrain_failures: Counter,
    pub drift_detected: Counter,
    pub model_version: Gauge,
    pub fit_seconds: FloatGauge,
    pub mape: Family<TargetLabels, FloatGauge>,
    pub pinball: Family<QuantileLabels, FloatGauge>,
    pub coverage: Family<QuantileLabels, FloatGauge>,
    pub selected: Family<FamilyLabels, Gauge>,
    pub live_mape: Family<TargetLabels, FloatGauge>,
    pub live_coverage: Family<QuantileLabels, FloatGauge>,
    pub online_bias: Family<TargetLabels, FloatGauge>,
}

const Q_LABELS: [&str; 3] = ["0.5", "0.9", "0.99"];

impl PredictorMetrics {
    /// Registers every metric under `registry` (give it a prefix, e.g. `goodput_predictor`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("samples", "Training samples received", self.samples.clone());
        registry.register(
            "window_rows",
            "Rows in the stratified training window",
            self.window_rows.clone(),
        );
        registry.register("retrains", "Model retrainings", self.retrains.clone());
        registry.register(
            "retrain_failures",
            "Retrainings that produced no model",
            self.retrain_failures.clone(),
        );
        registry.register(
            "drift_detected",
            "Times the live held-out error departed from the calibrated one",
            self.drift_detected.clone(),
        );
        registry.register(
            "model_version",
            "Version of the models in use (0 = none)",
            self.model_version.clone(),
        );
        registry.register(
            "fit_seconds",
            "Wall time of the last retraining",
            self.fit_seconds.clone(),
        );
        registry.register(
            "mape_percent",
            "Held-out mean absolute percentage error of the point prediction",
            self.mape.clone(),
        );
        registry.register(
            "pinball_loss_ms",
            "Held-out pinball loss of a quantile prediction",
            self.pinball.clone(),
        );
        registry.register(
            "coverage_ratio",
            "Held-out share of requests at or below the predicted quantile",
            self.coverage.clone(),
        );
        registry.register(
            "model_family",
            "1 for the model family selected per target",
            self.selected.clone(),
        );
        registry.register(
            "live_mape_percent",
            "MAPE of the served (online-calibrated) point prediction over about the last 100 labels",
            self.live_mape.clone(),
        );
        registry.register(
            "live_coverage_ratio",
            "Share of about the last 100 labels at or below the served quantile",
            self.live_coverage.clone(),
        );
        registry.register(
            "online_bias_ratio",
            "Multiplier the online calibration applies to the model's point prediction",
            self.online_bias.clone(),
        );
    }

    pub(crate) fn set_live(&self, live: &[LiveAccuracy; 2]) {
        for (t, l) in Target::ALL.iter().zip(live) {
            if l.rows == 0 {
                continue;
            }
            let target = t.as_str();
            self.live_mape
                .get_or_create(&TargetLabels { target })
                .set(l.mape_percent);
            self.online_bias
                .get_or_create(&TargetLabels { target })
                .set(l.bias);
            for (i, q) in Q_LABELS.iter().enumerate() {
                self.live_coverage
                    .get_or_create(&QuantileLabels {
                        target,
                        quantile: q,
                    })
                    .set(l.coverage[i]);
            }
        }
    }

    pub(crate) fn set_window(&self, ttft: usize, tpot: usize) {
        for (t, n) in [(Target::Ttft, ttft), (Target::Tpot, tpot)] {
            self.window_rows
                .get_or_create(&TargetLabels { target: t.as_str() })
                .set(n as i64);
        }
    }

    pub(crate) fn record_fit(&self, set: &ModelSet, reason: RetrainReason, seconds: f64) {
        self.retrains
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
        self.model_version.set(set.version as i64);
        self.fit_seconds.set(seconds);
        for t in Target::ALL {
            let Some(m) = set.target(t) else { continue };
            let target = t.as_str();
            self.mape
                .get_or_create(&TargetLabels { target })
                .set(m.accuracy.mape_percent);
            for (i, q) in Q_LABELS.iter().enumerate() {
                let l = QuantileLabels {
                    target,
                    quantile: q,
                };
                self.pinball.get_or_create(&l).set(m.accuracy.pinball_ms[i]);
                self.coverage.get_or_create(&l).set(m.accuracy.coverage[i]);
            }
            for (family, _) in &m.candidates {
                let chosen = *family == m.regressor.family();
                self.selected
                    .get_or_create(&FamilyLabels {
                        target,
                        family: family.as_str(),
                    })
                    .set(i64::from(chosen));
            }
        }
        debug_assert_eq!(QUANTILES.len(), Q_LABELS.len());
    }
}
