//! The discrete-event cluster: pools of accelerators, replicas of each variant with start-up
//! delays and draining, a router and an autoscaler in the loop, KV hand-off between prefill and
//! decode replicas, and the Prometheus view the autoscaler reads.
//!
//! Events come from three sources merged in time order: the workload's arrivals (a cursor, not
//! heap entries), the engines' step ends, and the cluster's own timers (replica ready, KV
//! hand-off, scrape, autoscale, sample). Ties break by kind, then insertion order, so a run is
//! deterministic. Requests that arrive while no replica can take them are held at the gateway
//! and dispatched when one becomes ready.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use goodput_core::catalog::EngineLimits;
use goodput_core::perf::{StackOverheads, kv_capacity_tokens, kv_transfer_time};
use goodput_core::{Role, StepCost};

use crate::engine::{Engine, EngineParams, EngineRequest, Finished, StepMode};
use crate::observe::{Gauges, PromView};
use crate::policy::{
    Autoscaler, ClusterView, PoolView, ReplicaView, RouteRequest, Router, VariantView,
};
use crate::report::{ScaleEvent, TimeSeries};
use crate::scenario::{Scenario, ScenarioError};
use crate::workload::Workload;

/// A variant resolved against the catalog.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub accelerator: String,
    pub tp: u32,
    pub role: Role,
    pub price_per_device_hour: f64,
    pub pool: usize,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub initial_replicas: u32,
    pub engine: EngineParams,
    /// KV transfer time per prompt token to a decode replica, and its setup (prefill role).
    pub transfer: (f64, f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ReplicaState {
    Starting { ready_at: f64 },
    Ready,
    Draining,
    Stopped,
}

#[derive(Debug)]
struct Replica {
    variant: usize,
    state: ReplicaState,
    engine: Engine,
    created_s: f64,
    stopped_s: Option<f64>,
    /// Engine event currently queued (time, epoch).
    queued: Option<f64>,
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // Order = tie-break at equal times: engines finish steps before new work is routed.
    ReplicaStep,
    ReplicaReady,
    Handoff,
    Scrape,
    Autoscale,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Event {
    t: f64,
    kind: Kind,
    seq: u64,
    /// Replica id, or request id for hand-offs.
    target: usize,
    epoch: u64,
}

impl Eq for Event {}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (t, kind, seq).
        other
            .t
            .total_cmp(&self.t)
            .then(other.kind.cmp(&self.kind))
            .then(other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-request outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestOutcome {
    pub arrival_s: f64,
    pub first_token_s: Option<f64>,
    pub finish_s: Option<f64>,
    pub output_tokens: u32,
    pub cached_tokens: u32,
    pub rejected: bool,
    /// Variant that produced the tokens (decode variant under P/D).
    pub variant: Option<usize>,
}

impl RequestOutcome {
    /// Time to first token, seconds.
    pub fn ttft_s(&self) -> Option<f64> {
        self.first_token_s.map(|f| f - self.arrival_s)
    }
    /// Mean inter-token latency, seconds (0 for single-token outputs).
    pub fn mean_itl_s(&self) -> Option<f64> {
        let (f, e) = (self.first_token_s?, self.finish_s?);
        Some(if self.output_tokens > 1 {
            (e - f) / (self.output_tokens - 1) as f64
        } else {
            0.0
        })
    }
}

/// Raw results of a cluster run, before summarising.
#[derive(Debug)]
pub struct ClusterRun {
    pub outcomes: Vec<RequestOutcome>,
    pub variants: Vec<Variant>,
    /// (variant, created, stopped-or-end) per replica.
    pub replica_spans: Vec<(usize, f64, f64)>,
    pub served_per_variant: Vec<u64>,
    pub scale_events: Vec<ScaleEvent>,
    pub timeseries: TimeSeries,
    pub end_s: f64,
    pub engine_steps: u64,
    pub events: u64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
}

/// Options of one run.
pub struct RunOptions<'a> {
    pub mode: StepMode,
    /// Called with the fraction of simulated time done, now and then.
    pub progress: Option<&'a dyn Fn(f64)>,
}

/// Resolves the scenario's variants against its catalog.
pub fn resolve_variants(
    scenario: &Scenario,
    mode: StepMode,
) -> Result<Vec<Variant>, ScenarioError> {
    let catalog = scenario.catalog()?;
    scenario.validate(&catalog)?;
    let model = catalog.model(&scenario.model)?;
    let overheads = StackOverheads::default();
    let mut out = Vec::new();
    for v in &scenario.variants {
        let acc = catalog.accelerator(&v.accelerator)?;
        let pool = scenario
            .pools
            .iter()
            .position(|p| p.accelerator == v.accelerator)
            .ok_or_else(|| ScenarioError::Invalid(format!("no pool for {}", v.accelerator)))?;
        let limits: EngineLimits = scenario.engine_limits(v, &catalog)?;
        let price = scenario.pools[pool]
            .price_per_hour
            .unwrap_or(acc.price_per_hour);
        let per_token = kv_transfer_time(model, acc, v.tp, 1, 0.0, scenario.kv_transfer.efficiency);
        out.push(Variant {
            name: v.name.clone(),
            accelerator: v.accelerator.clone(),
            tp: v.tp,
            role: v.role,
            price_per_device_hour: price,
            pool,
            min_replicas: v.min_replicas,
            max_replicas: v.max_replicas,
            initial_replicas: v.replicas,
            engine: EngineParams {
                cost: StepCost::new(model, acc, v.tp, &overheads),
                limits,
                kv_capacity_tokens: kv_capacity_tokens(model, acc, v.tp, &limits),
                role: v.role,
                mode,
                max_model_len: model.max_context as u64,
            },
            transfer: (per_token, scenario.kv_transfer.setup_ms / 1e3),
        });
    }
    Ok(out)
}

struct Sim<'a> {
    scenario: &'a Scenario,
    variants: Vec<Variant>,
    replicas: Vec<Replica>,
    heap: BinaryHeap<Event>,
    seq: u64,
    router: &'a mut dyn Router,
    autoscaler: &'a mut dyn Autoscaler,
    view: PromView,
    workload: &'a Workload,
    hash_ids: Vec<Arc<[u64]>>,
    outcomes: Vec<RequestOutcome>,
    /// Requests held at the gateway: (request id, entry role is decode after hand-off).
    pending: VecDeque<(u64, bool)>,
    targets: Vec<u32>,
    scale_events: Vec<ScaleEvent>,
    ts: TimeSeries,
    // Sampling accumulators.
    arrivals_in_sample: u64,
    ttfts_in_sample: Vec<f64>,
    itls_in_sample: Vec<f64>,
    events: u64,
    served: Vec<u64>,
}

/// Runs the scenario's cluster over `workload` with the given policies.
pub fn run_cluster(
    scenario: &Scenario,
    workload: &Workload,
    router: &mut dyn Router,
    autoscaler: &mut dyn Autoscaler,
    options: &RunOptions<'_>,
) -> Result<ClusterRun, ScenarioError> {
    let variants = resolve_variants(scenario, options.mode)?;
    let end_s = workload.duration_s() + scenario.drain_s;
    let sample_interval = if scenario.sample_interval_s > 0.0 {
        scenario.sample_interval_s
    } else {
        nice_interval(end_s / 300.0)
    };
    let n = variants.len();
    let mut sim = Sim {
        scenario,
        targets: variants.iter().map(|v| v.initial_replicas).collect(),
        variants,
        replicas: Vec::new(),
        heap: BinaryHeap::new(),
        seq: 0,
        router,
        autoscaler,
        view: PromView::new(scenario.observation.lag_s, scenario.observation.window_s),
        workload,
        hash_ids: workload
            .requests
            .iter()
            .map(|r| Arc::from(r.hash_ids.as_slice()))
            .collect(),
        outcomes: workload
            .requests
            .iter()
            .map(|r| RequestOutcome {
                arrival_s: r.arrival_s,
                ..Default::default()
            })
            .collect(),
        pending: VecDeque::new(),
        scale_events: Vec::new(),
        ts: TimeSeries {
            interval_s: sample_interval,
            ..Default::default()
        },
        arrivals_in_sample: 0,
        ttfts_in_sample: Vec::new(),
        itls_in_sample: Vec::new(),
        events: 0,
        served: vec![0; n],
    };
    for v in 0..sim.variants.len() {
        for _ in 0..sim.variants[v].initial_replicas {
            sim.add_replica(v, 0.0, true);
        }
    }
    sim.push(scenario.observation.scrape_interval_s, Kind::Scrape, 0, 0);
    sim.push(scenario.autoscale_interval_s, Kind::Autoscale, 0, 0);
    sim.push(sample_interval, Kind::Sample, 0, 0);
    let mut next_arrival = 0usize;
    let mut last_progress = 0.0;
    let mut now = 0.0;
    loop {
        let arrival_t = workload.requests.get(next_arrival).map(|r| r.arrival_s);
        let event_t = sim.heap.peek().map(|e| e.t);
        let take_arrival = match (arrival_t, event_t) {
            (Some(a), Some(e)) => a < e,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let t = if take_arrival {
            arrival_t.unwrap_or(now)
        } else {
            event_t.unwrap_or(now)
        };
        if t > end_s {
            break;
        }
        now = t;
        sim.events += 1;
        if take_arrival {
            sim.arrivals_in_sample += 1;
            sim.route(now, next_arrival as u64, false);
            next_arrival += 1;
        } else if let Some(ev) = sim.heap.pop() {
            sim.handle(ev);
            if ev.kind == Kind::Sample && next_arrival >= workload.requests.len() && sim.all_idle()
            {
                break;
            }
        }
        if let Some(p) = options.progress
            && now - last_progress > end_s / 200.0
        {
            last_progress = now;
            p((now / end_s).min(1.0));
        }
    }
    Ok(sim.finish(now))
}

fn nice_interval(x: f64) -> f64 {
    for step in [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if x <= step {
            return step;
        }
    }
    900.0
}

impl Sim<'_> {
    fn push(&mut self, t: f64, kind: Kind, target: usize, epoch: u64) {
        self.seq += 1;
        self.heap.push(Event {
            t,
            kind,
            seq: self.seq,
            target,
            epoch,
        });
    }

    fn all_idle(&self) -> bool {
        self.pending.is_empty()
            && self.replicas.iter().all(|r| r.engine.num_requests() == 0)
            && self.heap.iter().all(|e| e.kind != Kind::Handoff)
    }

    fn add_replica(&mut self, variant: usize, now: f64, ready: bool) {
        let startup = self.scenario.pools[self.variants[variant].pool].startup_s;
        let state = if ready {
            ReplicaState::Ready
        } else {
            ReplicaState::Starting {
                ready_at: now + startup,
            }
        };
        let id = self.replicas.len();
        self.replicas.push(Replica {
            variant,
            state,
            engine: Engine::new(self.variants[variant].engine.clone()),
            created_s: now,
            stopped_s: None,
            queued: None,
            epoch: 0,
        });
        if !ready {
            self.push(now + startup, Kind::ReplicaReady, id, 0);
        }
    }

    /// Queues the replica's next engine event if it changed.
    fn reschedule(&mut self, id: usize, next: Option<f64>) {
        let r = &mut self.replicas[id];
        if r.queued == next {
            return;
        }
        r.epoch += 1;
        r.queued = next;
        let epoch = r.epoch;
        if let Some(t) = next {
            self.push(t, Kind::ReplicaStep, id, epoch);
        }
    }

    fn route(&mut self, now: f64, request: u64, after_handoff: bool) {
        let spec = &self.workload.requests[request as usize];
        // A prefill replica is an entry only while a decode replica is ready to take its
        // hand-off (as llm-d's gateway picks the decode endpoint first): a request prefilled
        // with no decode replica would hold its KV cache at the gateway until one starts.
        let decode_ready = self.replicas.iter().any(|r| {
            r.state == ReplicaState::Ready && self.variants[r.variant].role == Role::Decode
        });
        let entry_roles: &[Role] = if after_handoff {
            &[Role::Decode]
        } else if decode_ready {
            &[Role::Unified, Role::Prefill]
        } else {
            &[Role::Unified]
        };
        let candidates: Vec<ReplicaView> = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.state == ReplicaState::Ready
                    && entry_roles.contains(&self.variants[r.variant].role)
            })
            .map(|(i, r)| {
                let prefill = r.engine.prefill_in_flight(now);
                ReplicaView {
                    replica: i,
                    variant: r.variant,
                    running: r.engine.num_running(),
                    waiting: r.engine.num_waiting(),
                    kv_usage: r.engine.kv_usage(now),
                    prefill_tokens_in_flight: prefill.tokens,
                    since_oldest_prefill_s: prefill.oldest_arrival_s.map(|a| (now - a).max(0.0)),
                    since_last_token_s: r
                        .engine
                        .last_token_at(now)
                        .map(|last| (now - last).max(0.0)),
                }
            })
            .collect();
        let req = RouteRequest {
            id: request,
            input_tokens: spec.input_tokens,
            output_tokens: spec.output_tokens,
            hash_ids: &spec.hash_ids,
        };
        let pick = if candidates.is_empty() {
            None
        } else {
            self.router.pick(&req, &candidates)
        };
        let Some(choice) = pick.and_then(|i| candidates.get(i)) else {
            self.pending.push_back((request, after_handoff));
            return;
        };
        let id = choice.replica;
        let variant = self.replicas[id].variant;
        let role = self.variants[variant].role;
        let engine_req = EngineRequest {
            id: request,
            prompt_tokens: spec.input_tokens.max(1),
            output_tokens: if role == Role::Prefill {
                1
            } else {
                spec.output_tokens.max(1)
            },
            hash_ids: self.hash_ids[request as usize].clone(),
            hash_block_tokens: self.workload.hash_block_tokens,
            kv_transferred: after_handoff,
        };
        let r = &mut self.replicas[id];
        self.served[variant] += 1;
        r.engine.sync(now, true);
        if let Some(rejected) = r.engine.enqueue(now, engine_req) {
            self.on_finished(now, id, rejected);
        }
        let next = self.replicas[id].engine.kick(now);
        self.reschedule(id, next);
    }

    fn handle(&mut self, ev: Event) {
        match ev.kind {
            Kind::ReplicaStep => {
                let r = &self.replicas[ev.target];
                if r.epoch != ev.epoch || r.queued != Some(ev.t) {
                    return; // superseded
                }
                self.replicas[ev.target].queued = None;
                let done = self.replicas[ev.target].engine.advance(ev.t);
                for f in done {
                    self.on_finished(ev.t, ev.target, f);
                }
                let next = self.replicas[ev.target].engine.next_event();
                self.reschedule(ev.target, next);
                self.maybe_stop(ev.t, ev.target);
            }
            Kind::ReplicaReady => {
                let r = &mut self.replicas[ev.target];
                if matches!(r.state, ReplicaState::Starting { .. }) {
                    r.state = ReplicaState::Ready;
                    self.flush_pending(ev.t);
                }
            }
            Kind::Handoff => self.route(ev.t, ev.target as u64, true),
            Kind::Scrape => {
                for id in 0..self.replicas.len() {
                    if matches!(
                        self.replicas[id].state,
                        ReplicaState::Ready | ReplicaState::Draining
                    ) {
                        let next = self.replicas[id].engine.sync(ev.t, false);
                        self.reschedule(id, next);
                        let r = &self.replicas[id];
                        let g = Gauges {
                            running: r.engine.num_running(),
                            waiting: r.engine.num_waiting(),
                            kv_usage: r.engine.kv_usage(ev.t),
                        };
                        self.view
                            .record(ev.t, id, r.variant, r.engine.counters(), g);
                    }
                }
                self.push(
                    ev.t + self.scenario.observation.scrape_interval_s,
                    Kind::Scrape,
                    0,
                    0,
                );
            }
            Kind::Autoscale => {
                self.autoscale(ev.t);
                self.push(
                    ev.t + self.scenario.autoscale_interval_s,
                    Kind::Autoscale,
                    0,
                    0,
                );
            }
            Kind::Sample => {
                self.sample(ev.t);
                self.push(ev.t + self.ts.interval_s, Kind::Sample, 0, 0);
            }
        }
    }

    fn on_finished(&mut self, now: f64, replica: usize, f: Finished) {
        let variant = self.replicas[replica].variant;
        let v = &self.variants[variant];
        let out = &mut self.outcomes[f.id as usize];
        if f.rejected {
            out.rejected = true;
            out.finish_s = None;
            return;
        }
        if v.role == Role::Prefill {
            out.cached_tokens = f.cached_tokens;
            let prompt = self.workload.requests[f.id as usize].input_tokens as f64;
            let (per_token, setup) = v.transfer;
            let at = now + setup + per_token * prompt;
            self.push(at, Kind::Handoff, f.id as usize, 0);
            return;
        }
        if v.role == Role::Unified {
            out.cached_tokens = f.cached_tokens;
        }
        out.first_token_s = f.first_token_s;
        out.finish_s = Some(f.finish_s);
        out.output_tokens = f.output_tokens;
        out.variant = Some(variant);
        if let Some(ttft) = out.ttft_s() {
            self.ttfts_in_sample.push(ttft);
        }
        if let Some(itl) = out.mean_itl_s()
            && out.output_tokens > 1
        {
            self.itls_in_sample.push(itl);
        }
    }

    fn flush_pending(&mut self, now: f64) {
        let pending: Vec<_> = self.pending.drain(..).collect();
        for (id, after_handoff) in pending {
            self.route(now, id, after_handoff);
        }
    }

    fn maybe_stop(&mut self, now: f64, id: usize) {
        let r = &mut self.replicas[id];
        if r.state == ReplicaState::Draining && r.engine.num_requests() == 0 {
            r.state = ReplicaState::Stopped;
            r.stopped_s = Some(now);
            self.view.forget(id);
        }
    }

    fn counts(&self, variant: usize) -> (u32, u32, u32) {
        let (mut ready, mut starting, mut draining) = (0, 0, 0);
        for r in self.replicas.iter().filter(|r| r.variant == variant) {
            match r.state {
                ReplicaState::Ready => ready += 1,
                ReplicaState::Starting { .. } => starting += 1,
                ReplicaState::Draining => draining += 1,
                ReplicaState::Stopped => {}
            }
        }
        (ready, starting, draining)
    }

    fn devices_in_use(&self, pool: usize) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.state != ReplicaState::Stopped && self.variants[r.variant].pool == pool)
            .map(|r| self.variants[r.variant].tp)
            .sum()
    }

    fn autoscale(&mut self, now: f64) {
        let variants: Vec<VariantView> = (0..self.variants.len())
            .map(|i| {
                let v = &self.variants[i];
                let (ready, starting, draining) = self.counts(i);
                VariantView {
                    name: v.name.clone(),
                    accelerator: v.accelerator.clone(),
                    tp: v.tp,
                    role: v.role,
                    price_per_hour: v.price_per_device_hour * v.tp as f64,
                    min_replicas: v.min_replicas,
                    max_replicas: v.max_replicas,
                    target: self.targets[i],
                    ready,
                    starting,
                    draining,
                    load: self.view.variant_load(now, i),
                }
            })
            .collect();
        let pools = (0..self.scenario.pools.len())
            .map(|p| PoolView {
                accelerator: self.scenario.pools[p].accelerator.clone(),
                capacity: self.scenario.pools[p].capacity,
                in_use: self.devices_in_use(p),
                startup_s: self.scenario.pools[p].startup_s,
            })
            .collect();
        let view = ClusterView {
            now_s: now,
            variants,
            pools,
            gateway_waiting: Some(u32::try_from(self.pending.len()).unwrap_or(u32::MAX)),
        };
        for d in self.autoscaler.decide(&view) {
            if d.variant < self.variants.len() {
                self.apply_target(now, d.variant, d.replicas, &d.reason);
            }
        }
    }

    /// Moves a variant toward `target` replicas: new replicas start (within pool capacity), and
    /// surplus ones are cancelled if still starting, else drained (fewest requests first).
    fn apply_target(&mut self, now: f64, variant: usize, target: u32, reason: &str) {
        let v = &self.variants[variant];
        let target = target.clamp(v.min_replicas, v.max_replicas);
        let (ready, starting, _) = self.counts(variant);
        let current = ready + starting;
        let mut reached = current;
        if target > current {
            let pool = v.pool;
            let tp = v.tp;
            let capacity = self.scenario.pools[pool].capacity;
            for _ in current..target {
                if self.devices_in_use(pool) + tp > capacity {
                    break;
                }
                self.add_replica(variant, now, false);
                reached += 1;
            }
        } else if target < current {
            let mut surplus = current - target;
            // Cancel starting replicas first (newest first).
            for id in (0..self.replicas.len()).rev() {
                if surplus == 0 {
                    break;
                }
                let r = &mut self.replicas[id];
                if r.variant == variant && matches!(r.state, ReplicaState::Starting { .. }) {
                    r.state = ReplicaState::Stopped;
                    r.stopped_s = Some(now);
                    surplus -= 1;
                    reached -= 1;
                }
            }
            let mut ready_ids: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| {
                    self.replicas[i].variant == variant
                        && self.replicas[i].state == ReplicaState::Ready
                })
                .collect();
            ready_ids.sort_by_key(|&i| (self.replicas[i].engine.num_requests(), usize::MAX - i));
            for id in ready_ids.into_iter().take(surplus as usize) {
                self.replicas[id].state = ReplicaState::Draining;
                reached -= 1;
                self.maybe_stop(now, id);
            }
        }
        if reached != self.targets[variant] {
            self.scale_events.push(ScaleEvent {
                t_s: now,
                variant: self.variants[variant].name.clone(),
                from: self.targets[variant],
                to: reached,
                reason: reason.to_string(),
            });
            self.targets[variant] = reached;
        }
    }

    fn sample(&mut self, now: f64) {
        let ts = &mut self.ts;
        ts.t_s.push(now);
        ts.arrival_rate
            .push(self.arrivals_in_sample as f64 / ts.interval_s);
        self.arrivals_in_sample = 0;
        ts.ttft_p95_ms
            .push(percentile(&mut self.ttfts_in_sample, 0.95) * 1e3);
        ts.itl_p95_ms
            .push(percentile(&mut self.itls_in_sample, 0.95) * 1e3);
        self.ttfts_in_sample.clear();
        self.itls_in_sample.clear();
        let mut cost = 0.0;
        let mut waiting = self.pending.len() as f64;
        for (i, v) in self.variants.iter().enumerate() {
            let mut held = 0.0;
            let mut ready = 0.0;
            for r in self.replicas.iter().filter(|r| r.variant == i) {
                if r.state != ReplicaState::Stopped {
                    held += 1.0;
                    cost += v.price_per_device_hour * v.tp as f64;
                }
                if r.state == ReplicaState::Ready {
                    ready += 1.0;
                }
                waiting += r.engine.num_waiting() as f64;
            }
            ts.replicas.entry(v.name.clone()).or_default().push(held);
            ts.ready_replicas
                .entry(v.name.clone())
                .or_default()
                .push(ready);
        }
        ts.cost_per_hour.push(cost);
        ts.waiting.push(waiting);
    }

    fn finish(self, end: f64) -> ClusterRun {
        let mut steps = 0;
        let (mut pq, mut ph, mut pre) = (0, 0, 0);
        let mut spans = Vec::new();
        for r in &self.replicas {
            steps += r.engine.steps();
            let c = r.engine.counters();
            pq += c.prefix_queries;
            ph += c.prefix_hits;
            pre += c.preemptions;
            spans.push((r.variant, r.created_s, r.stopped_s.unwrap_or(end).min(end)));
        }
        ClusterRun {
            outcomes: self.outcomes,
            variants: self.variants,
            replica_spans: spans,
            served_per_variant: self.served,
            scale_events: self.scale_events,
            timeseries: self.ts,
            end_s: end,
            engine_steps: steps,
            events: self.events,
            prefix_queries: pq,
            prefix_hits: ph,
            preemptions: pre,
        }
    }
}

/// The `q` quantile (nearest rank) of `values`, NaN when empty. Sorts in place.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
