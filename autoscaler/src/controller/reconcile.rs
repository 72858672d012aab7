//! The reconcile decision, without I/O: (spec, pools, metrics snapshot, current replicas,
//! previous status, now) -> (status, desired replicas, events, actuation).
//!
//! The decision is the existing engine's ([`GoodputPolicy`]); this module only feeds it a
//! `ClusterView` built from the custom resources and the PromQL observation, and shapes what it
//! says into the status, Events and `/scale` patches. It keeps per-object state between calls
//! (the policy's forecaster and scale-down window), rebuilt when the spec or its pools change,
//! and what each object holds in the pools it shares with other models ([`super::pool_share`]):
//! a model is planned within the devices the others leave.
//!
//! Failure behaviour: Prometheus down -> the last decision is held (no call into the policy),
//! `MetricsAvailable=False` with the error, one Warning Event on the transition. Invalid spec ->
//! `Ready=False`/`Fitted=False` with the field named, a Warning Event, nothing actuated. Neither
//! panics nor loses the previous desired counts.

use std::collections::{BTreeMap, HashMap};

use goodput_core::{Catalog, Role, VariantLoad};
use goodput_sim::cluster::resolve_variants;
use goodput_sim::engine::EngineParams;
use goodput_sim::policy::{ClusterView, PoolView, VariantView};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::latency::predict;
use super::pool_share::{self, PoolHoldings};
use super::shared_capacity::{CapacityCache, SharedCapacity};
use crate::capacity::{CapacityModel, LoadShape};
use crate::crd::{
    AcceleratorPoolSpec, Actuation, EngineSetup, LoadStatus, ModelAutoscalerSpec,
    ModelAutoscalerStatus, ScaleTargetRef, VariantStatus,
};
use crate::export::{Direction, ErrorReason};
use crate::forecast::{Forecast, Forecaster, estimate_by_role};
use crate::goodput::GoodputPolicy;
use crate::metrics::Observation;

/// A workload's replica counts, from its `/scale` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleState {
    /// `spec.replicas`: the target (starting plus ready).
    pub spec: u32,
    /// `status.replicas`.
    pub status: u32,
}

/// Everything one reconcile looks at.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a ModelAutoscalerSpec,
    /// AcceleratorPools by name.
    pub pools: &'a BTreeMap<String, AcceleratorPoolSpec>,
    /// Per variant in spec order: its workload's replicas, None when unknown (target missing).
    pub current: &'a [Option<ScaleState>],
    /// The PromQL observation (keyed by variant name), or why it failed.
    pub metrics: Result<&'a Observation, String>,
    /// Requests the gateway holds or turned away for lack of an endpoint (`metrics.gateway`);
    /// None without that signal, and then the fleet is never scaled to zero.
    pub gateway_waiting: Option<u32>,
    pub previous: Option<&'a ModelAutoscalerStatus>,
    pub now: Timestamp,
    /// Every ModelAutoscaler the controller sees (`namespace/name`; this one may be among
    /// them), with the devices its spec and status say it holds per pool
    /// ([`pool_share::holdings_from_status`]). Where the reconciler decided for one itself,
    /// the larger of that and this counts.
    pub others: &'a BTreeMap<String, PoolHoldings>,
}

/// A Kubernetes Event to publish about the ModelAutoscaler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    /// PascalCase reason.
    pub reason: String,
    pub note: String,
}

/// One variant's desired count.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub variant: String,
    pub accelerator: String,
    pub pool: String,
    pub role: Role,
    pub devices_per_replica: u32,
    pub replicas: u32,
    pub current: Option<u32>,
    pub predicted_ttft_s: Option<f64>,
    pub predicted_itl_s: Option<f64>,
}

/// A `/scale` patch to apply (actuation `scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePatch {
    pub target: ScaleTargetRef,
    pub replicas: u32,
}

/// What one reconcile decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ModelAutoscalerStatus,
    /// Per variant; empty when the spec is invalid.
    pub desired: Vec<Desired>,
    pub events: Vec<EventNote>,
    pub patches: Vec<ScalePatch>,
    pub actuation: Actuation,
    /// Set when something failed (the status says what).
    pub error: Option<ErrorReason>,
    pub direction: Direction,
    pub metrics_available: bool,
    pub capacity_limited: bool,
    pub arrival_rate: f64,
    pub forecast_rate: f64,
    /// Devices held in each pool the spec uses, by every model the controller sees (this
    /// one's decision included); empty when the spec is invalid.
    pub pool_devices_used: PoolHoldings,
}

/// Per-object state between reconciles.
struct ModelState {
    fingerprint: String,
    setup: EngineSetup,
    engines: Vec<EngineParams>,
    /// USD per replica-hour per variant.
    prices: Vec<f64>,
    policy: GoodputPolicy<SharedCapacity>,
    capacity: SharedCapacity,
    /// A copy of the policy's forecaster, fed the same observations, for the status (the
    /// policy does not expose its last forecast).
    forecaster: Forecaster,
    last_forecast: Option<Forecast>,
    last_desired: Option<Vec<u32>>,
    last_shape: Option<LoadShape>,
    /// What the last decision holds in the pools (None before the first).
    holdings: Option<PoolHoldings>,
}

/// Runs reconciles for every ModelAutoscaler; holds their engines.
pub struct Reconciler {
    catalog: Catalog,
    cache: CapacityCache,
    states: HashMap<String, ModelState>,
}

impl Reconciler {
    pub fn new(catalog: Catalog, cache: CapacityCache) -> Self {
        Self {
            catalog,
            cache,
            states: HashMap::new(),
        }
    }

    /// Drops a deleted object's state.
    pub fn forget(&mut self, namespace: &str, name: &str) {
        self.states.remove(&key(namespace, name));
    }

    /// Objects with live state.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// One reconcile.
    pub fn reconcile(&mut self, snap: &Snapshot<'_>) -> Outcome {
        let k = key(snap.namespace, snap.name);
        let fingerprint = fingerprint(snap.spec, snap.pools);
        if self
            .states
            .get(&k)
            .is_none_or(|s| s.fingerprint != fingerprint)
        {
            match self.build(snap, fingerprint) {
                Ok(state) => {
                    self.states.insert(k.clone(), state);
                }
                Err(message) => {
                    self.states.remove(&k);
                    return invalid(snap, message);
                }
            }
        }
        let held_elsewhere = self.held_elsewhere(&k, &spec_pools(snap.spec), snap.others);
        match self.states.get_mut(&k) {
            Some(state) => decide(state, snap, &held_elsewhere),
            None => invalid(snap, "internal: no engine state".into()),
        }
    }

    /// Devices held in `pools` by the existing objects other than `me`: for each, the larger of
    /// what this reconciler last decided for it and what its status says. The decision is newer
    /// than the status until the status write reaches the watch cache; the status is newer when
    /// a target was scaled between decisions (its current replicas refreshed without a
    /// decision). Counting the larger never plans into devices another model may still hold.
    /// Only the pools asked about are summed: a pass over n objects costs n x pools lookups
    /// per object, without allocating.
    fn held_elsewhere(
        &self,
        me: &str,
        pools: &[&String],
        others: &BTreeMap<String, PoolHoldings>,
    ) -> PoolHoldings {
        let mut held = vec![0u32; pools.len()];
        for (key, from_status) in others {
            if key == me {
                continue;
            }
            let decided = self.states.get(key).and_then(|s| s.holdings.as_ref());
            for (slot, pool) in held.iter_mut().zip(pools) {
                let by_status = from_status.get(*pool).copied().unwrap_or(0);
                let by_decision = decided.and_then(|h| h.get(*pool)).copied().unwrap_or(0);
                *slot = slot.saturating_add(by_status.max(by_decision));
            }
        }
        pools
            .iter()
            .zip(held)
            .filter(|(_, devices)| *devices > 0)
            .map(|(pool, devices)| ((*pool).clone(), devices))
            .collect()
    }

    fn build(&self, snap: &Snapshot<'_>, fingerprint: String) -> Result<ModelState, String> {
        let setup = EngineSetup::from_spec(snap.spec, snap.pools, &self.catalog)
            .map_err(|e| e.to_string())?;
        let variants = resolve_variants(&setup.scenario, setup.scenario.mode)
            .map_err(|e| format!("spec.variants: {e}"))?;
        let engines: Vec<EngineParams> = variants.iter().map(|v| v.engine.clone()).collect();
        let prices = variants
            .iter()
            .map(|v| v.price_per_device_hour * v.tp as f64)
            .collect();
        let slo = setup.scenario.slo;
        let policy = GoodputPolicy::new(
            setup.config,
            SharedCapacity::new(self.cache.clone(), engines.clone(), slo),
        );
        Ok(ModelState {
            fingerprint,
            capacity: SharedCapacity::new(self.cache.clone(), engines.clone(), slo),
            forecaster: Forecaster::new(setup.config.forecast),
            setup,
            engines,
            prices,
            policy,
            last_forecast: None,
            last_desired: None,
            last_shape: None,
            holdings: None,
        })
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What the engine depends on: a change rebuilds the object's engine state.
fn fingerprint(
    spec: &ModelAutoscalerSpec,
    pools: &BTreeMap<String, AcceleratorPoolSpec>,
) -> String {
    let used: BTreeMap<&String, &AcceleratorPoolSpec> = spec
        .variants
        .iter()
        .filter_map(|v| pools.get_key_value(&v.pool))
        .collect();
    format!(
        "{}|{}",
        serde_json::to_string(spec).unwrap_or_default(),
        serde_json::to_string(&used).unwrap_or_default()
    )
}

fn unix_seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1e3
}

/// Sets a condition, keeping its transition time when the status does not change.
fn set_condition(
    conds: &mut Vec<Condition>,
    previous: Option<&ModelAutoscalerStatus>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    (generation, now): (Option<i64>, Timestamp),
) {
    let status_s = if status { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status_s)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conds.push(Condition {
        type_: type_.into(),
        status: status_s.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    });
}

fn was_true(previous: Option<&ModelAutoscalerStatus>, type_: &str) -> Option<bool> {
    previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.status == "True")
}

/// The outcome for a spec the engine cannot run: conditions and an Event, nothing actuated.
fn invalid(snap: &Snapshot<'_>, message: String) -> Outcome {
    let mut status = snap.previous.cloned().unwrap_or_default();
    status.observed_generation = snap.generation;
    status.reason = format!("invalid spec: {message}");
    let mut conds = Vec::new();
    let prev = snap.previous;
    let g = snap.generation;
    set_condition(
        &mut conds,
        prev,
        "Fitted",
        false,
        "InvalidSpec",
        message.clone(),
        (g, snap.now),
    );
    set_condition(
        &mut conds,
        prev,
        "Ready",
        false,
        "InvalidSpec",
        message.clone(),
        (g, snap.now),
    );
    // Keep what is known about the metrics and capacity; they did not change.
    for c in prev.map(|p| p.conditions.clone()).unwrap_or_default() {
        if c.type_ == "MetricsAvailable" || c.type_ == "CapacityLimited" {
            conds.push(c);
        }
    }
    status.conditions = conds;
    Outcome {
        status,
        desired: Vec::new(),
        events: vec![EventNote {
            warning: true,
            reason: "InvalidSpec".into(),
            note: message,
        }],
        patches: Vec::new(),
        actuation: snap.spec.policy.actuation,
        error: Some(ErrorReason::InvalidSpec),
        direction: Direction::Hold,
        metrics_available: was_true(prev, "MetricsAvailable").unwrap_or(false),
        capacity_limited: was_true(prev, "CapacityLimited").unwrap_or(false),
        arrival_rate: prev.and_then(|p| p.load).map_or(0.0, |l| l.arrival_rate),
        forecast_rate: prev.and_then(|p| p.load).map_or(0.0, |l| l.forecast_rate),
        pool_devices_used: PoolHoldings::new(),
    }
}

fn decide(state: &mut ModelState, snap: &Snapshot<'_>, held_elsewhere: &PoolHoldings) -> Outcome {
    let spec = snap.spec;
    let n = spec.variants.len();
    let now_s = unix_seconds(snap.now);
    let previous_desired: Option<Vec<u32>> = state.last_desired.clone().or_else(|| {
        snap.previous.and_then(|p| {
            let v: Option<Vec<u32>> = spec
                .variants
                .iter()
                .map(|sv| {
                    p.variants
                        .iter()
                        .find(|s| s.name == sv.name)
                        .map(|s| s.desired_replicas)
                })
                .collect();
            v
        })
    });
    // Targets as the engine sees them: the workload's own count; failing that, the last
    // decision; failing that, the minimum.
    let targets: Vec<u32> = (0..n)
        .map(|i| {
            snap.current
                .get(i)
                .copied()
                .flatten()
                .map(|c| c.spec)
                .or_else(|| previous_desired.as_ref().and_then(|d| d.get(i).copied()))
                .unwrap_or(spec.variants[i].min_replicas)
        })
        .collect();
    let loads: Vec<Option<VariantLoad>> = match &snap.metrics {
        Ok(obs) => spec
            .variants
            .iter()
            .map(|v| obs.get(&vec![v.name.clone()]).cloned())
            .collect(),
        Err(_) => vec![None; n],
    };
    // What other models hold in the AcceleratorPools behind each of the engine's pools (pools
    // of one accelerator type are one pool to the engine, their devices added).
    let held_by_pool: Vec<u32> = state
        .setup
        .scenario
        .pools
        .iter()
        .map(|p| {
            held_elsewhere
                .iter()
                .filter(|(name, _)| {
                    state
                        .setup
                        .accelerators
                        .iter()
                        .any(|(a, n)| n == *name && *a == p.accelerator)
                })
                .fold(0u32, |sum, (_, &devices)| sum.saturating_add(devices))
        })
        .collect();
    let view = ClusterView {
        now_s,
        variants: spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let cur = snap.current.get(i).copied().flatten();
                let ready = cur.map_or(targets[i], |c| c.status.min(c.spec));
                VariantView {
                    name: v.name.clone(),
                    accelerator: state.setup.accelerators[i].0.clone(),
                    tp: v.accelerators_per_replica,
                    role: v.role.into(),
                    price_per_hour: state.prices[i],
                    min_replicas: v.min_replicas,
                    max_replicas: v.max_replicas,
                    target: targets[i],
                    ready,
                    starting: targets[i].saturating_sub(ready),
                    draining: 0,
                    load: loads[i].clone(),
                }
            })
            .collect(),
        pools: state
            .setup
            .scenario
            .pools
            .iter()
            .zip(&held_by_pool)
            .map(|(p, &held)| PoolView {
                accelerator: p.accelerator.clone(),
                capacity: p.capacity.saturating_sub(held),
                in_use: spec
                    .variants
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| state.setup.accelerators[*i].0 == p.accelerator)
                    .map(|(i, v)| targets[i] * v.accelerators_per_replica)
                    .sum(),
                startup_s: p.startup_s,
            })
            .collect(),
        // Without the gateway's signal the policy never scales to zero: a fleet at zero shows
        // no demand in the engines' metrics and would never wake.
        gateway_waiting: snap.gateway_waiting,
    };
    let prev = snap.previous;
    let g = snap.generation;
    let mut events = Vec::new();
    let mut conds = Vec::new();
    set_condition(
        &mut conds,
        prev,
        "Fitted",
        true,
        "CapacityModelReady",
        format!(
            "capacity from the engine model of {} at TTFT {} ms / ITL {} ms (p{})",
            state.setup.scenario.model,
            state.setup.scenario.slo.ttft_ms,
            state.setup.scenario.slo.itl_ms,
            state.setup.scenario.slo.percentile
        ),
        (g, snap.now),
    );

    let (mut desired, mut reasons, metrics_ok, capacity_limited) = match &snap.metrics {
        Err(message) => {
            // Prometheus down: hold the last decision, never decide on a gap.
            let held = previous_desired.clone().unwrap_or_else(|| targets.clone());
            set_condition(
                &mut conds,
                prev,
                "MetricsAvailable",
                false,
                "PrometheusError",
                message.clone(),
                (g, snap.now),
            );
            if was_true(prev, "MetricsAvailable") != Some(false) {
                events.push(EventNote {
                    warning: true,
                    reason: "MetricsUnavailable".into(),
                    note: format!("holding the last decision: {message}"),
                });
            }
            let reasons = vec!["hold: metrics unavailable".to_string(); n];
            let limited = was_true(prev, "CapacityLimited").unwrap_or(false);
            (held, reasons, false, limited)
        }
        Ok(_) => {
            let est = {
                let loads: Vec<(Option<&VariantLoad>, u32, Role)> = view
                    .variants
                    .iter()
                    .map(|v| (v.load.as_ref(), v.ready, v.role))
                    .collect();
                estimate_by_role(&loads, state.setup.config.stale_after_s)
            };
            let running: f64 = loads.iter().flatten().map(|l| l.running).sum();
            let fresh = est.fresh && !(est.rate <= 0.0 && running > 0.0);
            if fresh {
                let startup = view
                    .pools
                    .iter()
                    .map(|p| p.startup_s)
                    .fold(0.0f64, f64::max);
                let fc = state.forecaster.observe(
                    now_s,
                    est.rate,
                    startup + state.setup.config.interval_s,
                );
                state.last_forecast = Some(fc);
                if est.shape.mean_input_tokens > 0.0 && est.rate >= 0.5 {
                    state.last_shape = Some(est.shape);
                }
            }
            let decisions = state.policy.decide(&view);
            let mut desired = targets.clone();
            let mut reasons = vec![
                if fresh {
                    "hold: the plan matches the current replicas".to_string()
                } else {
                    "hold: stale or missing metrics, no scale-down".to_string()
                };
                n
            ];
            let mut limited = None;
            for d in decisions {
                if let Some(slot) = desired.get_mut(d.variant) {
                    *slot = d.replicas;
                    limited = Some(d.reason.contains("capacity-limited"));
                    reasons[d.variant] = d.reason;
                }
            }
            // The policy's own record covers a plan that changed nothing (a pool other models
            // filled before this one's first decision); the decisions' reasons, and failing
            // both the previous condition, the rest.
            let limited = state
                .policy
                .capacity_limited()
                .or(limited)
                .unwrap_or_else(|| was_true(prev, "CapacityLimited").unwrap_or(false));
            if fresh {
                set_condition(
                    &mut conds,
                    prev,
                    "MetricsAvailable",
                    true,
                    "MetricsFound",
                    format!("{:.2} requests/s seen", est.rate),
                    (g, snap.now),
                );
            } else {
                set_condition(
                    &mut conds,
                    prev,
                    "MetricsAvailable",
                    false,
                    "MetricsStale",
                    "a variant with ready replicas has no fresh series; scale-down held".into(),
                    (g, snap.now),
                );
            }
            if was_true(prev, "MetricsAvailable") == Some(false) && fresh {
                events.push(EventNote {
                    warning: false,
                    reason: "MetricsRecovered".into(),
                    note: "metrics are available again".into(),
                });
            }
            (desired, reasons, fresh, limited)
        }
    };
    set_condition(
        &mut conds,
        prev,
        "CapacityLimited",
        capacity_limited,
        if capacity_limited {
            "PoolsExhausted"
        } else {
            "WithinCapacity"
        },
        if capacity_limited {
            let mut m = "the accelerator pools cannot carry the forecast load".to_string();
            let shared: Vec<String> = spec_pools(spec)
                .into_iter()
                .filter_map(|name| {
                    let held = held_elsewhere.get(name).copied().filter(|&h| h > 0)?;
                    let devices = snap.pools.get(name).map_or(0, |p| p.devices);
                    Some(format!("{held} of pool {name}'s {devices} devices"))
                })
                .collect();
            if !shared.is_empty() {
                m.push_str(&format!("; other models hold {}", shared.join(", ")));
            }
            m
        } else {
            "the pools carry the forecast load".into()
        },
        (g, snap.now),
    );
    let decided = metrics_ok || previous_desired.is_some();
    set_condition(
        &mut conds,
        prev,
        "Ready",
        metrics_ok,
        if metrics_ok {
            "Decided"
        } else if decided {
            "HoldingLastDecision"
        } else {
            "WaitingForMetrics"
        },
        if metrics_ok {
            "desired replicas follow the forecast load".into()
        } else {
            "no fresh metrics; the last decision stands".into()
        },
        (g, snap.now),
    );

    // Whatever was held (a workload's own count, a decision made under an older spec), what is
    // actuated stays within the spec's bounds.
    for (i, v) in spec.variants.iter().enumerate() {
        let bounded = desired[i].clamp(v.min_replicas, v.max_replicas.max(v.min_replicas));
        if bounded != desired[i] {
            reasons[i] = format!(
                "{} (held {} clamped to [{}, {}])",
                reasons[i], desired[i], v.min_replicas, v.max_replicas
            );
            desired[i] = bounded;
        }
    }

    // Events for changed targets.
    let before = previous_desired.clone().unwrap_or_else(|| targets.clone());
    for (i, v) in spec.variants.iter().enumerate() {
        let (b, d) = (before.get(i).copied().unwrap_or(0), desired[i]);
        if d != b {
            events.push(EventNote {
                warning: false,
                reason: if d > b { "ScaleUp" } else { "ScaleDown" }.into(),
                note: format!("{}: {b} -> {d} replicas ({})", v.name, reasons[i]),
            });
        }
    }
    let total = |v: &[u32]| v.iter().sum::<u32>();
    let direction = match total(&desired).cmp(&total(&targets)) {
        std::cmp::Ordering::Greater => Direction::Up,
        std::cmp::Ordering::Less => Direction::Down,
        std::cmp::Ordering::Equal => Direction::Hold,
    };

    // Predicted latency at the desired fleet: the forecast split in proportion to capacity.
    let shape = state.last_shape.unwrap_or(state.setup.config.default_shape);
    let forecast = state.last_forecast.map_or(0.0, |f| f.provision_rate);
    let per_replica: Vec<f64> = (0..n).map(|i| state.capacity.max_rate(i, &shape)).collect();
    let fleet: f64 = per_replica
        .iter()
        .zip(&desired)
        .map(|(r, &d)| r * d as f64)
        .sum();
    let mut variants = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for (i, v) in spec.variants.iter().enumerate() {
        let rate = if fleet > 0.0 && desired[i] > 0 {
            forecast * per_replica[i] / fleet
        } else {
            0.0
        };
        let pred = predict(&state.engines[i], &shape, rate);
        let current = snap.current.get(i).copied().flatten().map(|c| c.spec);
        variants.push(VariantStatus {
            name: v.name.clone(),
            current_replicas: current.unwrap_or(0),
            desired_replicas: desired[i],
            predicted_ttft_ms: pred.map(|p| round3(p.0 * 1e3)),
            predicted_itl_ms: pred.map(|p| round3(p.1 * 1e3)),
            reason: reasons[i].clone(),
        });
        out.push(Desired {
            variant: v.name.clone(),
            accelerator: state.setup.accelerators[i].0.clone(),
            pool: state.setup.accelerators[i].1.clone(),
            role: v.role.into(),
            devices_per_replica: v.accelerators_per_replica,
            replicas: desired[i],
            current,
            predicted_ttft_s: pred.map(|p| p.0),
            predicted_itl_s: pred.map(|p| p.1),
        });
    }
    let patches = if spec.policy.actuation == Actuation::Scale {
        spec.variants
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                snap.current
                    .get(*i)
                    .copied()
                    .flatten()
                    .is_some_and(|c| c.spec != desired[*i])
            })
            .map(|(i, v)| ScalePatch {
                target: v.scale_target_ref.clone(),
                replicas: desired[i],
            })
            .collect()
    } else {
        Vec::new()
    };
    for (i, v) in spec.variants.iter().enumerate() {
        if snap.current.get(i).copied().flatten().is_none() {
            events.push(EventNote {
                warning: true,
                reason: "TargetNotFound".into(),
                note: format!(
                    "{}: {} {} has no readable /scale",
                    v.name, v.scale_target_ref.kind, v.scale_target_ref.name
                ),
            });
        }
    }
    let cost: f64 = desired
        .iter()
        .zip(&state.prices)
        .map(|(&d, p)| d as f64 * p)
        .sum();
    let arrival = match &snap.metrics {
        Ok(_) => {
            let with_roles: Vec<(Option<&VariantLoad>, u32, Role)> = loads
                .iter()
                .zip(&view.variants)
                .map(|(l, v)| (l.as_ref(), v.ready, v.role))
                .collect();
            estimate_by_role(&with_roles, f64::INFINITY).rate
        }
        Err(_) => prev.and_then(|p| p.load).map_or(0.0, |l| l.arrival_rate),
    };
    let reason = if !metrics_ok {
        match &snap.metrics {
            Err(e) => format!("holding the last decision: metrics unavailable ({e})"),
            Ok(_) => "stale or missing metrics: scale-down held".into(),
        }
    } else {
        reasons
            .iter()
            .find(|r| r.starts_with("goodput"))
            .cloned()
            .unwrap_or_else(|| format!("hold: {arrival:.2} requests/s, the plan matches"))
    };
    let status = ModelAutoscalerStatus {
        observed_generation: g,
        conditions: conds,
        load: Some(LoadStatus {
            arrival_rate: round3(arrival),
            forecast_rate: round3(forecast),
            mean_input_tokens: round3(shape.mean_input_tokens),
            mean_output_tokens: round3(shape.mean_output_tokens),
        }),
        desired_replicas: total(&desired),
        cost_per_hour: round3(cost),
        variants,
        reason,
        last_decision_time: if metrics_ok {
            Some(snap.now.to_string())
        } else {
            prev.and_then(|p| p.last_decision_time.clone())
        },
    };
    state.last_desired = Some(desired);
    let own = pool_share::holdings_of(&out);
    let mut pool_devices_used = PoolHoldings::new();
    for name in spec_pools(spec) {
        let held = held_elsewhere.get(name).copied().unwrap_or(0);
        let mine = own.get(name).copied().unwrap_or(0);
        pool_devices_used.insert(name.clone(), held.saturating_add(mine));
    }
    state.holdings = Some(own);
    Outcome {
        status,
        desired: out,
        events,
        patches,
        actuation: spec.policy.actuation,
        error: snap.metrics.is_err().then_some(ErrorReason::Metrics),
        direction,
        metrics_available: metrics_ok,
        capacity_limited,
        arrival_rate: arrival,
        forecast_rate: forecast,
        pool_devices_used,
    }
}

/// The AcceleratorPools a spec's variants name, each once.
fn spec_pools(spec: &ModelAutoscalerSpec) -> Vec<&String> {
    let mut names: Vec<&String> = spec.variants.iter().map(|v| &v.pool).collect();
    names.sort();
    names.dedup();
    names
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModelAutoscalerSpec;

    fn spec() -> ModelAutoscalerSpec {
        serde_saphyr::from_str(
            r#"
model: llama-3.1-8b
slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 60 } }
variants:
  - { name: h100, pool: h100, scaleTargetRef: { name: llama-h100 }, maxReplicas: 8 }
  - { name: l40s, pool: l40s, scaleTargetRef: { name: llama-l40s }, maxReplicas: 16 }
policy: { actuation: scale, intervalSeconds: 30 }
"#,
        )
        .unwrap()
    }

    fn pools() -> BTreeMap<String, AcceleratorPoolSpec> {
        ["h100", "l40s"]
            .into_iter()
            .map(|a| {
                (
                    a.to_string(),
                    AcceleratorPoolSpec {
                        accelerator_type: a.into(),
                        devices: 16,
                        price_per_device_hour: None,
                        node_selector: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }

    fn obs(rate: f64) -> Observation {
        let load = |r: f64| VariantLoad {
            replicas_reporting: 1,
            request_rate: r,
            mean_prompt_tokens: 1000.0,
            mean_output_tokens: 200.0,
            age_s: 5.0,
            ..Default::default()
        };
        [
            (vec!["h100".to_string()], load(rate / 2.0)),
            (vec!["l40s".to_string()], load(rate / 2.0)),
        ]
        .into_iter()
        .collect()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn cond<'a>(s: &'a ModelAutoscalerStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn load_drives_desired_and_prometheus_down_holds_it() {
        let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
        let spec = spec();
        let pools = pools();
        let cur = [
            Some(ScaleState { spec: 1, status: 1 }),
            Some(ScaleState { spec: 1, status: 1 }),
        ];
        let o1 = obs(2.0);
        let snap = Snapshot {
            namespace: "llm",
            name: "llama",
            generation: Some(1),
            spec: &spec,
            pools: &pools,
            current: &cur,
            metrics: Ok(&o1),
            gateway_waiting: None,
            previous: None,
            now: at(0),
            others: &BTreeMap::new(),
        };
        let a = r.reconcile(&snap);
        assert_eq!(a.status.observed_generation, Some(1));
        assert_eq!(cond(&a.status, "MetricsAvailable").status, "True");
        assert_eq!(cond(&a.status, "Ready").status, "True");
        assert_eq!(cond(&a.status, "Fitted").status, "True");
        assert!(a.error.is_none());
        let low: u32 = a.desired.iter().map(|d| d.replicas).sum();
        assert!(low >= 1);
        // Ten times the load asks for more replicas, patched in scale mode.
        let o2 = obs(40.0);
        let b = r.reconcile(&Snapshot {
            metrics: Ok(&o2),
            gateway_waiting: None,
            previous: Some(&a.status),
            now: at(30),
            ..snap.clone()
        });
        let high: u32 = b.desired.iter().map(|d| d.replicas).sum();
        assert!(high > low, "{low} -> {high}");
        assert_eq!(b.direction, Direction::Up);
        assert!(!b.patches.is_empty());
        assert!(b.events.iter().any(|e| e.reason == "ScaleUp"));
        assert!(
            b.status
                .variants
                .iter()
                .any(|v| v.predicted_ttft_ms.is_some())
        );
        // Prometheus down: the same desired counts, the condition and one Warning.
        let c = r.reconcile(&Snapshot {
            metrics: Err("connection refused".into()),
            gateway_waiting: None,
            previous: Some(&b.status),
            now: at(60),
            ..snap.clone()
        });
        let held: Vec<u32> = c.desired.iter().map(|d| d.replicas).collect();
        let before: Vec<u32> = b.desired.iter().map(|d| d.replicas).collect();
        assert_eq!(held, before);
        let m = cond(&c.status, "MetricsAvailable");
        assert_eq!(
            (m.status.as_str(), m.reason.as_str()),
            ("False", "PrometheusError")
        );
        assert!(m.message.contains("connection refused"));
        assert_eq!(c.error, Some(ErrorReason::Metrics));
        assert!(
            c.events
                .iter()
                .any(|e| e.warning && e.reason == "MetricsUnavailable")
        );
        // A second failed pass does not repeat the Warning.
        let d = r.reconcile(&Snapshot {
            metrics: Err("connection refused".into()),
            gateway_waiting: None,
            previous: Some(&c.status),
            now: at(90),
            ..snap.clone()
        });
        assert!(!d.events.iter().any(|e| e.reason == "MetricsUnavailable"));
        assert_eq!(
            cond(&d.status, "MetricsAvailable").last_transition_time,
            m.last_transition_time
        );
    }

    #[test]
    fn an_invalid_spec_gets_a_condition_and_an_event() {
        let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
        let mut spec = spec();
        spec.variants[1].pool = "tpu".into();
        let pools = pools();
        let o = obs(1.0);
        let out = r.reconcile(&Snapshot {
            namespace: "llm",
            name: "bad",
            generation: Some(3),
            spec: &spec,
            pools: &pools,
            current: &[None, None],
            metrics: Ok(&o),
            gateway_waiting: None,
            previous: None,
            now: at(0),
            others: &BTreeMap::new(),
        });
        assert_eq!(out.error, Some(ErrorReason::InvalidSpec));
        assert!(out.desired.is_empty() && out.patches.is_empty());
        let ready = cond(&out.status, "Ready");
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("spec.variants[1].pool"),
            "{}",
            ready.message
        );
        assert!(
            out.events
                .iter()
                .any(|e| e.warning && e.reason == "InvalidSpec")
        );
        assert_eq!(out.status.observed_generation, Some(3));
    }

    /// One H100 variant of Llama-3.1-8B (min 0) on the pool `h100`.
    fn one_variant_spec() -> ModelAutoscalerSpec {
        serde_saphyr::from_str(
            r#"
model: llama-3.1-8b
slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 60 } }
variants:
  - { name: h100, pool: h100, scaleTargetRef: { name: x }, minReplicas: 0, maxReplicas: 16 }
policy: { actuation: scale, intervalSeconds: 30 }
"#,
        )
        .unwrap()
    }

    fn h100_load(rate: f64) -> Observation {
        let load = VariantLoad {
            replicas_reporting: 1,
            request_rate: rate,
            mean_prompt_tokens: 1000.0,
            mean_output_tokens: 200.0,
            age_s: 5.0,
            ..Default::default()
        };
        [(vec!["h100".to_string()], load)].into_iter().collect()
    }

    fn six_h100s() -> BTreeMap<String, AcceleratorPoolSpec> {
        let mut pools = pools();
        pools.retain(|name, _| name == "h100");
        if let Some(p) = pools.get_mut("h100") {
            p.devices = 6;
        }
        pools
    }

    #[test]
    fn models_sharing_a_pool_stay_within_its_devices_and_take_what_another_releases() {
        let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
        let spec = one_variant_spec();
        let pools = six_h100s();
        let others: BTreeMap<String, PoolHoldings> = ["llm/a", "llm/b"]
            .into_iter()
            .map(|k| (k.to_string(), PoolHoldings::new()))
            .collect();
        // Each workload runs what was last decided for it (replicas ready at once); b's
        // starts empty (a workload already running before its first decision is known to no
        // other model until that decision).
        let mut running = [1u32, 0u32];
        let mut previous: [Option<ModelAutoscalerStatus>; 2] = [None, None];
        let mut b_got_devices_back = false;
        for step in 0..60i64 {
            // Model a is busy for ten minutes, then nearly idle; model b is busy throughout.
            let rates = [if step < 20 { 60.0 } else { 0.6 }, 60.0];
            for (m, name) in ["a", "b"].into_iter().enumerate() {
                let o = h100_load(rates[m]);
                let cur = [Some(ScaleState {
                    spec: running[m],
                    status: running[m],
                })];
                let out = r.reconcile(&Snapshot {
                    namespace: "llm",
                    name,
                    generation: Some(1),
                    spec: &spec,
                    pools: &pools,
                    current: &cur,
                    metrics: Ok(&o),
                    gateway_waiting: None,
                    previous: previous[m].as_ref(),
                    now: at(step * 30),
                    others: &others,
                });
                running[m] = out.desired[0].replicas;
                let used = out.pool_devices_used.get("h100").copied().unwrap_or(0);
                assert!(
                    used <= 6,
                    "step {step}, model {name}: {used} devices of 6 held"
                );
                assert!(
                    running[0] + running[1] <= 6,
                    "step {step}: a {} + b {} replicas on 6 devices",
                    running[0],
                    running[1]
                );
                if step == 10 && m == 1 {
                    // Both want more than the pool: b, second, is limited and told by whom.
                    assert!(out.capacity_limited);
                    let c = cond(&out.status, "CapacityLimited");
                    assert!(
                        c.message.contains("other models hold") && c.message.contains("h100"),
                        "{}",
                        c.message
                    );
                }
                if step >= 40 && m == 1 && running[1] >= 4 {
                    b_got_devices_back = true;
                }
                previous[m] = Some(out.status);
            }
        }
        assert!(
            b_got_devices_back,
            "b never took the devices a released: a {}, b {}",
            running[0], running[1]
        );
    }

    #[test]
    fn a_status_from_before_a_restart_counts_and_a_deleted_model_does_not() {
        let spec = one_variant_spec();
        let pools = six_h100s();
        let o = h100_load(60.0);
        let cur = [Some(ScaleState { spec: 1, status: 1 })];
        let decide_b = |r: &mut Reconciler, others: &BTreeMap<String, PoolHoldings>| {
            r.reconcile(&Snapshot {
                namespace: "llm",
                name: "b",
                generation: Some(1),
                spec: &spec,
                pools: &pools,
                current: &cur,
                metrics: Ok(&o),
                gateway_waiting: None,
                previous: None,
                now: at(0),
                others,
            })
            .desired[0]
                .replicas
        };
        // A fresh reconciler (a restarted controller) learns from a's status that it holds 5.
        let from_status: BTreeMap<String, PoolHoldings> = [(
            "llm/a".to_string(),
            [("h100".to_string(), 5)].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
        assert_eq!(decide_b(&mut r, &from_status), 1);
        // Once a is gone from the cluster, what it held is free again.
        let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
        assert_eq!(decide_b(&mut r, &BTreeMap::new()), 6);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Two models on one pool, under any sequence of loads, never hold more devices
        /// between them than the pool has, as long as their minimums fit in it.
        #[test]
        fn models_sharing_a_pool_never_hold_more_than_it_has(
            devices in 1u32..12,
            mins in (0u32..2, 0u32..2),
            loads in proptest::collection::vec((0.0f64..80.0, 0.0f64..80.0), 1..24),
            tp in proptest::prop_oneof![proptest::strategy::Just(1u32), proptest::strategy::Just(2u32)],
        ) {
            let mut spec = one_variant_spec();
            spec.variants[0].accelerators_per_replica = tp;
            let mut pools = six_h100s();
            if let Some(p) = pools.get_mut("h100") {
                p.devices = devices;
            }
            let min = [mins.0, mins.1];
            proptest::prop_assume!((min[0] + min[1]) * tp <= devices);
            let specs: Vec<ModelAutoscalerSpec> = min
                .iter()
                .map(|&m| {
                    let mut s = spec.clone();
                    s.variants[0].min_replicas = m;
                    s
                })
                .collect();
            let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
            // The workloads start at their minimums, before either model's first decision.
            let mut running = min;
            let mut previous: [Option<ModelAutoscalerStatus>; 2] = [None, None];
            for (step, rates) in loads.iter().enumerate() {
                for (m, name) in ["a", "b"].into_iter().enumerate() {
                    let spec = &specs[m];
                    // What the controller's watch cache shows: every model's spec and status.
                    let others: BTreeMap<String, PoolHoldings> = ["llm/a", "llm/b"]
                        .into_iter()
                        .zip(&previous)
                        .zip(&specs)
                        .map(|((k, st), sp)| {
                            (k.to_string(), pool_share::holdings_from_status(sp, st.as_ref()))
                        })
                        .collect();
                    let o = h100_load(if m == 0 { rates.0 } else { rates.1 });
                    let cur = [Some(ScaleState { spec: running[m], status: running[m] })];
                    let out = r.reconcile(&Snapshot {
                        namespace: "llm",
                        name,
                        generation: Some(1),
                        spec,
                        pools: &pools,
                        current: &cur,
                        metrics: Ok(&o),
                        gateway_waiting: None,
                        previous: previous[m].as_ref(),
                        now: at(step as i64 * 30),
                        others: &others,
                    });
                    running[m] = out.desired[0].replicas;
                    proptest::prop_assert!(
                        (running[0] + running[1]) * tp <= devices,
                        "step {}: {} + {} replicas of {} devices on {}",
                        step, running[0], running[1], tp, devices
                    );
                    proptest::prop_assert!(running[m] >= min[m]);
                    previous[m] = Some(out.status);
                }
            }
        }

        /// Whatever a user writes in a spec, and whatever Prometheus answers, a reconcile
        /// returns an outcome (valid or InvalidSpec) and never panics.
        #[test]
        fn any_spec_and_any_metrics_reconcile_without_panicking(
            min in 0u32..20, max in 0u32..20, tp in 0u32..9, devices in 0u32..64,
            ttft in proptest::prop_oneof![-10.0f64..5000.0, proptest::strategy::Just(f64::NAN), proptest::strategy::Just(f64::INFINITY)],
            pct in -5.0f64..150.0,
            rate in proptest::prop_oneof![0.0f64..100.0, proptest::strategy::Just(f64::NAN), proptest::strategy::Just(-1.0)],
            prompt in proptest::prop_oneof![0.0f64..20000.0, proptest::strategy::Just(f64::INFINITY)],
            age in 0.0f64..1000.0,
            scaled in proptest::option::of(0u32..40),
        ) {
            let mut spec = spec();
            spec.variants[0].min_replicas = min;
            spec.variants[0].max_replicas = max;
            spec.variants[0].accelerators_per_replica = tp;
            spec.slo.ttft.target_ms = ttft;
            spec.slo.itl.percentile = pct;
            let mut pools = pools();
            if let Some(p) = pools.get_mut("h100") {
                p.devices = devices;
            }
            let mut o = obs(1.0);
            if let Some(l) = o.get_mut(&vec!["h100".to_string()]) {
                l.request_rate = rate;
                l.mean_prompt_tokens = prompt;
                l.age_s = age;
            }
            let cur = [scaled.map(|s| ScaleState { spec: s, status: s / 2 }), None];
            let mut r = Reconciler::new(Catalog::builtin(), CapacityCache::default());
            let out = r.reconcile(&Snapshot {
                namespace: "llm",
                name: "p",
                generation: Some(1),
                spec: &spec,
                pools: &pools,
                current: &cur,
                metrics: Ok(&o),
                gateway_waiting: None,
                previous: None,
                now: at(0),
                others: &BTreeMap::new(),
            });
            match out.error {
                Some(ErrorReason::InvalidSpec) => proptest::prop_assert!(out.desired.is_empty()),
                _ => {
                    for (d, v) in out.desired.iter().zip(&spec.variants) {
                        proptest::prop_assert!(d.replicas <= v.max_replicas.max(v.min_replicas));
                    }
                }
            }
        }
    }
}
