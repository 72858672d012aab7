//! Training data from the simulator: a recording router that picks a replica (random, so that
//! the data covers idle and loaded endpoints alike) and snapshots the chosen endpoint's state
//! at dispatch, joined after the run with the request's measured TTFT and mean ITL.
//!
//! [`Knowledge::Future`] replaces two inputs with what happened *after* dispatch, which no
//! predictor can know: it measures how much of the TPOT error is the future (see
//! `examples/accuracy_limits.rs` and docs/predictor.md).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // test code

use std::collections::HashSet;

use goodput_predictor::{Features, PodType, Sample};
use goodput_sim::cluster::{RunOptions, run_cluster};
use goodput_sim::engine::StepMode;
use goodput_sim::policy::{FixedReplicas, ReplicaView, RouteRequest, Router};
use goodput_sim::run::load_workload;
use goodput_sim::scenario::Scenario;

pub mod evaluation;

/// What the features of a sample may know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// The endpoint's state at dispatch, as a router sees it (the real thing).
    AtDispatch,
    /// An oracle for TPOT: `num_request_running` is the mean number of requests decoding on the
    /// replica while this one decodes, and `decode_tokens_in_flight` the uncached prompt tokens
    /// per second dispatched to the replica during that time.
    Future,
    /// For TTFT: `prefill_tokens_in_flight` also counts the uncached prompt tokens dispatched to
    /// the replica after this request and before its first token (prompts that may share its
    /// prefill step). Compared with [`Knowledge::AtDispatch`], it finds those requests.
    FutureWait,
}

/// What the router saw for one request.
#[derive(Debug, Clone, Copy)]
struct Dispatch {
    id: u64,
    replica: usize,
    view: ReplicaView,
    input: u32,
    prefix_score: f64,
}

struct Recorder {
    state: u64,
    /// Prefix index per replica: hash ids already sent there (what llm-d's EPP approximates).
    sent: Vec<HashSet<u64>>,
    dispatches: Vec<Dispatch>,
    /// Pick the less loaded of two random replicas with this probability, else one at random.
    two_choices: f64,
}

impl Recorder {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency on the rand crate's API here.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Router for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn pick(&mut self, req: &RouteRequest<'_>, candidates: &[ReplicaView]) -> Option<usize> {
        let n = candidates.len();
        let a = (self.next() % n as u64) as usize;
        let b = (self.next() % n as u64) as usize;
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let load = |v: &ReplicaView| v.running + v.waiting;
        let i = if u < self.two_choices && load(&candidates[b]) < load(&candidates[a]) {
            b
        } else {
            a
        };
        let v = candidates[i];
        if self.sent.len() <= v.replica {
            self.sent.resize_with(v.replica + 1, HashSet::new);
        }
        let set = &mut self.sent[v.replica];
        let matched = req.hash_ids.iter().take_while(|h| set.contains(h)).count();
        let prefix_score = if req.hash_ids.is_empty() {
            0.0
        } else {
            matched as f64 / req.hash_ids.len() as f64
        };
        set.extend(req.hash_ids.iter().copied());
        self.dispatches.push(Dispatch {
            id: req.id,
            replica: v.replica,
            view: v,
            input: req.input_tokens,
            prefix_score,
        });
        Some(i)
    }
}

/// One finished request: its sample, when it was dispatched (features snapshot, prediction)
/// and when it finished (its labels reach the predictor, as llm-d's EPP sends them).
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub sample: Sample,
    pub dispatched_s: f64,
    pub finished_s: f64,
    /// The replica it was dispatched to.
    pub replica: usize,
}

/// Runs `scenario_yaml` with the recording router and returns one sample per finished request.
pub fn collect(scenario_yaml: &str, seed: u64, knowledge: Knowledge) -> Vec<Sample> {
    collect_timed(scenario_yaml, seed, knowledge)
        .into_iter()
        .map(|t| t.sample)
        .collect()
}

/// [`collect`] with the dispatch and finish time of each request, in dispatch order.
pub fn collect_timed(scenario_yaml: &str, seed: u64, knowledge: Knowledge) -> Vec<Timed> {
    let scenario = Scenario::from_yaml(scenario_yaml, "test").expect("scenario");
    let workload = load_workload(&scenario, std::path::Path::new(".")).expect("workload");
    let mut router = Recorder {
        state: seed | 1,
        sent: Vec::new(),
        dispatches: Vec::new(),
        two_choices: 0.5,
    };
    let run = run_cluster(
        &scenario,
        &workload,
        &mut router,
        &mut FixedReplicas,
        &RunOptions {
            mode: StepMode::EventJumping,
            progress: None,
        },
    )
    .expect("run");
    // Prefill tokens in flight at each dispatch: uncached prompt tokens of requests sent to the
    // same replica earlier that had not produced their first token yet (what llm-d's
    // InFlightLoad producer tracks), computed from the run's outcomes.
    let mut per_replica: Vec<Vec<(f64, f64, u64)>> = Vec::new(); // (dispatch, first token, tokens)
    let mut out = Vec::with_capacity(router.dispatches.len());
    let oracle = (knowledge != Knowledge::AtDispatch).then(|| FutureOfReplicas::new(&router, &run));
    for d in &router.dispatches {
        let o = &run.outcomes[d.id as usize];
        let t = o.arrival_s;
        if per_replica.len() <= d.replica {
            per_replica.resize_with(d.replica + 1, Vec::new);
        }
        let list = &mut per_replica[d.replica];
        list.retain(|&(_, ft, _)| ft > t);
        let in_flight: u64 = list.iter().map(|x| x.2).sum();
        let oldest = list.iter().map(|x| x.0).min_by(f64::total_cmp);
        let uncached = uncached_tokens(d);
        if let Some(ft) = o.first_token_s {
            list.push((t, ft, uncached));
        }
        let (Some(ttft), Some(itl), Some(finished_s)) = (o.ttft_s(), o.mean_itl_s(), o.finish_s)
        else {
            continue;
        };
        let mut features = Features {
            kv_cache_percentage: d.view.kv_usage.clamp(0.0, 1.0),
            input_token_length: d.input,
            num_request_waiting: d.view.waiting as u32,
            num_request_running: d.view.running as u32,
            num_tokens_generated: 0,
            prefix_cache_score: d.prefix_score,
            pod_type: PodType::Monolithic,
            prefill_tokens_in_flight: in_flight,
            decode_tokens_in_flight: 0,
            ms_since_last_token: d.view.since_last_token_s.map(|s| s * 1e3),
            ms_since_oldest_prefill: oldest.map(|o| (t - o) * 1e3),
        };
        if let (Some(oracle), Some(first)) = (&oracle, o.first_token_s) {
            if knowledge == Knowledge::Future {
                let (decoding, prefill_rate) = oracle.during(d.replica, first, finished_s);
                features.num_request_running = decoding.round() as u32;
                features.decode_tokens_in_flight = prefill_rate.round() as u64;
            } else {
                let (_, prefill_rate) = oracle.during(d.replica, t, first);
                features.prefill_tokens_in_flight +=
                    (prefill_rate * (first - t).max(1e-3)).round() as u64;
            }
        }
        out.push(Timed {
            sample: Sample {
                features,
                ttft_ms: Some(ttft * 1e3),
                tpot_ms: (o.output_tokens > 1).then_some(itl * 1e3),
            },
            dispatched_s: t,
            finished_s,
            replica: d.replica,
        });
    }
    out
}

/// The prompt tokens a dispatch leaves to compute, as the router estimates them: at least the
/// last one, which vLLM computes however much of the prompt is cached.
fn uncached_tokens(d: &Dispatch) -> u64 {
    (((1.0 - d.prefix_score) * f64::from(d.input)).round() as u64).max(u64::from(d.input > 0))
}

/// Per replica, when each request decoded and when its prompt arrived (for [`Knowledge::Future`]).
struct FutureOfReplicas {
    /// (first token, finish) of each request, per replica.
    decodes: Vec<Vec<(f64, f64)>>,
    /// (dispatch, uncached prompt tokens) of each request, per replica.
    prompts: Vec<Vec<(f64, f64)>>,
}

impl FutureOfReplicas {
    fn new(router: &Recorder, run: &goodput_sim::cluster::ClusterRun) -> Self {
        let n = router
            .dispatches
            .iter()
            .map(|d| d.replica + 1)
            .max()
            .unwrap_or(0);
        let mut this = Self {
            decodes: vec![Vec::new(); n],
            prompts: vec![Vec::new(); n],
        };
        for d in &router.dispatches {
            let o = &run.outcomes[d.id as usize];
            if let (Some(a), Some(b)) = (o.first_token_s, o.finish_s) {
                this.decodes[d.replica].push((a, b));
            }
            this.prompts[d.replica].push((o.arrival_s, uncached_tokens(d) as f64));
        }
        this
    }

    /// Mean requests decoding on `replica` over `[from, to]`, and uncached prompt tokens per
    /// second dispatched to it then.
    fn during(&self, replica: usize, from: f64, to: f64) -> (f64, f64) {
        let span = (to - from).max(1e-3);
        let overlap: f64 = self.decodes[replica]
            .iter()
            .map(|&(a, b)| (b.min(to) - a.max(from)).max(0.0))
            .sum();
        let tokens: f64 = self.prompts[replica]
            .iter()
            .filter(|&&(t, _)| t > from && t <= to)
            .map(|&(_, x)| x)
            .sum();
        (overlap / span, tokens / span)
    }
}

/// A one-variant scenario of `replicas` replicas with the given generator workload.
pub fn scenario(accelerator: &str, replicas: u32, workload: &str) -> String {
    format!(
        r#"
name: predictor-data
model: llama-3.1-8b
slo: {{ ttft_ms: 1000, itl_ms: 100, percentile: 95 }}
pools:
  - {{ accelerator: {accelerator}, capacity: 64 }}
variants:
  - {{ name: v, accelerator: {accelerator}, tp: 1, replicas: {replicas}, max_replicas: 64 }}
workload:
  generator:
{workload}
router: round-robin
drain_s: 600
"#
    )
}
