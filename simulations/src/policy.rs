//! The hooks through which policies drive the simulated cluster, called as production calls
//! them: a [`Router`] picks a replica for every request (the endpoint picker's job), an
//! [`Autoscaler`] sets each variant's replica target every interval from what Prometheus would
//! show. Simple defaults live here; goodput's real scheduler and autoscaler implement the same
//! traits.

use goodput_core::{Role, VariantLoad};

/// One candidate replica as a router sees it at the moment of the pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaView {
    /// Cluster-wide replica id.
    pub replica: usize,
    /// Index of its variant in the scenario.
    pub variant: usize,
    pub running: usize,
    pub waiting: usize,
    /// KV-cache usage, 0..1.
    pub kv_usage: f64,
    /// Prompt tokens of the requests there that have not produced their first token, less what
    /// is computed of them (what a gateway counts as prefill in flight). A waiting prompt
    /// counts its cached prefix too: the engine finds the hits when it admits it.
    pub prefill_tokens_in_flight: u64,
    /// Seconds since the oldest of those requests arrived, None when there are none.
    pub since_oldest_prefill_s: Option<f64>,
    /// Seconds since the replica last emitted a token (as a gateway streaming its responses
    /// sees it), None before its first.
    pub since_last_token_s: Option<f64>,
}

/// The request being routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub id: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub hash_ids: &'a [u64],
}

/// Picks the replica for each request.
pub trait Router {
    /// Policy name for reports.
    fn name(&self) -> &str;
    /// Index into `candidates` (never empty), or None to hold the request.
    fn pick(&mut self, request: &RouteRequest<'_>, candidates: &[ReplicaView]) -> Option<usize>;
}

/// Cycles through the candidates.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }
    fn pick(&mut self, _: &RouteRequest<'_>, candidates: &[ReplicaView]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let i = self.next % candidates.len();
        self.next = self.next.wrapping_add(1);
        Some(i)
    }
}

/// Fewest requests held (running plus waiting), then least KV in use.
#[derive(Debug, Default)]
pub struct LeastLoaded;

impl Router for LeastLoaded {
    fn name(&self) -> &str {
        "least-loaded"
    }
    fn pick(&mut self, _: &RouteRequest<'_>, candidates: &[ReplicaView]) -> Option<usize> {
        candidates
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                (a.running + a.waiting)
                    .cmp(&(b.running + b.waiting))
                    .then(a.kv_usage.total_cmp(&b.kv_usage))
            })
            .map(|(i, _)| i)
    }
}

/// One variant as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantView {
    pub name: String,
    pub accelerator: String,
    pub tp: u32,
    pub role: Role,
    pub price_per_hour: f64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Current target (replicas starting plus ready).
    pub target: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// What Prometheus shows for it, None before the first visible scrape.
    pub load: Option<VariantLoad>,
}

/// An accelerator pool's state.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub accelerator: String,
    pub capacity: u32,
    /// Devices held by replicas of any variant (draining ones included).
    pub in_use: u32,
    pub startup_s: f64,
}

/// The cluster as an autoscaler sees it at a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub now_s: f64,
    pub variants: Vec<VariantView>,
    pub pools: Vec<PoolView>,
    /// Requests held at the gateway because no replica could take them: the demand that the
    /// engines' own metrics cannot show while no replica serves, so what wakes a fleet scaled
    /// to zero. None where no such signal exists; a policy must then never scale to zero, since
    /// nothing would bring the fleet back.
    pub gateway_waiting: Option<u32>,
}

/// A replica target with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleDecision {
    pub variant: usize,
    pub replicas: u32,
    pub reason: String,
}

/// Sets replica targets.
pub trait Autoscaler {
    fn name(&self) -> &str;
    /// Targets for the variants that should change; others keep theirs.
    fn decide(&mut self, view: &ClusterView) -> Vec<ScaleDecision>;
}

/// Keeps the scenario's initial replica counts.
#[derive(Debug, Default)]
pub struct FixedReplicas;

impl Autoscaler for FixedReplicas {
    fn name(&self) -> &str {
        "fixed"
    }
    fn decide(&mut self, _: &ClusterView) -> Vec<ScaleDecision> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(replica: usize, running: usize, waiting: usize, kv: f64) -> ReplicaView {
        ReplicaView {
            replica,
            variant: 0,
            running,
            waiting,
            kv_usage: kv,
            prefill_tokens_in_flight: 0,
            since_oldest_prefill_s: None,
            since_last_token_s: None,
        }
    }

    #[test]
    fn least_loaded_prefers_fewer_requests_then_less_kv() {
        let req = RouteRequest {
            id: 0,
            input_tokens: 10,
            output_tokens: 10,
            hash_ids: &[],
        };
        let c = [view(0, 3, 1, 0.1), view(1, 2, 0, 0.9), view(2, 2, 0, 0.5)];
        assert_eq!(LeastLoaded.pick(&req, &c), Some(2));
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&req, &c)).collect();
        assert_eq!(picks, vec![Some(0), Some(1), Some(2), Some(0)]);
    }
}
