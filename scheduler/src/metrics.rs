//! The scheduler's own Prometheus metrics (prometheus-client, no global registry), named per
//! the project's metrics contract under the prefix `goodput_scheduler`. Labels are bounded:
//! `outcome` ∈ {scored, fallback, no_endpoint, shed, error}, `state` ∈ {ready, stale, down},
//! `kind` ∈ {ttft, tpot}, `endpoint` ∈ the pool's addresses (bounded by the pool size; an
//! endpoint that leaves the pool has its series removed).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
    ])
}

fn tpot_histogram() -> Histogram {
    Histogram::new([
        0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1.0,
    ])
}

fn headroom_histogram() -> Histogram {
    Histogram::new([
        -5.0, -1.0, -0.5, -0.2, -0.1, 0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    ])
}

fn pick_histogram() -> Histogram {
    Histogram::new([
        1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
    ])
}

/// Metrics of one scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    pub picks: Family<OutcomeLabels, Counter>,
    pub pick_duration: Histogram,
    pub endpoints: Family<StateLabels, Gauge>,
    pub in_flight: Family<EndpointLabels, Gauge>,
    pub predicted_ttft: Histogram,
    pub observed_ttft: Histogram,
    pub predicted_tpot: Histogram,
    pub observed_tpot: Histogram,
    pub ttft_headroom: Histogram,
    pub slo_violations: Family<KindLabels, Counter>,
    pub training_samples: Counter,
    pub requests_waiting: Gauge,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self {
            picks: Family::default(),
            pick_duration: pick_histogram(),
            endpoints: Family::default(),
            in_flight: Family::default(),
            predicted_ttft: latency_histogram(),
            observed_ttft: latency_histogram(),
            predicted_tpot: tpot_histogram(),
            observed_tpot: tpot_histogram(),
            ttft_headroom: headroom_histogram(),
            slo_violations: Family::default(),
            training_samples: Counter::default(),
            requests_waiting: Gauge::default(),
        }
    }
}

impl SchedulerMetrics {
    /// Registers every metric under `registry` (give it the prefix `goodput_scheduler`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("picks", "Picks by outcome", self.picks.clone());
        registry.register(
            "pick_duration_seconds",
            "Time to pick an endpoint",
            self.pick_duration.clone(),
        );
        registry.register("endpoints", "Endpoints by state", self.endpoints.clone());
        registry.register(
            "endpoint_requests_in_flight",
            "Requests dispatched to the endpoint and not finished",
            self.in_flight.clone(),
        );
        registry.register(
            "predicted_ttft_seconds",
            "Predicted TTFT of the chosen endpoint at pick",
            self.predicted_ttft.clone(),
        );
        registry.register(
            "observed_ttft_seconds",
            "TTFT measured on the response stream",
            self.observed_ttft.clone(),
        );
        registry.register(
            "predicted_tpot_seconds",
            "Predicted time per output token of the chosen endpoint at pick",
            self.predicted_tpot.clone(),
        );
        registry.register(
            "observed_tpot_seconds",
            "Time per output token measured on the response stream",
            self.observed_tpot.clone(),
        );
        registry.register(
            "ttft_headroom_seconds",
            "TTFT SLO minus predicted TTFT at pick (requests with a TTFT SLO)",
            self.ttft_headroom.clone(),
        );
        registry.register(
            "slo_violations",
            "Requests whose measured latency missed their SLO",
            self.slo_violations.clone(),
        );
        registry.register(
            "training_samples",
            "Measured requests fed back to the predictor",
            self.training_samples.clone(),
        );
        registry.register(
            "requests_waiting",
            "Requests held because no endpoint could take them (a fleet at zero or starting)",
            self.requests_waiting.clone(),
        );
        for outcome in ["scored", "fallback", "no_endpoint", "shed", "error"] {
            let _ = self.picks.get_or_create(&OutcomeLabels { outcome });
        }
        for kind in ["ttft", "tpot"] {
            let _ = self.slo_violations.get_or_create(&KindLabels { kind });
        }
    }

    pub fn pick(&self, outcome: &'static str) {
        self.picks.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_contract_names() {
        let mut r = Registry::with_prefix("goodput_scheduler");
        let m = SchedulerMetrics::default();
        m.register(&mut r);
        m.pick("scored");
        m.in_flight
            .get_or_create(&EndpointLabels {
                endpoint: "10.0.0.1:8000".into(),
            })
            .set(2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for name in [
            "goodput_scheduler_picks_total{outcome=\"scored\"} 1",
            "goodput_scheduler_pick_duration_seconds_bucket",
            "goodput_scheduler_endpoint_requests_in_flight{endpoint=\"10.0.0.1:8000\"} 2",
            "goodput_scheduler_predicted_ttft_seconds_bucket",
            "goodput_scheduler_observed_ttft_seconds_bucket",
            "goodput_scheduler_predicted_tpot_seconds_bucket",
            "goodput_scheduler_observed_tpot_seconds_bucket",
            "goodput_scheduler_ttft_headroom_seconds_bucket",
            "goodput_scheduler_slo_violations_total{kind=\"ttft\"} 0",
            "goodput_scheduler_training_samples_total 0",
            "goodput_scheduler_requests_waiting 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
