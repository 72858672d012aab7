//! One live vLLM-compatible HTTP server per replica: the OpenAI routes, `/metrics`, `/health`,
//! P/D disaggregation as llm-d runs it, and fault injection.
//!
//! Data flow per request: the handler validates the body ([`super::protocol`]), decides the
//! output length, performs the P/D steps that apply (a decode server given an
//! `x-prefiller-host-port` header first asks that prefill server, as llm-d's routing sidecar
//! does; a request carrying a prefiller's `kv_transfer_params` waits out the KV transfer and
//! skips prefill compute), then submits it to the replica's engine driver ([`super::driver`])
//! and turns the driver's token events into SSE chunks or one JSON body.
//!
//! Each replica runs under a supervisor task that owns its listener and connections: a crash
//! fault drops them all (clients see reset connections, in-flight requests are lost), keeps the
//! port closed for a while and restarts with a fresh engine, as a restarted pod would.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use goodput_core::perf::{StackOverheads, kv_capacity_tokens, kv_transfer_time};
use goodput_core::{Catalog, EngineLimits, Role, StepCost};
use rand::SeedableRng;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::engine::{EngineParams, StepMode};
use crate::workload::generate::LengthProfile;

use super::LiveError;
use super::driver::{self, DriverHandle, DriverInfo, SimClock, StreamEvent, Submission};
use super::metrics::{self, FinishReason};
use super::protocol::{
    self, Api, ApiError, ChatChunk, ChatChunkChoice, ChatDelta, CompletionChunk,
    CompletionChunkChoice, FinalOutput, HASH_BLOCK_TOKENS, KvTransferParams, ParsedRequest, Usage,
};

/// Faults a server injects (all times are wall-clock seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Share of generation requests answered with HTTP 500 before reaching the engine.
    pub error_rate: f64,
    /// Every this many seconds the server stops answering ...
    pub stall_every_s: Option<f64>,
    /// ... for this long (requests, scrapes and streams all hang, then resume).
    pub stall_for_s: f64,
    /// After this many seconds up, the server dies: listener and connections closed, engine
    /// state lost ...
    pub crash_every_s: Option<f64>,
    /// ... and comes back this much later with a fresh engine.
    pub down_for_s: f64,
    /// Seed of the error draws.
    pub seed: u64,
}

impl FaultConfig {
    fn validate(&self) -> Result<(), LiveError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(invalid("error_rate", "must be in [0, 1]"));
        }
        for (field, v) in [
            ("stall_every_s", self.stall_every_s),
            ("crash_every_s", self.crash_every_s),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(invalid(field, "must be positive"));
            }
        }
        for (field, v) in [
            ("stall_for_s", self.stall_for_s),
            ("down_for_s", self.down_for_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(field, "must be >= 0"));
            }
        }
        Ok(())
    }
}

/// How to run the servers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Catalog model id.
    pub model: String,
    /// The name clients use (`--served-model-name`); the catalog id when `None`.
    pub served_model_name: Option<String>,
    /// Catalog accelerator id.
    pub accelerator: String,
    pub tp: u32,
    pub role: Role,
    /// Simulated seconds per wall second (10: the model runs ten times faster than real).
    pub time_scale: f64,
    pub max_num_seqs: Option<u32>,
    pub max_num_batched_tokens: Option<u32>,
    /// Caps the model's context.
    pub max_model_len: Option<u64>,
    /// Emit the deprecated metric names too.
    pub deprecated_metrics: bool,
    pub faults: FaultConfig,
    /// KV transfer between a prefill and a decode server: share of the NIC's line rate.
    pub kv_transfer_efficiency: f64,
    /// KV transfer setup time, milliseconds.
    pub kv_transfer_setup_ms: f64,
    /// A decode server contacts prefill servers named by `x-prefiller-host-port` only on
    /// loopback addresses unless this is set (llm-d's sidecar has a similar allowlist).
    pub allow_remote_prefillers: bool,
    /// Seed of the output-length draws.
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model: "llama-3.1-8b".into(),
            served_model_name: None,
            accelerator: "h100".into(),
            tp: 1,
            role: Role::Unified,
            time_scale: 1.0,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            max_model_len: None,
            deprecated_metrics: false,
            faults: FaultConfig::default(),
            kv_transfer_efficiency: 0.7,
            kv_transfer_setup_ms: 1.0,
            allow_remote_prefillers: false,
            seed: 0,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> LiveError {
    LiveError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The engine parameters and KV-transfer costs a config resolves to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub engine: EngineParams,
    /// (seconds per prompt token, setup seconds) of a KV transfer into this server.
    pub transfer: (f64, f64),
    /// The model's Hugging Face repository (`root` in `/v1/models`).
    pub hf_repo: String,
}

/// Resolves a config against the catalog, as the simulator resolves a scenario variant.
pub fn resolve(catalog: &Catalog, cfg: &ServerConfig) -> Result<Resolved, LiveError> {
    if !(cfg.time_scale.is_finite() && cfg.time_scale > 0.0) {
        return Err(invalid("time_scale", "must be positive"));
    }
    if cfg.tp == 0 || !cfg.tp.is_power_of_two() {
        return Err(invalid(
            "tp",
            format!("must be a power of two, got {}", cfg.tp),
        ));
    }
    if !(cfg.kv_transfer_efficiency > 0.0 && cfg.kv_transfer_efficiency <= 1.0) {
        return Err(invalid("kv_transfer_efficiency", "must be in (0, 1]"));
    }
    cfg.faults.validate()?;
    let model = catalog.model(&cfg.model)?;
    let acc = catalog.accelerator(&cfg.accelerator)?;
    let mut limits = EngineLimits::vllm_defaults(acc);
    if let Some(x) = cfg.max_num_seqs {
        if x == 0 {
            return Err(invalid("max_num_seqs", "must be at least 1"));
        }
        limits.max_num_seqs = x;
    }
    if let Some(x) = cfg.max_num_batched_tokens {
        if x == 0 {
            return Err(invalid("max_num_batched_tokens", "must be at least 1"));
        }
        limits.max_num_batched_tokens = x;
    }
    let capacity = kv_capacity_tokens(model, acc, cfg.tp, &limits);
    if capacity == 0 {
        return Err(invalid(
            "accelerator",
            format!(
                "{} does not fit on {} x {} (no memory left for the KV cache)",
                model.id, cfg.tp, acc.id
            ),
        ));
    }
    let max_model_len = cfg
        .max_model_len
        .unwrap_or(u64::from(model.max_context))
        .min(u64::from(model.max_context));
    if max_model_len == 0 {
        return Err(invalid("max_model_len", "must be at least 1"));
    }
    let per_token = kv_transfer_time(model, acc, cfg.tp, 1, 0.0, cfg.kv_transfer_efficiency);
    Ok(Resolved {
        engine: EngineParams {
            cost: StepCost::new(model, acc, cfg.tp, &StackOverheads::default()),
            limits,
            kv_capacity_tokens: capacity,
            role: cfg.role,
            mode: StepMode::StepByStep,
            max_model_len,
        },
        transfer: (per_token, cfg.kv_transfer_setup_ms / 1e3),
        hf_repo: model.hf_repo.clone(),
    })
}

/// Running servers; dropping it without [`LiveServers::shutdown`] leaves them running until
/// the runtime stops.
#[derive(Debug)]
pub struct LiveServers {
    /// One address per replica, in order.
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LiveServers {
    /// Starts `replicas` servers on `host`, ports `port_base..port_base+replicas` (each on an
    /// ephemeral port when `port_base` is 0).
    pub async fn start(
        catalog: &Catalog,
        cfg: &ServerConfig,
        host: IpAddr,
        port_base: u16,
        replicas: u16,
    ) -> Result<Self, LiveError> {
        if replicas == 0 {
            return Err(invalid("replicas", "must be at least 1"));
        }
        let resolved = resolve(catalog, cfg)?;
        let (shutdown, rx) = watch::channel(false);
        let http = reqwest::Client::builder()
            .build()
            .map_err(LiveError::Client)?;
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..replicas {
            let port = if port_base == 0 {
                0
            } else {
                port_base
                    .checked_add(i)
                    .ok_or_else(|| invalid("port_base", "port_base + replicas exceeds 65535"))?
            };
            let listener = bind(SocketAddr::new(host, port))?;
            let addr = listener.local_addr().map_err(|source| LiveError::Bind {
                addr: SocketAddr::new(host, port),
                source,
            })?;
            let replica = Replica {
                cfg: cfg.clone(),
                resolved: resolved.clone(),
                addr,
                http: http.clone(),
                faults: Arc::new(FaultState::new(&cfg.faults, u64::from(i))),
                index: i,
            };
            tasks.push(tokio::spawn(replica.supervise(listener, rx.clone())));
            addrs.push(addr);
        }
        tracing::info!(?addrs, model = %cfg.model, accelerator = %cfg.accelerator, role = %cfg.role, "live servers listening");
        Ok(Self {
            addrs,
            shutdown,
            tasks,
        })
    }

    /// Base URLs (`http://127.0.0.1:PORT`).
    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    /// Stops every server and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, LiveError> {
    let err = |source| LiveError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// Fault state shared by a replica's handlers.
#[derive(Debug)]
struct FaultState {
    cfg: FaultConfig,
    start: Instant,
    draws: AtomicU64,
    seed: u64,
}

impl FaultState {
    fn new(cfg: &FaultConfig, replica: u64) -> Self {
        Self {
            cfg: cfg.clone(),
            start: Instant::now(),
            draws: AtomicU64::new(0),
            seed: super::splitmix64(cfg.seed ^ replica.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// Whether this request gets an injected 500.
    fn inject_error(&self) -> bool {
        if self.cfg.error_rate <= 0.0 {
            return false;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let u = (super::splitmix64(self.seed ^ n) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.cfg.error_rate
    }

    /// How long the current stall still lasts (stalls start at every multiple of
    /// `stall_every_s` after start).
    fn stall_left(&self) -> Option<Duration> {
        let every = self.cfg.stall_every_s?;
        if self.cfg.stall_for_s <= 0.0 {
            return None;
        }
        let t = self.start.elapsed().as_secs_f64();
        let k = (t / every).floor();
        if k < 1.0 {
            return None;
        }
        let into = t - k * every;
        (into < self.cfg.stall_for_s).then(|| Duration::from_secs_f64(self.cfg.stall_for_s - into))
    }

    async fn wait_stall(&self) {
        while let Some(d) = self.stall_left() {
            tokio::time::sleep(d).await;
        }
    }
}

struct Replica {
    cfg: ServerConfig,
    resolved: Resolved,
    addr: SocketAddr,
    http: reqwest::Client,
    faults: Arc<FaultState>,
    index: u16,
}

impl Replica {
    async fn supervise(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut listener = Some(listener);
        let mut incarnation = 0u64;
        loop {
            let l = match listener.take() {
                Some(l) => l,
                None => match bind(self.addr) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot rebind after a crash; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                },
            };
            let clock = SimClock::new(self.cfg.time_scale);
            let served = self
                .cfg
                .served_model_name
                .clone()
                .unwrap_or_else(|| self.cfg.model.clone());
            let (handle, task) = driver::spawn(
                self.resolved.engine.clone(),
                clock,
                DriverInfo {
                    model_name: served.clone(),
                    engine_index: "0".into(),
                    deprecated_metrics: self.cfg.deprecated_metrics,
                },
            );
            let state = Arc::new(AppState {
                driver: handle,
                served_name: served,
                hf_repo: self.resolved.hf_repo.clone(),
                max_model_len: self.resolved.engine.max_model_len,
                role: self.cfg.role,
                clock,
                faults: self.faults.clone(),
                transfer: self.resolved.transfer,
                engine_id: format!(
                    "goodput-sim-{:016x}",
                    super::splitmix64(u64::from(self.addr.port()) ^ (incarnation << 32))
                ),
                addr: self.addr,
                tp: self.cfg.tp,
                http: self.http.clone(),
                allow_remote_prefillers: self.cfg.allow_remote_prefillers,
                counter: AtomicU64::new(0),
                seed: self.cfg.seed ^ u64::from(self.index) << 48 ^ incarnation << 40,
            });
            let app = router(state);
            let up_for = self.cfg.faults.crash_every_s;
            tokio::select! {
                () = accept_loop(l, app) => {}
                () = sleep_opt(up_for) => {
                    task.abort();
                    tracing::warn!(addr = %self.addr, down_for_s = self.cfg.faults.down_for_s, "injected crash");
                    incarnation += 1;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs_f64(self.cfg.faults.down_for_s)) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                _ = shutdown.changed() => {
                    task.abort();
                    return;
                }
            }
            task.abort();
            return;
        }
    }
}

async fn sleep_opt(s: Option<f64>) {
    match s {
        Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
        None => std::future::pending().await,
    }
}

/// Serves connections until dropped; dropping it closes the listener and aborts every
/// connection.
async fn accept_loop(listener: TcpListener, app: Router) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                // SSE chunks are small: send them at once.
                let _ = stream.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

struct AppState {
    driver: DriverHandle,
    served_name: String,
    hf_repo: String,
    max_model_len: u64,
    role: Role,
    clock: SimClock,
    faults: Arc<FaultState>,
    transfer: (f64, f64),
    engine_id: String,
    addr: SocketAddr,
    tp: u32,
    http: reqwest::Client,
    allow_remote_prefillers: bool,
    counter: AtomicU64,
    seed: u64,
}

fn router(state: Arc<AppState>) -> Router {
    let faults = state.faults.clone();
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_page))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let faults = faults.clone();
                async move {
                    faults.wait_stall().await;
                    next.run(req).await
                }
            },
        ))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.body())
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({"version": concat!("goodput-sim-", env!("CARGO_PKG_VERSION"))}),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let created = unix_now();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": [{
            "id": st.served_name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": st.hf_repo,
            "parent": null,
            "max_model_len": st.max_model_len,
            "permission": [{
                "id": format!("modelperm-{:032x}", u128::from(super::splitmix64(created))),
                "object": "model_permission",
                "created": created,
                "allow_create_engine": false,
                "allow_sampling": true,
                "allow_logprobs": true,
                "allow_search_indices": false,
                "allow_view": true,
                "allow_fine_tuning": false,
                "organization": "*",
                "group": null,
                "is_blocking": false,
            }],
        }]}),
    )
}

async fn metrics_page(State(st): State<Arc<AppState>>) -> Response {
    match st.driver.snapshot().await {
        Some(s) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            metrics::render(&s),
        )
            .into_response(),
        None => error_response(&ApiError::internal("the engine is not running")),
    }
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(st, Api::Completions, &headers, body).await
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    generate(st, Api::Chat, &headers, body).await
}

/// Header naming the prefill server (set by llm-d's endpoint picker).
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";

async fn generate(st: Arc<AppState>, api: Api, headers: &HeaderMap, body: Bytes) -> Response {
    if st.faults.inject_error() {
        return error_response(&ApiError::internal(
            "injected fault: simulated internal server error",
        ));
    }
    let mut req = match protocol::parse_request(api, &body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Some(m) = &req.model
        && *m != st.served_name
    {
        return error_response(&ApiError::model_not_found(m));
    }
    let n = st.counter.fetch_add(1, Ordering::Relaxed);
    // The routing-sidecar step of a decode server.
    if st.role == Role::Decode
        && req.kv_transfer.is_none()
        && let Some(target) = headers.get(PREFILLER_HEADER).and_then(|v| v.to_str().ok())
    {
        match remote_prefill(&st, api, &body, target).await {
            Ok(Some(kv)) => req.kv_transfer = Some(kv),
            Ok(None) => {} // prefill failed with a 5xx: decode runs the prefill itself
            Err(resp) => return resp,
        }
    }
    let (output, finish, effective_max) = match output_length(&st, &req, n) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let kv_in = req
        .kv_transfer
        .as_ref()
        .is_some_and(|kv| kv.do_remote_prefill);
    if kv_in {
        // Pulling the prompt's KV from the prefiller (simulated time, scaled to wall time).
        let t = st.transfer.1 + st.transfer.0 * f64::from(req.prompt_tokens);
        tokio::time::sleep(Duration::from_secs_f64(t / st.clock.scale())).await;
    }
    let Some(rx) = st.driver.submit(Submission {
        prompt_tokens: req.prompt_tokens,
        output_tokens: output,
        hash_ids: req.hash_ids.clone().into(),
        hash_block_tokens: HASH_BLOCK_TOKENS,
        kv_transferred: kv_in,
        finish_reason: finish,
        max_tokens: effective_max,
    }) else {
        return error_response(&ApiError::internal("the engine is not running"));
    };
    let prefix = match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    };
    let ctx = ResponseCtx {
        id: format!("{prefix}-{:016x}{:016x}", super::splitmix64(st.seed ^ n), n),
        created: unix_now(),
        model: st.served_name.clone(),
        prompt_tokens: req.prompt_tokens,
        kv_out: req
            .kv_transfer
            .as_ref()
            .filter(|kv| kv.do_remote_decode)
            .map(|_| kv_params_for_decoder(&st, &req, n)),
    };
    if req.stream {
        stream_response(st, req, ctx, rx)
    } else {
        full_response(api, ctx, rx).await
    }
}

/// Output tokens, finish reason and the effective `max_tokens` of a request.
fn output_length(
    st: &AppState,
    req: &ParsedRequest,
    n: u64,
) -> Result<(u32, FinishReason, u32), ApiError> {
    let prompt = u64::from(req.prompt_tokens);
    let room = st.max_model_len.saturating_sub(prompt);
    match req.max_tokens {
        Some(m) => {
            if prompt + u64::from(m) > st.max_model_len {
                return Err(ApiError::bad_request(
                    Some(if req.api == Api::Chat {
                        "messages"
                    } else {
                        "prompt"
                    }),
                    format!(
                        "This model's maximum context length is {} tokens. However, you requested \
                         {} tokens ({} in the messages, {} in the completion). Please reduce the \
                         length of the messages or completion.",
                        st.max_model_len,
                        prompt + u64::from(m),
                        prompt,
                        m
                    ),
                ));
            }
            Ok((m, FinishReason::Length, m))
        }
        None => {
            if room == 0 {
                return Err(ApiError::bad_request(
                    Some("messages"),
                    format!(
                        "This model's maximum context length is {} tokens. However, your messages \
                         resulted in {prompt} tokens.",
                        st.max_model_len
                    ),
                ));
            }
            let cap = u32::try_from(room).unwrap_or(u32::MAX);
            // No limit given: the answer's length is drawn from ShareGPT's output lengths and
            // ends with a stop, unless the context runs out first.
            let drawn = LengthProfile::ShareGpt
                .distributions()
                .map_or(256, |(_, out)| {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(st.seed ^ n);
                    out.sample(&mut rng)
                })
                .max(req.min_tokens);
            if drawn >= cap {
                Ok((cap, FinishReason::Length, cap))
            } else {
                Ok((drawn, FinishReason::Stop, cap))
            }
        }
    }
}

/// What a prefill server returns in `kv_transfer_params` (NixlConnector's shape).
fn kv_params_for_decoder(st: &AppState, req: &ParsedRequest, n: u64) -> Value {
    let blocks = u64::from(req.prompt_tokens).div_ceil(u64::from(HASH_BLOCK_TOKENS));
    let base = (n % (1 << 20)) << 12;
    let ids: Vec<u64> = (0..blocks.min(1 << 12)).map(|b| base + b).collect();
    serde_json::json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_block_ids": ids,
        "remote_engine_id": st.engine_id,
        "remote_request_id": format!("req-{n}"),
        "remote_host": st.addr.ip().to_string(),
        "remote_port": 5600,
        "tp_size": st.tp,
    })
}

/// The llm-d sidecar's prefill step. `Ok(Some)` carries the prefiller's `kv_transfer_params`;
/// `Ok(None)` means fall back to local prefill (5xx or unreachable); `Err` is the response to
/// return as-is (4xx from the prefiller, or a refused target).
async fn remote_prefill(
    st: &AppState,
    api: Api,
    body: &Bytes,
    target: &str,
) -> Result<Option<KvTransferParams>, Response> {
    let target = target.split(',').next().unwrap_or("").trim();
    let allowed = st.allow_remote_prefillers || is_loopback_target(target);
    if !allowed {
        return Err(error_response(&ApiError {
            status: 403,
            kind: "ForbiddenError",
            message: format!("prefiller {target} is not an allowed target"),
            param: None,
        }));
    }
    let mut pre: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Value::Object(obj) = &mut pre else {
        return Ok(None);
    };
    obj.insert("stream".into(), Value::Bool(false));
    obj.remove("stream_options");
    obj.insert("max_tokens".into(), 1.into());
    if api == Api::Chat || obj.contains_key("max_completion_tokens") {
        obj.insert("max_completion_tokens".into(), 1.into());
    }
    obj.insert(
        "kv_transfer_params".into(),
        serde_json::json!({"do_remote_decode": true, "do_remote_prefill": false,
            "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
            "remote_port": null}),
    );
    let path = match api {
        Api::Completions => "/v1/completions",
        Api::Chat => "/v1/chat/completions",
    };
    let resp = st
        .http
        .post(format!("http://{target}{path}"))
        .header(
            "x-request-id",
            format!("{:016x}", super::splitmix64(st.seed ^ 0x5043)),
        )
        .json(&pre)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, %target, "prefill request failed; prefilling locally");
            return Ok(None);
        }
    };
    let status = resp.status().as_u16();
    let text = resp.bytes().await.unwrap_or_default();
    if (400..=451).contains(&status) {
        let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return Err(json_response(code, &value));
    }
    if !(200..300).contains(&status) {
        tracing::warn!(status, %target, "prefiller answered an error; prefilling locally");
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    let kv = value
        .get("kv_transfer_params")
        .cloned()
        .unwrap_or(Value::Null);
    let wrapped = serde_json::json!({"prompt": "x", "kv_transfer_params": kv});
    match protocol::parse_request(Api::Completions, wrapped.to_string().as_bytes()) {
        Ok(ParsedRequest {
            kv_transfer: Some(kv),
            ..
        }) if kv.do_remote_prefill => Ok(Some(kv)),
        _ => Ok(None),
    }
}

fn is_loopback_target(target: &str) -> bool {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    target
        .rsplit_once(':')
        .is_some_and(|(host, port)| host == "localhost" && port.parse::<u16>().is_ok())
}

struct ResponseCtx {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: u32,
    kv_out: Option<Value>,
}

async fn full_response(
    api: Api,
    ctx: ResponseCtx,
    mut rx: mpsc::UnboundedReceiver<StreamEvent>,
) -> Response {
    loop {
        match rx.recv().await {
            Some(StreamEvent::Tokens {
                generated,
                finish: Some(reason),
            }) => {
                let out = FinalOutput {
                    id: &ctx.id,
                    created: ctx.created,
                    model: &ctx.model,
                    text: protocol::output_text(0, generated),
                    finish_reason: reason.as_str(),
                    usage: Usage::new(ctx.prompt_tokens, generated),
                    kv_transfer_params: ctx.kv_out.clone(),
                };
                let body = match api {
                    Api::Completions => protocol::completion_response(&out),
                    Api::Chat => protocol::chat_response(&out),
                };
                return json_response(StatusCode::OK, &body);
            }
            Some(StreamEvent::Tokens { .. }) => {}
            Some(StreamEvent::Rejected) => return error_response(&rejected_error()),
            None => return error_response(&ApiError::internal("the engine stopped")),
        }
    }
}

fn rejected_error() -> ApiError {
    ApiError::bad_request(
        Some("prompt"),
        "the request needs more KV-cache blocks than this server has",
    )
}

struct StreamState {
    st: Arc<AppState>,
    req: ParsedRequest,
    ctx: ResponseCtx,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    sent: u32,
    done: bool,
}

fn stream_response(
    st: Arc<AppState>,
    req: ParsedRequest,
    ctx: ResponseCtx,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
) -> Response {
    let state = StreamState {
        st,
        req,
        ctx,
        rx,
        sent: 0,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let event = s.rx.recv().await;
        s.st.faults.wait_stall().await;
        let chunk = match event {
            Some(StreamEvent::Tokens { generated, finish }) => {
                let text = s.render_tokens(generated, finish);
                s.done = finish.is_some();
                Ok(Bytes::from(text))
            }
            Some(StreamEvent::Rejected) => {
                s.done = true;
                let e = rejected_error().body().to_string();
                Ok(Bytes::from(format!(
                    "{}{}",
                    protocol::sse_event(&e),
                    protocol::SSE_DONE
                )))
            }
            None => {
                // The server died mid-request: break the connection.
                s.done = true;
                Err(std::io::Error::other("engine stopped"))
            }
        };
        Some((chunk, s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl StreamState {
    /// SSE text for the tokens `sent..generated` (with the finish chunk, usage chunk and
    /// `[DONE]` when `finish` is set).
    fn render_tokens(&mut self, generated: u32, finish: Option<FinishReason>) -> String {
        let mut out = String::new();
        let text = protocol::output_text(self.sent, generated);
        let reason = finish.map(FinishReason::as_str);
        let usage = self
            .req
            .continuous_usage
            .then(|| Usage::new(self.ctx.prompt_tokens, generated));
        let ctx = &self.ctx;
        let json = match self.req.api {
            Api::Completions => serde_json::to_string(&CompletionChunk {
                id: &ctx.id,
                object: "text_completion",
                created: ctx.created,
                model: &ctx.model,
                choices: vec![CompletionChunkChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: reason,
                    stop_reason: None,
                }],
                usage,
            }),
            Api::Chat => {
                if self.sent == 0 {
                    let role = ChatChunk {
                        id: &ctx.id,
                        object: "chat.completion.chunk",
                        created: ctx.created,
                        model: &ctx.model,
                        choices: vec![ChatChunkChoice {
                            index: 0,
                            delta: ChatDelta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                            },
                            logprobs: None,
                            finish_reason: None,
                            stop_reason: None,
                        }],
                        usage: usage.map(|_| Usage::new(ctx.prompt_tokens, 0)),
                    };
                    if let Ok(j) = serde_json::to_string(&role) {
                        out.push_str(&protocol::sse_event(&j));
                    }
                }
                serde_json::to_string(&ChatChunk {
                    id: &ctx.id,
                    object: "chat.completion.chunk",
                    created: ctx.created,
                    model: &ctx.model,
                    choices: vec![ChatChunkChoice {
                        index: 0,
                        delta: ChatDelta {
                            role: None,
                            content: Some(text),
                        },
                        logprobs: None,
                        finish_reason: reason,
                        stop_reason: reason.map(|_| None),
                    }],
                    usage,
                })
            }
        };
        if let Ok(j) = json {
            out.push_str(&protocol::sse_event(&j));
        }
        self.sent = generated;
        if finish.is_some() {
            if self.req.include_usage {
                let usage = Usage::new(ctx.prompt_tokens, generated);
                let j = match self.req.api {
                    Api::Completions => serde_json::to_string(&CompletionChunk {
                        id: &ctx.id,
                        object: "text_completion",
                        created: ctx.created,
                        model: &ctx.model,
                        choices: vec![],
                        usage: Some(usage),
                    }),
                    Api::Chat => serde_json::to_string(&ChatChunk {
                        id: &ctx.id,
                        object: "chat.completion.chunk",
                        created: ctx.created,
                        model: &ctx.model,
                        choices: vec![],
                        usage: Some(usage),
                    }),
                };
                if let Ok(j) = j {
                    out.push_str(&protocol::sse_event(&j));
                }
            }
            out.push_str(protocol::SSE_DONE);
        }
        out
    }
}
