//! The scheduler's pickers as the simulator's router: the same scoring core that runs behind
//! Envoy picks replicas in `goodput_sim`'s cluster.
//!
//! Data flow: the cluster calls [`SimRouter::pick`] with its ready replicas
//! ([`goodput_sim::policy::ReplicaView`]); they become [`EndpointView`]s (exact running/waiting
//! counts and KV usage, as a scrape at that instant would show, and the prompts awaiting their
//! first token with the oldest one's age, as a gateway counts them), the
//! trace's block ids become a prefix-hash chain, the picker decides, and the chosen replica's
//! blocks are recorded in the prefix index. Every dispatch is logged with its features, so
//! that [`training_samples`] can pair them with the run's measured latencies: the simulator's
//! router hook has no completion callback, so the predictor learns between runs rather than
//! during one.

use std::sync::Arc;

use goodput_core::Role;
use goodput_predictor::{Features, PodType, Predictor, PredictorConfig, Sample, VariantPhysics};
use goodput_sim::cluster::{RequestOutcome, Variant};
use goodput_sim::policy::{ReplicaView, RouteRequest, Router};

use crate::endpoint::{EndpointView, Health};
use crate::latency::LatencyModel;
use crate::pick::{Decision, PickRequest, Picker};
use crate::prefix::{PrefixIndex, chain_ids};

/// One dispatch: request id, the variant it went to, and the predictor's row at that moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dispatch {
    pub request: u64,
    pub variant: usize,
    pub features: Features,
}

/// A [`Picker`] driving the simulator.
pub struct SimRouter<L: LatencyModel> {
    picker: Box<dyn Picker>,
    latency: L,
    prefix: PrefixIndex,
    roles: Vec<PodType>,
    block_tokens: u32,
    slo_ttft_ms: Option<f64>,
    slo_tpot_ms: Option<f64>,
    views: Vec<EndpointView>,
    hashes: Vec<u64>,
    dispatches: Vec<Dispatch>,
    /// Picks that returned no endpoint or shed (the cluster holds the request and retries).
    pub held: u64,
}

/// One predictor per variant that predicts from the variant's physics (its roofline step cost,
/// token budget and KV capacity) until it has been trained: what goodput's picker runs on
/// before any latency was measured.
pub fn physics_predictors(variants: &[Variant]) -> Vec<Option<Arc<Predictor>>> {
    variants
        .iter()
        .map(|v| {
            let physics = VariantPhysics::from_engine(
                v.engine.cost,
                &v.engine.limits,
                v.engine.kv_capacity_tokens,
            );
            Some(Arc::new(Predictor::new(PredictorConfig {
                physics: Some(physics),
                ..Default::default()
            })))
        })
        .collect()
}

/// The predictor's pod type for a simulator role.
pub fn pod_type(role: Role) -> PodType {
    match role {
        Role::Prefill => PodType::Prefill,
        Role::Decode => PodType::Decode,
        _ => PodType::Monolithic,
    }
}

impl<L: LatencyModel> SimRouter<L> {
    /// `variants` are the scenario's (for their roles); `block_tokens` is the workload's
    /// tokens per hash id; the SLO is given to every request, as a gateway would set it.
    pub fn new(
        picker: Box<dyn Picker>,
        latency: L,
        variants: &[Variant],
        block_tokens: u32,
        slo_ms: Option<(f64, f64)>,
    ) -> Self {
        Self {
            picker,
            latency,
            prefix: PrefixIndex::default(),
            roles: variants.iter().map(|v| pod_type(v.role)).collect(),
            block_tokens: block_tokens.max(1),
            slo_ttft_ms: slo_ms.map(|s| s.0),
            slo_tpot_ms: slo_ms.map(|s| s.1),
            views: Vec::new(),
            hashes: Vec::new(),
            dispatches: Vec::new(),
            held: 0,
        }
    }

    /// Every dispatch so far, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    pub fn latency(&self) -> &L {
        &self.latency
    }
}

impl<L: LatencyModel> Router for SimRouter<L> {
    fn name(&self) -> &str {
        self.picker.name()
    }

    fn pick(&mut self, request: &RouteRequest<'_>, candidates: &[ReplicaView]) -> Option<usize> {
        // The cluster offers prefill replicas only at the entry (beside unified ones when a
        // model has both paths), and there a prefill replica is where the request goes first:
        // an entry like a unified replica. Shown to the picker as prefill-only pods, which take
        // no request from the client, they never got one beside unified replicas, and a fleet
        // that held both paths sent every request to its few unified replicas.
        self.views.clear();
        self.views.extend(candidates.iter().map(|c| {
            let role = self.roles.get(c.variant).copied().unwrap_or_default();
            EndpointView {
                slot: c.replica,
                variant: c.variant,
                role: if role == PodType::Prefill {
                    PodType::Monolithic
                } else {
                    role
                },
                health: Health::Ready,
                running: c.running as u32,
                waiting: c.waiting as u32,
                kv_usage: c.kv_usage,
                in_flight: (c.running + c.waiting) as u32,
                prefill_tokens_in_flight: c.prefill_tokens_in_flight,
                ms_since_oldest_prefill: c.since_oldest_prefill_s.map(|s| s * 1e3),
                decode_tokens_in_flight: 0,
                ms_since_last_token: c.since_last_token_s.map(|s| s * 1e3),
            }
        }));
        chain_ids(request.hash_ids, &mut self.hashes);
        let req = PickRequest {
            prompt_tokens: request.input_tokens.max(1),
            output_tokens: request.output_tokens.max(1),
            slo_ttft_ms: self.slo_ttft_ms,
            slo_tpot_ms: self.slo_tpot_ms,
            sheddable: false,
            hashes: &self.hashes,
            block_tokens: self.block_tokens,
        };
        match self
            .picker
            .pick(&req, &self.views, &self.prefix, &self.latency)
        {
            Decision::Route(r) => {
                let v = self.views[r.endpoint];
                self.prefix.record(v.slot, &self.hashes);
                let mut features = r.features;
                features.pod_type = self.roles.get(v.variant).copied().unwrap_or_default();
                self.dispatches.push(Dispatch {
                    request: request.id,
                    variant: v.variant,
                    features,
                });
                Some(r.endpoint)
            }
            Decision::Shed | Decision::NoEndpoint => {
                self.held += 1;
                None
            }
        }
    }
}

/// Training samples per variant: each request's first dispatch paired with its measured TTFT
/// and mean time per output token (ms). Requests that did not finish give none.
pub fn training_samples(
    dispatches: &[Dispatch],
    outcomes: &[RequestOutcome],
    variants: usize,
) -> Vec<Vec<Sample>> {
    let mut out = vec![Vec::new(); variants];
    let mut seen = std::collections::HashSet::new();
    for d in dispatches {
        if !seen.insert(d.request) {
            continue; // the decode leg of a P/D request
        }
        let Some(o) = outcomes.get(d.request as usize) else {
            continue;
        };
        let (Some(ttft), Some(itl), Some(_)) = (o.ttft_s(), o.mean_itl_s(), o.finish_s) else {
            continue;
        };
        if let Some(v) = out.get_mut(d.variant) {
            v.push(Sample {
                features: d.features,
                ttft_ms: Some(ttft * 1e3),
                tpot_ms: (o.output_tokens > 1).then_some(itl * 1e3),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goodput::GoodputPicker;
    use crate::latency::NoPredictions;

    #[test]
    fn routes_and_logs_dispatches_with_prefix_affinity() {
        let variants: Vec<Variant> = Vec::new();
        let mut r = SimRouter::new(
            Box::new(GoodputPicker::default()),
            NoPredictions,
            &variants,
            512,
            Some((1000.0, 60.0)),
        );
        let view = |replica| ReplicaView {
            replica,
            variant: 0,
            running: 1,
            waiting: 0,
            kv_usage: 0.1,
            prefill_tokens_in_flight: 0,
            since_oldest_prefill_s: None,
            since_last_token_s: None,
        };
        let cands = [view(0), view(1), view(2)];
        let ids = [7u64, 8, 9];
        let req = RouteRequest {
            id: 0,
            input_tokens: 1536,
            output_tokens: 10,
            hash_ids: &ids,
        };
        let first = r.pick(&req, &cands).unwrap();
        let again = RouteRequest { id: 1, ..req };
        assert_eq!(
            r.pick(&again, &cands),
            Some(first),
            "same prefix, same replica"
        );
        assert_eq!(r.dispatches().len(), 2);
        assert_eq!(r.dispatches()[1].features.prefix_cache_score, 1.0);
        let outcomes = [
            RequestOutcome {
                arrival_s: 0.0,
                first_token_s: Some(0.1),
                finish_s: Some(1.0),
                output_tokens: 10,
                ..Default::default()
            },
            RequestOutcome::default(),
        ];
        let s = training_samples(r.dispatches(), &outcomes, 1);
        assert_eq!(s[0].len(), 1, "unfinished requests are not samples");
        assert!((s[0][0].ttft_ms.unwrap() - 100.0).abs() < 1e-9);
        assert!((s[0][0].tpot_ms.unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn prefill_replicas_are_entries_beside_unified_ones() {
        // A model with both paths: a busy unified replica and an idle prefill replica (the
        // P/D path's entry). Each picker sends the request to the idle prefill replica.
        let pickers: Vec<Box<dyn Picker>> = vec![
            Box::new(GoodputPicker::default()),
            Box::new(crate::pick::LeastRequests::default()),
            Box::new(crate::pick::PrefixLoad::default()),
        ];
        for picker in pickers {
            let name = picker.name().to_string();
            let mut r = SimRouter::new(picker, NoPredictions, &[], 16, Some((1000.0, 60.0)));
            r.roles = vec![PodType::Monolithic, PodType::Prefill];
            let view = |replica, variant, running| ReplicaView {
                replica,
                variant,
                running,
                waiting: 0,
                kv_usage: 0.05 * running as f64,
                prefill_tokens_in_flight: 0,
                since_oldest_prefill_s: None,
                since_last_token_s: None,
            };
            let cands = [view(0, 0, 12), view(1, 1, 0)];
            let req = RouteRequest {
                id: 0,
                input_tokens: 2048,
                output_tokens: 28,
                hash_ids: &[],
            };
            assert_eq!(r.pick(&req, &cands), Some(1), "{name}");
        }
    }
}
