//! The vLLM engine model of one replica: V1's scheduler (continuous batching, chunked prefill
//! under one token budget, running requests before waiting ones, FCFS preemption with full
//! recompute), a paged KV cache with automatic prefix caching ([`kv`]), and step times from
//! `goodput_core::perf`.
//!
//! # Time
//! The engine is driven by its owner: [`Engine::kick`] starts work when idle, [`Engine::advance`]
//! completes the step (or run) in flight at the time [`Engine::next_event`] reported and
//! schedules the next. In *event-jumping* mode a step in which every running request computes one
//! token (decodes, or prompts with one token left to compute, admitted into it or not) and that
//! preempts nothing is extended into a *run* of identical-shape decode steps that lasts until
//! the first request finishes or the KV cache would need a block it does not have; its time is
//! summed in closed form (`StepCost::decode_run_time`). Block allocation inside a run is deferred
//! to when the run is applied, which cannot change any outcome because nothing else allocates on
//! this replica meanwhile. An arrival during a run truncates it ([`Engine::sync`] with
//! `truncate`) at the end of the step in progress, exactly where a step-by-step engine would
//! first see the new request, so both modes produce the same per-request latencies.

pub mod counters;
pub mod kv;

use std::collections::VecDeque;

use goodput_core::{EngineLimits, Role, StepCost, StepWork};

pub use counters::EngineCounters;

use kv::KvCache;

/// How the engine advances time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepMode {
    /// Jump over runs of identical decode steps analytically (the default).
    EventJumping,
    /// Execute every engine step (the reference the jumping mode is checked against).
    StepByStep,
}

/// Static parameters of one replica's engine.
#[derive(Debug, Clone)]
pub struct EngineParams {
    pub cost: StepCost,
    pub limits: EngineLimits,
    /// KV-cache capacity, tokens.
    pub kv_capacity_tokens: u64,
    pub role: Role,
    pub mode: StepMode,
    /// The model's maximum context (prompt plus output).
    pub max_model_len: u64,
}

/// A request handed to an engine.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// Caller's id, echoed in [`Finished`].
    pub id: u64,
    pub prompt_tokens: u32,
    /// Tokens to generate here (1 on a prefill replica).
    pub output_tokens: u32,
    /// Prefix-block hash ids of the prompt, each covering `hash_block_tokens` tokens.
    pub hash_ids: std::sync::Arc<[u64]>,
    pub hash_block_tokens: u32,
    /// The prompt's KV arrives computed from a prefill replica (decode role).
    pub kv_transferred: bool,
}

/// Tokens a request produced, reported when the step (or decode run) that produced them is
/// applied: a live server streams them, a load generator times them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEvent {
    pub id: u64,
    /// Tokens generated so far by this request (1 for the first token).
    pub generated: u32,
    /// When the last of those tokens was produced.
    pub t: f64,
}

/// A request that left the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub id: u64,
    /// Time it entered this engine.
    pub arrival_s: f64,
    /// First token (None when rejected).
    pub first_token_s: Option<f64>,
    pub finish_s: f64,
    pub output_tokens: u32,
    /// Prompt tokens served from the prefix cache at its (last) admission.
    pub cached_tokens: u32,
    /// Refused at admission: it can never fit this engine.
    pub rejected: bool,
}

/// Prompts awaiting their first token on an engine (see [`Engine::prefill_in_flight`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PrefillInFlight {
    /// Their prompt tokens not yet computed.
    pub tokens: u64,
    /// When the oldest of them arrived; None when there are none.
    pub oldest_arrival_s: Option<f64>,
}

#[derive(Debug, Clone)]
struct Seq {
    req: EngineRequest,
    arrival_s: f64,
    /// Tokens whose KV is computed.
    computed: u64,
    generated: u64,
    /// Cached prefix blocks this sequence references (leading blocks of its prompt).
    keys: Vec<u64>,
    /// Blocks only it holds.
    private: u64,
    first_scheduled_s: Option<f64>,
    first_token_s: Option<f64>,
    last_token_s: f64,
    cached_tokens: u64,
}

impl Seq {
    fn total_len(&self) -> u64 {
        self.req.prompt_tokens as u64 + self.generated
    }
    fn blocks(&self) -> u64 {
        self.keys.len() as u64 + self.private
    }
}

/// What is executing on the device.
#[derive(Debug, Clone)]
enum InFlight {
    /// One step ending at `end`: the scheduled sequences with their new tokens.
    Step {
        end: f64,
        scheduled: Vec<(usize, u64)>,
    },
    /// `steps` decode steps of every running sequence, starting at `start`, whose contexts sum
    /// to `context_sum` at the first step. The first step's blocks are allocated; later steps'
    /// blocks are allocated when the run is applied.
    DecodeRun {
        start: f64,
        steps: u64,
        context_sum: f64,
    },
}

/// One replica's vLLM engine.
#[derive(Debug, Clone)]
pub struct Engine {
    params: EngineParams,
    kv: KvCache,
    block_size: u64,
    /// Slots; a finished sequence leaves `None` (reused via `free_slots`).
    seqs: Vec<Option<Seq>>,
    free_slots: Vec<usize>,
    running: Vec<usize>,
    waiting: VecDeque<usize>,
    in_flight: Option<InFlight>,
    counters: EngineCounters,
    steps: u64,
    /// Token events since the last `take_emitted`, when recording is on.
    emitted: Option<Vec<TokenEvent>>,
    /// When the last applied step emitted a token (what a gateway streaming the responses
    /// sees as the endpoint's last token).
    last_token_s: Option<f64>,
}

impl Engine {
    /// An idle engine.
    pub fn new(params: EngineParams) -> Self {
        let block_size = params.limits.block_size.max(1) as u64;
        let blocks = params.kv_capacity_tokens / block_size;
        Self {
            kv: KvCache::new(blocks, params.limits.enable_prefix_caching),
            block_size,
            counters: EngineCounters::new(params.max_model_len),
            params,
            seqs: Vec::new(),
            free_slots: Vec::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            in_flight: None,
            steps: 0,
            emitted: None,
            last_token_s: None,
        }
    }

    /// When this engine last emitted a token, as of `now`: the end of the last step that
    /// sampled one, counting the steps of a decode run in flight completed by `now`. None
    /// before the first token. A gateway streaming the responses sees the same instant as the
    /// endpoint's most recent streamed token.
    pub fn last_token_at(&self, now: f64) -> Option<f64> {
        if let Some(InFlight::DecodeRun {
            start,
            steps,
            context_sum,
        }) = &self.in_flight
        {
            let done = self.completed_run_steps(*start, *steps, *context_sum, now);
            if done > 0 && !self.running.is_empty() {
                return Some(start + self.run_time(*context_sum, done));
            }
        }
        self.last_token_s
    }

    /// Starts recording [`TokenEvent`]s (off by default: the simulator does not need them).
    pub fn record_tokens(&mut self) {
        self.emitted.get_or_insert_with(Vec::new);
    }

    /// Token events recorded since the last call.
    pub fn take_emitted(&mut self) -> Vec<TokenEvent> {
        self.emitted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The engine's static parameters.
    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    /// Cumulative metrics.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Engine steps executed (a run of n decode steps counts n).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Requests in the running batch (`vllm:num_requests_running`).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests queued (`vllm:num_requests_waiting`).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests held (running plus waiting).
    pub fn num_requests(&self) -> usize {
        self.running.len() + self.waiting.len()
    }

    /// `vllm:kv_cache_usage_perc` at time `t`, counting blocks a decode run has reached by then.
    pub fn kv_usage(&self, t: f64) -> f64 {
        let total = self.kv.total_blocks();
        if total == 0 {
            return 0.0;
        }
        let mut used = self.kv.used_blocks();
        if let Some(InFlight::DecodeRun {
            start,
            steps,
            context_sum,
        }) = &self.in_flight
        {
            let done = self.completed_run_steps(*start, *steps, *context_sum, t);
            // Blocks covering every step started by t (the one in progress included).
            let started = (done + 1).min(*steps);
            let extra = self.run_blocks_needed(started);
            used += extra;
        }
        used as f64 / total as f64
    }

    /// The prompts a gateway counts in flight here at `now`: those of requests (waiting or
    /// running) that have not produced their first token, with the tokens of theirs not yet
    /// computed (a chunk in flight still counts; a waiting prompt counts its cached prefix too,
    /// which the engine finds only when it admits it) and when the oldest of them arrived. A
    /// request preempted after its first token is not counted: a gateway has seen its first
    /// token. A decode run in flight gives every running request a token at each step's end, so
    /// once its first step has ended by `now`, none of them is in flight any more (as a
    /// step-by-step engine would show).
    pub fn prefill_in_flight(&self, now: f64) -> PrefillInFlight {
        let run_answered = match &self.in_flight {
            Some(InFlight::DecodeRun {
                start,
                steps,
                context_sum,
            }) => self.completed_run_steps(*start, *steps, *context_sum, now) > 0,
            _ => false,
        };
        let running: &[usize] = if run_answered { &[] } else { &self.running };
        let mut out = PrefillInFlight::default();
        for s in self
            .waiting
            .iter()
            .chain(running.iter())
            .filter_map(|&i| self.seqs[i].as_ref())
            .filter(|s| s.first_token_s.is_none())
        {
            out.tokens += s.total_len().saturating_sub(s.computed);
            out.oldest_arrival_s = Some(
                out.oldest_arrival_s
                    .map_or(s.arrival_s, |o: f64| o.min(s.arrival_s)),
            );
        }
        out
    }

    /// KV capacity in blocks.
    pub fn total_blocks(&self) -> u64 {
        self.kv.total_blocks()
    }

    /// When the step or run in flight ends.
    pub fn next_event(&self) -> Option<f64> {
        match &self.in_flight {
            None => None,
            Some(InFlight::Step { end, .. }) => Some(*end),
            Some(InFlight::DecodeRun {
                start,
                steps,
                context_sum,
                ..
            }) => Some(start + self.run_time(*context_sum, *steps)),
        }
    }

    /// Queues a request that arrived at `now`. Requests that can never fit (longer than the KV
    /// cache or the model's context) are refused at once, as vLLM refuses them, and returned.
    pub fn enqueue(&mut self, now: f64, req: EngineRequest) -> Option<Finished> {
        let need = req.prompt_tokens as u64 + req.output_tokens as u64;
        let capacity = self.kv.total_blocks() * self.block_size;
        if need > capacity || need > self.params.max_model_len {
            self.counters.requests_rejected += 1;
            return Some(Finished {
                id: req.id,
                arrival_s: now,
                first_token_s: None,
                finish_s: now,
                output_tokens: 0,
                cached_tokens: 0,
                rejected: true,
            });
        }
        let computed = if req.kv_transferred {
            req.prompt_tokens as u64 - 1
        } else {
            0
        };
        let seq = Seq {
            req,
            arrival_s: now,
            computed,
            generated: 0,
            keys: Vec::new(),
            private: 0,
            first_scheduled_s: None,
            first_token_s: None,
            last_token_s: now,
            cached_tokens: 0,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.seqs[s] = Some(seq);
                s
            }
            None => {
                self.seqs.push(Some(seq));
                self.seqs.len() - 1
            }
        };
        self.waiting.push_back(slot);
        None
    }

    /// Starts a step at `now` if the engine is idle and has work; returns when it ends.
    pub fn kick(&mut self, now: f64) -> Option<f64> {
        if self.in_flight.is_none() {
            self.schedule(now);
        }
        self.next_event()
    }

    /// Brings a decode run up to date at `t`: applies the steps completed by then. With
    /// `truncate`, the run is also cut at the end of the step in progress, so that work queued
    /// now is scheduled where a step-by-step engine would schedule it. Returns the (possibly new)
    /// end of the work in flight.
    pub fn sync(&mut self, t: f64, truncate: bool) -> Option<f64> {
        let Some(InFlight::DecodeRun {
            start,
            steps,
            context_sum,
        }) = self.in_flight.clone()
        else {
            return self.next_event();
        };
        let done = self
            .completed_run_steps(start, steps, context_sum, t)
            .min(steps - 1);
        if done == 0 && !truncate {
            return self.next_event();
        }
        let batch = self.running.len() as f64;
        if done > 0 {
            self.apply_decode_steps(start, context_sum, done);
        }
        let new_start = start + self.run_time(context_sum, done);
        let new_ctx = context_sum + batch * done as f64;
        let remaining = steps - done;
        // The step in progress has its blocks, as a step-by-step engine allocated them when the
        // step started.
        self.allocate_run_blocks(1);
        let steps = if truncate { 1 } else { remaining };
        self.in_flight = Some(InFlight::DecodeRun {
            start: new_start,
            steps,
            context_sum: new_ctx,
        });
        self.next_event()
    }

    /// Completes the work in flight at `now` (its end time) and schedules the next step.
    /// Returns the requests that finished.
    pub fn advance(&mut self, now: f64) -> Vec<Finished> {
        let mut finished = Vec::new();
        match self.in_flight.take() {
            None => {}
            Some(InFlight::Step { end, scheduled }) => {
                self.apply_step(end, &scheduled, &mut finished);
            }
            Some(InFlight::DecodeRun {
                start,
                steps,
                context_sum,
            }) => {
                self.apply_decode_steps(start, context_sum, steps);
                self.collect_finished(start + self.run_time(context_sum, steps), &mut finished);
            }
        }
        self.schedule(now);
        finished
    }

    fn run_time(&self, context_sum: f64, steps: u64) -> f64 {
        self.params
            .cost
            .decode_run_time(self.running.len() as f64, context_sum, steps)
    }

    /// Steps of a run completed by time `t` (boundary <= t).
    fn completed_run_steps(&self, start: f64, steps: u64, context_sum: f64, t: f64) -> u64 {
        if t <= start {
            return 0;
        }
        let (mut lo, mut hi) = (0u64, steps);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if start + self.run_time(context_sum, mid) <= t {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.block_size)
    }

    /// Extra blocks the running batch needs to cover `steps` decode steps from now.
    fn run_blocks_needed(&self, steps: u64) -> u64 {
        if steps == 0 {
            return 0;
        }
        self.running
            .iter()
            .filter_map(|&i| self.seqs[i].as_ref())
            .map(|s| {
                self.blocks_for(s.computed + steps)
                    .saturating_sub(s.blocks())
            })
            .sum()
    }

    fn allocate_run_blocks(&mut self, steps: u64) {
        let need: Vec<(usize, u64)> = self
            .running
            .iter()
            .filter_map(|&i| {
                self.seqs[i].as_ref().map(|s| {
                    (
                        i,
                        self.blocks_for(s.computed + steps)
                            .saturating_sub(s.blocks()),
                    )
                })
            })
            .collect();
        for (i, n) in need {
            if n > 0
                && self.kv.allocate(n)
                && let Some(s) = self.seqs[i].as_mut()
            {
                s.private += n;
            }
        }
    }

    /// Applies `n` decode steps of a run that started at `start`: every running sequence gains
    /// `n` tokens, emitted at the step boundaries.
    fn apply_decode_steps(&mut self, start: f64, context_sum: f64, n: u64) {
        if n == 0 {
            return;
        }
        self.allocate_run_blocks(n);
        let batch = self.running.len() as f64;
        let cost = self.params.cost;
        let first_boundary = start + cost.decode_step_time(batch, context_sum, 0);
        let end = start + cost.decode_run_time(batch, context_sum, n);
        // ITL observations: every sequence that already had a token observes each step's time.
        let mut fresh = 0u64;
        for &i in &self.running {
            if let Some(s) = self.seqs[i].as_mut() {
                if s.first_token_s.is_none() {
                    fresh += 1;
                    s.first_token_s = Some(first_boundary);
                    self.counters.ttft.observe(first_boundary - s.arrival_s);
                }
                s.computed += n;
                s.generated += n;
                s.last_token_s = end;
                if let Some(events) = self.emitted.as_mut() {
                    events.push(TokenEvent {
                        id: s.req.id,
                        generated: s.generated as u32,
                        t: end,
                    });
                }
            }
        }
        let b = self.running.len() as u64;
        if b > 0 {
            self.last_token_s = Some(end);
        }
        for j in 0..n {
            let d = cost.decode_step_time(batch, context_sum, j);
            let observers = if j == 0 { b - fresh } else { b };
            self.counters.itl.observe_n(d, observers);
        }
        self.counters.iteration_tokens.observe_n(batch, n);
        self.counters.generation_tokens += b * n;
        self.steps += n;
    }

    /// Applies one executed step.
    fn apply_step(&mut self, end: f64, scheduled: &[(usize, u64)], finished: &mut Vec<Finished>) {
        let mut tokens = 0u64;
        let bs = self.block_size;
        for &(i, new) in scheduled {
            tokens += new;
            let Some(s) = self.seqs[i].as_mut() else {
                continue;
            };
            let before = s.computed;
            s.computed += new;
            // Register newly completed full prompt blocks for prefix caching.
            let prompt = s.req.prompt_tokens as u64;
            let first_block = before.min(prompt) / bs;
            let last_block = s.computed.min(prompt) / bs;
            for blk in first_block.max(s.keys.len() as u64)..last_block {
                let Some(key) = block_key(&s.req, blk, bs) else {
                    break;
                };
                if s.private == 0 || s.keys.len() as u64 != blk {
                    break;
                }
                if self.kv.register(key) {
                    s.private -= 1;
                    s.keys.push(key);
                } else {
                    break;
                }
            }
            if s.computed >= s.total_len() {
                // A token is sampled.
                s.generated += 1;
                self.counters.generation_tokens += 1;
                match s.first_token_s {
                    None => {
                        s.first_token_s = Some(end);
                        self.counters.ttft.observe(end - s.arrival_s);
                    }
                    Some(_) => self.counters.itl.observe(end - s.last_token_s),
                }
                s.last_token_s = end;
                self.last_token_s = Some(end);
                if let Some(events) = self.emitted.as_mut() {
                    events.push(TokenEvent {
                        id: s.req.id,
                        generated: s.generated as u32,
                        t: end,
                    });
                }
            }
        }
        self.counters.iteration_tokens.observe(tokens as f64);
        self.steps += 1;
        self.collect_finished(end, finished);
    }

    /// Removes sequences that generated all their tokens, releasing their blocks.
    fn collect_finished(&mut self, now: f64, finished: &mut Vec<Finished>) {
        let mut i = 0;
        while i < self.running.len() {
            let slot = self.running[i];
            let done = self.seqs[slot]
                .as_ref()
                .is_some_and(|s| s.generated >= s.req.output_tokens as u64);
            if !done {
                i += 1;
                continue;
            }
            self.running.remove(i);
            let Some(s) = self.seqs[slot].take() else {
                continue;
            };
            self.free_slots.push(slot);
            self.kv.release(&s.keys, s.private);
            let c = &mut self.counters;
            c.requests_finished += 1;
            c.prompt_tokens += s.req.prompt_tokens as u64;
            c.prompt_tokens_hist.observe(s.req.prompt_tokens as f64);
            c.generation_tokens_hist.observe(s.generated as f64);
            c.e2e.observe(now - s.arrival_s);
            let scheduled = s.first_scheduled_s.unwrap_or(s.arrival_s);
            let first = s.first_token_s.unwrap_or(now);
            c.queue.observe(scheduled - s.arrival_s);
            c.prefill.observe(first - scheduled);
            c.decode.observe(now - first);
            c.inference.observe(now - scheduled);
            if s.generated > 1 {
                c.tpot.observe((now - first) / (s.generated - 1) as f64);
            }
            finished.push(Finished {
                id: s.req.id,
                arrival_s: s.arrival_s,
                first_token_s: s.first_token_s,
                finish_s: now,
                output_tokens: s.generated as u32,
                cached_tokens: s.cached_tokens as u32,
                rejected: false,
            });
        }
    }

    /// Preempts the sequence in `slot`: frees its blocks and puts it at the head of the queue for
    /// a full recompute (prefix caching usually makes that partial).
    fn preempt(&mut self, slot: usize) {
        if let Some(s) = self.seqs[slot].as_mut() {
            self.kv.release(&s.keys, s.private);
            s.keys.clear();
            s.private = 0;
            s.computed = 0;
            s.req.kv_transferred = false;
            self.counters.preemptions += 1;
        }
        self.waiting.push_front(slot);
    }

    /// vLLM V1's `schedule()`: running requests first (each gets its remaining tokens up to the
    /// budget, preempting from the tail when blocks run out), then waiting ones if nothing was
    /// preempted. Sets `in_flight`.
    fn schedule(&mut self, now: f64) {
        let limits = self.params.limits;
        let mut budget = limits.max_num_batched_tokens as u64;
        let mut scheduled: Vec<(usize, u64)> = Vec::new();
        let mut work = StepWork::default();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let Some(s) = self.seqs[slot].as_ref() else {
                self.running.remove(i);
                continue;
            };
            let new = (s.total_len() - s.computed).min(budget);
            let need = self.blocks_for(s.computed + new).saturating_sub(s.blocks());
            if self.kv.allocate(need) {
                if let Some(s) = self.seqs[slot].as_mut() {
                    s.private += need;
                    let prefill = s.computed + new < s.total_len() || new > 1;
                    work.add(new, s.computed, prefill);
                }
                scheduled.push((slot, new));
                budget -= new;
                i += 1;
                continue;
            }
            // Out of blocks: preempt the tail (possibly this request itself) and retry.
            preempted = true;
            let Some(victim) = self.running.pop() else {
                break;
            };
            if let Some(pos) = scheduled.iter().position(|(s, _)| *s == victim) {
                // A victim scheduled earlier in this step gives back its tokens.
                let (_, tokens) = scheduled.remove(pos);
                budget += tokens;
                work = recompute_work(&self.seqs, &scheduled);
            }
            self.preempt(victim);
            if victim == slot {
                continue;
            }
        }
        if !preempted {
            while let Some(&slot) = self.waiting.front() {
                if self.running.len() >= limits.max_num_seqs as usize || budget == 0 {
                    break;
                }
                let Some(s) = self.seqs[slot].as_ref() else {
                    self.waiting.pop_front();
                    continue;
                };
                let bs = self.block_size;
                let prompt = s.req.prompt_tokens as u64;
                // Prefix hits, capped below the prompt length (the last token is recomputed).
                let (hit_keys, evictable_hits) = if s.computed == 0 {
                    let cap = (prompt.saturating_sub(1)) / bs;
                    let keys: Vec<u64> = (0..cap).map_while(|b| block_key(&s.req, b, bs)).collect();
                    let (hit, evictable) = self.kv.probe(&keys);
                    (keys[..hit].to_vec(), evictable)
                } else {
                    (Vec::new(), 0)
                };
                let computed = if s.computed == 0 {
                    hit_keys.len() as u64 * bs
                } else {
                    s.computed
                };
                let new = (s.total_len() - computed).min(budget);
                let already = if s.computed == 0 { 0 } else { s.blocks() };
                let need = self
                    .blocks_for(computed + new)
                    .saturating_sub(hit_keys.len() as u64 + already);
                if need + evictable_hits > self.kv.available_blocks() {
                    break;
                }
                self.kv.acquire(&hit_keys);
                self.kv.allocate(need);
                self.waiting.pop_front();
                let Some(s) = self.seqs[slot].as_mut() else {
                    continue;
                };
                if s.computed == 0 {
                    self.counters.prefix_queries += prompt;
                    self.counters.prefix_hits += hit_keys.len() as u64 * bs;
                    s.cached_tokens = hit_keys.len() as u64 * bs;
                    s.keys = hit_keys;
                }
                s.computed = computed;
                s.private += need;
                s.first_scheduled_s.get_or_insert(now);
                let prefill = computed + new < s.total_len() || new > 1;
                work.add(new, computed, prefill);
                scheduled.push((slot, new));
                self.running.push(slot);
                budget -= new;
            }
        }
        if scheduled.is_empty() {
            self.in_flight = None;
            return;
        }
        // Event jumping: a pure decode step of the whole batch with nothing admitted or preempted
        // repeats with the same shape until a request finishes or blocks run out.
        let all_decode = !work.has_prefill
            && scheduled.len() == self.running.len()
            && scheduled.iter().all(|&(_, n)| n == 1);
        if self.params.mode == StepMode::EventJumping && all_decode && !preempted {
            let context_sum: f64 = self
                .running
                .iter()
                .filter_map(|&i| self.seqs[i].as_ref())
                .map(|s| s.computed as f64)
                .sum();
            let until_finish = self
                .running
                .iter()
                .filter_map(|&i| self.seqs[i].as_ref())
                .map(|s| {
                    (s.req.output_tokens as u64)
                        .saturating_sub(s.generated)
                        .max(1)
                })
                .min()
                .unwrap_or(1);
            let steps = self.max_run_steps(until_finish);
            if steps > 1 {
                self.in_flight = Some(InFlight::DecodeRun {
                    start: now,
                    steps,
                    context_sum,
                });
                return;
            }
        }
        let duration = self.params.cost.step_time(&work);
        self.in_flight = Some(InFlight::Step {
            end: now + duration,
            scheduled,
        });
    }

    /// The longest run (at most `limit` steps) whose blocks fit in the free pool.
    ///
    /// With requests waiting, the run must not evict cached blocks either: an eviction can remove
    /// prefix hits of the request at the head of the queue, and when its first chunk is capped by
    /// the token budget that *lowers* what its admission needs, so a step-by-step engine could
    /// admit it mid-run.
    fn max_run_steps(&self, limit: u64) -> u64 {
        let available = if self.waiting.is_empty() {
            self.kv.available_blocks()
        } else {
            self.kv.clean_blocks()
        };
        if self.run_blocks_needed(1) > available {
            return 1;
        }
        if self.run_blocks_needed(limit) <= available {
            return limit;
        }
        let (mut lo, mut hi) = (1u64, limit);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.run_blocks_needed(mid) <= available {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

fn recompute_work(seqs: &[Option<Seq>], scheduled: &[(usize, u64)]) -> StepWork {
    let mut w = StepWork::default();
    for &(i, new) in scheduled {
        if let Some(s) = seqs[i].as_ref() {
            let prefill = s.computed + new < s.total_len() || new > 1;
            w.add(new, s.computed, prefill);
        }
    }
    w
}

/// The prefix-cache key of vLLM block `block` of a request's prompt: derived from the workload's
/// hash id covering it and the block's position inside that hash block. `None` past the ids.
fn block_key(req: &EngineRequest, block: u64, block_size: u64) -> Option<u64> {
    let hbt = req.hash_block_tokens.max(1) as u64;
    let first_token = block * block_size;
    let idx = (first_token / hbt) as usize;
    let id = *req.hash_ids.get(idx)?;
    let sub = (first_token % hbt) / block_size;
    Some(splitmix64(id ^ splitmix64(sub.wrapping_add(0x9e37_79b9))))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
