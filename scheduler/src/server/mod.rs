//! `goodput scheduler serve`: the picker behind Envoy.
//!
//! Data flow:
//! ```text
//! --endpoints / --endpoints-file (once) ─┐
//! Kubernetes discovery (pods by selector ┴─► Pool (endpoint set, per-variant predictors)
//!   or InferencePool, as they change)          │   ▲  ◄── scraper: GET /metrics of the current
//!                                              │   │      set every interval (stale → down)
//! Envoy ──ext_proc gRPC──► ExtProc ──────pick──┘   └── in flight, first token, finished
//!                              │ measured TTFT/TPOT + features at dispatch
//!                              ▼
//!                  the variant's Predictor (in-process, background trainer)
//! /metrics (axum, --metrics-port) ◄── SchedulerMetrics
//! ```
//! Endpoints come from a static list or a file (read at start), or (cargo feature
//! `kubernetes`) from [`discovery`], which keeps the pool's set equal to the cluster's ready
//! pods; the pool drains endpoints that leave.

#[cfg(feature = "kubernetes")]
pub mod discovery;
pub mod envoy;
pub mod extproc;
pub mod pool;
pub mod scrape;
pub mod variants;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use goodput_core::catalog::Catalog;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::goodput::{GoodputConfig, GoodputPicker};
use crate::metrics::{SchedulerMetrics, StateLabels};
use crate::pick::Picker;
use crate::server::extproc::{ExtProc, PredictionSwitch, Shared};
use crate::server::pool::{EndpointSpec, Pool, SpecError, Staleness, parse_endpoints};
use crate::server::variants::{PredictorSettings, Variants};

/// Where the endpoints come from.
#[derive(Debug, Clone)]
pub enum EndpointSource {
    /// `host:port[ attrs],...`
    List(String),
    /// One entry per line.
    File(PathBuf),
    /// Pods in Kubernetes, followed as they come and go.
    #[cfg(feature = "kubernetes")]
    Kubernetes(discovery::DiscoveryConfig),
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub endpoints: EndpointSource,
    /// `goodput`, `round-robin`, `least-requests` or `prefix-load`.
    pub picker: String,
    pub goodput: GoodputConfig,
    pub scrape_interval: Duration,
    pub staleness: Staleness,
    /// Catalog model served by the endpoints (for physics priors of endpoints that name
    /// their accelerator).
    pub model: String,
    /// False: no predictor at all (every pick is a load-based fallback).
    pub predictions: bool,
    /// Seconds between scheduled retrainings of the predictors.
    pub retrain_interval_s: f64,
    /// How long a request waits for an endpoint when none can take it (a fleet scaled to zero
    /// or still starting) before it is answered 503; zero answers at once. Held requests are
    /// the `requests_waiting` gauge, the signal an autoscaler wakes a fleet at zero on.
    pub hold_when_no_endpoint: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            endpoints: EndpointSource::List(String::new()),
            picker: "goodput".into(),
            goodput: GoodputConfig::default(),
            scrape_interval: Duration::from_millis(50),
            staleness: Staleness {
                stale_after: Duration::from_secs(2),
                down_after: Duration::from_secs(30),
                down_after_failures: 3,
            },
            model: "llama-3.1-8b".into(),
            predictions: true,
            retrain_interval_s: 10.0,
            hold_when_no_endpoint: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading endpoints file {path}: {source}")]
    ReadEndpoints {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("unknown picker `{0}` (goodput, round-robin, least-requests, prefix-load)")]
    Picker(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
    #[error("starting the predictor trainer: {0}")]
    Trainer(std::io::Error),
    #[cfg(feature = "kubernetes")]
    #[error("Kubernetes client: {0}")]
    Kube(String),
}

/// Reads the configured static endpoints (none for a Kubernetes source: discovery adds them
/// once the scheduler runs).
pub fn load_endpoints(source: &EndpointSource) -> Result<Vec<EndpointSpec>, ServeError> {
    let text = match source {
        EndpointSource::List(s) => s.clone(),
        EndpointSource::File(p) => {
            std::fs::read_to_string(p).map_err(|source| ServeError::ReadEndpoints {
                path: p.display().to_string(),
                source,
            })?
        }
        #[cfg(feature = "kubernetes")]
        EndpointSource::Kubernetes(_) => return Ok(Vec::new()),
    };
    let specs = parse_endpoints(&text)?;
    if specs.is_empty() {
        return Err(ServeError::NoEndpoints);
    }
    Ok(specs)
}

/// A running scheduler's shared state and background work.
pub struct Running {
    pub shared: Arc<Shared>,
    pub registry: Arc<Registry>,
    /// Tasks stopped with the server (discovery).
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts Kubernetes discovery feeding this scheduler's pool through `client` (tests
    /// pass a client of their own; [`serve_on`] uses the in-cluster or kubeconfig one).
    #[cfg(feature = "kubernetes")]
    pub fn spawn_discovery(&mut self, client: kube::Client, config: discovery::DiscoveryConfig) {
        let sink: Arc<dyn discovery::EndpointSink> = Arc::clone(&self.shared) as _;
        self.background
            .push(tokio::spawn(discovery::run(client, config, sink)));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

/// Builds the pool, predictors and metrics for `config` (with a Kubernetes source the pool
/// starts empty).
pub fn build(config: &ServeConfig) -> Result<Running, ServeError> {
    let specs = load_endpoints(&config.endpoints)?;
    if config.predictions {
        // A bad --model fails at start, not when the first endpoint shows up.
        Catalog::builtin()
            .model(&config.model)
            .map_err(|e| ServeError::Catalog(e.to_string()))?;
    }
    let variants = Variants::new(PredictorSettings {
        enabled: config.predictions,
        model: config.model.clone(),
        retrain_interval_s: config.retrain_interval_s,
    });
    let picker: Box<dyn Picker> = match config.picker.as_str() {
        "goodput" => Box::new(GoodputPicker::new(config.goodput)),
        other => crate::picker_for(other).ok_or_else(|| ServeError::Picker(other.into()))?,
    };
    let pool = Pool::with_endpoints(specs, variants, picker, config.staleness)?;
    let metrics = SchedulerMetrics::default();
    let mut registry = Registry::with_prefix("goodput_scheduler");
    metrics.register(&mut registry);
    let shared = Arc::new(Shared {
        pool: Mutex::new(pool),
        latency: PredictionSwitch::default(),
        metrics,
        hold_when_no_endpoint: config.hold_when_no_endpoint,
    });
    Ok(Running {
        shared,
        registry: Arc::new(registry),
        background: Vec::new(),
    })
}

/// Scrapes the `/metrics` of every endpoint in the pool's current set every `interval`,
/// forever.
pub async fn scrape_loop(shared: Arc<Shared>, interval: Duration) {
    let client = match reqwest::Client::builder()
        .timeout(interval.max(Duration::from_millis(500)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the scrape client: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The set may change between ticks (discovery); results of endpoints that left or
        // whose slot changed hands meanwhile are dropped by the pool.
        let targets = lock(&shared).scrape_targets();
        let results = futures::future::join_all(targets.iter().map(|t| {
            let url = format!("http://{}/metrics", t.addr);
            let client = client.clone();
            async move {
                let r = client.get(&url).send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                let text = r.text().await.ok()?;
                match scrape::parse_vllm_metrics(&text) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::debug!("{url}: {e}");
                        None
                    }
                }
            }
        }))
        .await;
        let now = Instant::now();
        let mut pool = lock(&shared);
        for (t, r) in targets.iter().zip(results) {
            pool.scrape_result(t, r, now);
        }
        let (ready, stale, down) = pool.health_counts(now);
        drop(pool);
        for (state, n) in [("ready", ready), ("stale", stale), ("down", down)] {
            shared
                .metrics
                .endpoints
                .get_or_create(&StateLabels { state })
                .set(n);
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Pool> {
    match shared.pool.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Serves `/metrics`, `/healthz` (200 while the process serves) and `/readyz` (200 when at
/// least one endpoint is ready, else 503: the pod should not get traffic it can only answer
/// with 503; but 200 whenever requests are held for an endpoint, since holding them is what
/// wakes a fleet at zero) on `listener`.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
) -> Result<(), std::io::Error> {
    use axum::http::StatusCode;
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = Arc::clone(&registry);
                async move {
                    let mut text = String::new();
                    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
                        return (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(CONTENT_TYPE, "text/plain")],
                            String::from("encoding failed"),
                        );
                    }
                    (
                        StatusCode::OK,
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let shared = Arc::clone(&shared);
                async move {
                    let (ready, _, _) = lock(&shared).health_counts(Instant::now());
                    if ready > 0 {
                        (StatusCode::OK, format!("{ready} endpoints ready"))
                    } else if !shared.hold_when_no_endpoint.is_zero() {
                        (
                            StatusCode::OK,
                            "no endpoint ready; requests are held for one".to_string(),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no endpoint ready".to_string(),
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

/// Runs the scheduler on already-bound listeners until `shutdown` resolves.
pub async fn serve_on(
    config: ServeConfig,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    #[allow(unused_mut)]
    let mut running = build(&config)?;
    #[cfg(feature = "kubernetes")]
    if let EndpointSource::Kubernetes(d) = &config.endpoints {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| ServeError::Kube(e.to_string()))?;
        running.spawn_discovery(client, d.clone());
    }
    serve_running(running, config.scrape_interval, grpc, metrics, shutdown).await
}

/// Runs an already-built scheduler (tests keep a handle on its [`Shared`] state).
pub async fn serve_running(
    running: Running,
    scrape_interval: Duration,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let scraper = tokio::spawn(scrape_loop(Arc::clone(&running.shared), scrape_interval));
    let metrics_task = metrics.map(|l| {
        tokio::spawn(serve_metrics(
            l,
            Arc::clone(&running.registry),
            Arc::clone(&running.shared),
        ))
    });
    // ext_proc messages are small and latency-bound: no Nagle delay on Envoy's connections.
    let incoming = futures::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc),
        |conn| {
            conn.and_then(|s| {
                s.set_nodelay(true)?;
                Ok(s)
            })
        },
    );
    let result = tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(ExtProc::new(Arc::clone(
            &running.shared,
        ))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    scraper.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    result?;
    Ok(())
}

/// Binds `grpc_addr` (and `metrics_addr`) and serves until `shutdown` resolves.
pub async fn serve(
    config: ServeConfig,
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let grpc = TcpListener::bind(grpc_addr).await?;
    let metrics = match metrics_addr {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    serve_on(config, grpc, metrics, shutdown).await
}
