//! Drives one [`Engine`] in real time: a tokio task owns the engine, takes requests from HTTP
//! handlers over a channel, sleeps until the step in flight ends (in wall time, simulated time
//! divided by the time scale), applies it, and sends each request its new tokens.
//!
//! Data flow: handler --[`Command::Submit`]--> driver task --`Engine::enqueue`/`kick`/`advance`
//! --> [`StreamEvent`]s on the request's own channel --> handler (SSE chunks or one JSON body).
//! Scrapes ask for a [`MetricsSnapshot`] the same way.
//!
//! Before it looks at a new command the driver applies every step that ended by now, so the
//! engine never sees an arrival earlier than a step it has not yet applied. When the host is
//! slower than the engine model (a very large time scale), steps are applied late but at their
//! own simulated times: the engine's histograms stay the model's, and only the client sees the
//! extra delay. That is where the server process, not the model, becomes the limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, EngineParams, EngineRequest};

use super::metrics::{CacheInfo, FinishReason, MetricsSnapshot, ServerCounters};

/// Maps wall time to simulated time: `sim = elapsed_wall * scale`.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: Instant,
    scale: f64,
}

impl SimClock {
    /// A clock starting now; `scale` > 0 (10 runs the model ten times faster than real).
    pub fn new(scale: f64) -> Self {
        Self {
            start: Instant::now(),
            scale,
        }
    }

    /// Simulated seconds now.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.scale
    }

    /// The wall instant of simulated time `t`.
    pub fn instant_at(&self, t: f64) -> Instant {
        self.start + Duration::from_secs_f64((t / self.scale).max(0.0))
    }

    /// The time scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// One request for the engine.
#[derive(Debug, Clone)]
pub struct Submission {
    pub prompt_tokens: u32,
    /// Tokens to generate.
    pub output_tokens: u32,
    pub hash_ids: Arc<[u64]>,
    pub hash_block_tokens: u32,
    /// The prompt's KV came from a prefill server.
    pub kv_transferred: bool,
    /// Why it will finish when all `output_tokens` are out (`length` when `max_tokens` caps it,
    /// `stop` when the drawn length ends first).
    pub finish_reason: FinishReason,
    /// The effective `max_tokens`, for `vllm:request_params_max_tokens` (0 if none).
    pub max_tokens: u32,
}

/// What a request's handler receives.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// `generated` tokens are out so far (the step just applied added some); `finish` is set on
    /// the last one.
    Tokens {
        generated: u32,
        finish: Option<FinishReason>,
    },
    /// The engine refused it (it can never fit the KV cache).
    Rejected,
}

/// Messages to the driver.
#[derive(Debug)]
pub enum Command {
    Submit {
        req: Submission,
        events: mpsc::UnboundedSender<StreamEvent>,
    },
    Snapshot(oneshot::Sender<MetricsSnapshot>),
}

/// A handle to a running driver (cheap to clone).
#[derive(Debug, Clone)]
pub struct DriverHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl DriverHandle {
    /// Hands a request to the engine; its events arrive on the returned receiver. `None` when
    /// the driver has stopped (the server is going down).
    pub fn submit(&self, req: Submission) -> Option<mpsc::UnboundedReceiver<StreamEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx.send(Command::Submit { req, events: tx }).ok()?;
        Some(rx)
    }

    /// The metrics at this instant.
    pub async fn snapshot(&self) -> Option<MetricsSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot(tx)).ok()?;
        rx.await.ok()
    }
}

/// Labels and static facts the snapshots carry.
#[derive(Debug, Clone)]
pub struct DriverInfo {
    pub model_name: String,
    pub engine_index: String,
    pub deprecated_metrics: bool,
}

struct Pending {
    events: mpsc::UnboundedSender<StreamEvent>,
    finish_reason: FinishReason,
    max_tokens: u32,
}

struct Driver {
    engine: Engine,
    clock: SimClock,
    info: DriverInfo,
    server: ServerCounters,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    created_unix: f64,
}

/// Starts a driver task for an engine with `params` (the mode should be
/// [`crate::engine::StepMode::StepByStep`] so that tokens come out at their step's time).
pub fn spawn(
    params: EngineParams,
    clock: SimClock,
    info: DriverInfo,
) -> (DriverHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut engine = Engine::new(params);
    engine.record_tokens();
    let max_model_len = engine.params().max_model_len;
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let driver = Driver {
        engine,
        clock,
        info,
        server: ServerCounters::new(max_model_len),
        pending: HashMap::new(),
        next_id: 0,
        created_unix,
    };
    let task = tokio::spawn(driver.run(rx));
    (DriverHandle { tx }, task)
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let now = self.clock.now();
            self.catch_up(now);
            let deadline = self
                .engine
                .next_event()
                .map(|t| tokio::time::Instant::from_std(self.clock.instant_at(t)));
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(c) => self.handle(c),
                },
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// Applies every step that ended by `now`.
    fn catch_up(&mut self, now: f64) {
        while let Some(t) = self.engine.next_event() {
            if t > now {
                break;
            }
            let finished = self.engine.advance(t);
            let mut latest: HashMap<u64, u32> = HashMap::new();
            for e in self.engine.take_emitted() {
                let g = latest.entry(e.id).or_insert(0);
                *g = (*g).max(e.generated);
            }
            for f in finished {
                if let Some(p) = self.pending.remove(&f.id) {
                    let generated = latest.remove(&f.id).unwrap_or(f.output_tokens);
                    self.server
                        .finished(p.finish_reason, p.max_tokens, generated);
                    let _ = p.events.send(StreamEvent::Tokens {
                        generated,
                        finish: Some(p.finish_reason),
                    });
                }
            }
            for (id, generated) in latest {
                if let Some(p) = self.pending.get(&id) {
                    // A closed receiver (client gone) is not an error: the engine model has no
                    // abort, so the request runs to its end.
                    let _ = p.events.send(StreamEvent::Tokens {
                        generated,
                        finish: None,
                    });
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = self.clock.now();
        self.catch_up(now);
        match cmd {
            Command::Submit { req, events } => {
                let id = self.next_id;
                self.next_id += 1;
                let engine_req = EngineRequest {
                    id,
                    prompt_tokens: req.prompt_tokens.max(1),
                    output_tokens: req.output_tokens.max(1),
                    hash_ids: req.hash_ids,
                    hash_block_tokens: req.hash_block_tokens,
                    kv_transferred: req.kv_transferred && req.prompt_tokens > 1,
                };
                if self.engine.enqueue(now, engine_req).is_some() {
                    let _ = events.send(StreamEvent::Rejected);
                    return;
                }
                self.pending.insert(
                    id,
                    Pending {
                        events,
                        finish_reason: req.finish_reason,
                        max_tokens: req.max_tokens,
                    },
                );
                self.engine.kick(now);
            }
            Command::Snapshot(reply) => {
                let limits = self.engine.params().limits;
                let snap = MetricsSnapshot {
                    model_name: self.info.model_name.clone(),
                    engine: self.info.engine_index.clone(),
                    counters: self.engine.counters().clone(),
                    server: self.server.clone(),
                    running: self.engine.num_running(),
                    waiting: self.engine.num_waiting(),
                    kv_usage: self.engine.kv_usage(now),
                    cache: CacheInfo {
                        block_size: limits.block_size,
                        num_gpu_blocks: self.engine.total_blocks(),
                        gpu_memory_utilization: limits.gpu_memory_utilization,
                        enable_prefix_caching: limits.enable_prefix_caching,
                    },
                    created_unix: self.created_unix,
                    deprecated: self.info.deprecated_metrics,
                };
                let _ = reply.send(snap);
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
