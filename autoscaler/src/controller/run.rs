//! `goodput autoscaler run`: the kube-runtime Controller around the pure reconcile.
//!
//! Per ModelAutoscaler, every `spec.policy.intervalSeconds` (and on any change to it, to an
//! AcceleratorPool, or to a Deployment or StatefulSet it scales): list the pools, read each variant's `/scale`, collect the model's metrics
//! from Prometheus, read what the other ModelAutoscalers hold in shared pools from the
//! Controller's watch cache, run [`Reconciler::reconcile`], then write the status subresource (JSON merge
//! patch), publish its Events (`events.k8s.io/v1` via kube's `Recorder`), and actuate (exported
//! gauges; the KEDA scaler's store; or `/scale` patches). Only the Lease holder runs the
//! Controller (see [`super::leader`]); `/healthz`, `/readyz`, `/metrics` serve throughout.
//!
//! Status writes echo back as watch events; a reconcile whose object generation and pools are
//! unchanged since the last pass, less than an interval ago, does not decide again, so the echo
//! does not feed the forecaster an extra sample. It still reads the targets' `/scale`: when a
//! target was scaled in between (by hand, by HPA or KEDA acting on the exported metrics, or by a
//! rollout), only the status's and the gauges' current replicas are refreshed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use goodput_core::Catalog;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::Instrument;

use super::http::{HttpState, router};
use super::leader::LeaseLock;
use super::pool_share::{PoolHoldings, holdings_from_status};
use super::reconcile::{Desired, Reconciler, ScaleState, Snapshot};
use super::shared_capacity::CapacityCache;
use crate::actuation::{DesiredKey, DesiredStore, keda::KedaScaler, scale};
use crate::advise::{gateway_demand, scope_of};
use crate::crd::{
    AcceleratorPool, AcceleratorPoolSpec, Actuation, ModelAutoscaler, ScaleTargetRef, VariantStatus,
};
use crate::export::{ControllerMetrics, ErrorReason};
use crate::metrics::{Grouping, PromHttp, collect};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub prometheus_url: String,
    pub prometheus_timeout: Duration,
    /// Watch one namespace only (all when None).
    pub namespace: Option<String>,
    /// Also export `wva_desired_replicas`.
    pub wva_metrics: bool,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: SocketAddr,
    /// KEDA external scaler gRPC address (None: not served).
    pub keda_addr: Option<SocketAddr>,
    /// Lease namespace and name; None disables leader election (one replica only).
    pub lease: Option<(String, String)>,
    pub lease_duration: Duration,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Field manager and Event reporter name.
    pub controller_name: String,
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Prometheus client: {0}")]
    Prometheus(#[from] crate::metrics::MetricsError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("lost the leader lease; exiting so that another replica takes over")]
    LostLease,
    #[error("KEDA scaler server: {0}")]
    Keda(String),
}

/// Reconcile failures (requeued with back-off by the error policy).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object without namespace")]
    NoNamespace,
}

/// What the last full pass of one object saw and wrote: enough to tell a status echo or a
/// target's change from a reason to decide again, and to refresh current replicas alone.
struct LastPass {
    at: Instant,
    generation: Option<i64>,
    /// The AcceleratorPools' specs, serialised.
    pools: String,
    /// Each variant's `/scale` `spec.replicas` as last written to status.
    current: Vec<Option<u32>>,
    /// The status variants written (so a refresh never writes back an older decision).
    variants: Vec<VariantStatus>,
    desired: Vec<Desired>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub prom: PromHttp,
    pub reconciler: Arc<Mutex<Reconciler>>,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    pub store: DesiredStore,
    pub controller_name: String,
    /// Per object: (last pass, generation, pools fingerprint).
    last: Mutex<HashMap<String, LastPass>>,
    /// The Controller's cache of every ModelAutoscaler it watches: what the other models hold
    /// in shared pools (set when the Controller starts).
    autoscalers: OnceLock<Store<ModelAutoscaler>>,
}

impl Context {
    pub fn new(
        client: Client,
        prom: PromHttp,
        metrics: ControllerMetrics,
        store: DesiredStore,
        controller_name: &str,
        identity: &str,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: controller_name.into(),
                instance: Some(identity.into()),
            },
        );
        Self {
            client,
            prom,
            reconciler: Arc::new(Mutex::new(Reconciler::new(
                Catalog::builtin(),
                CapacityCache::default(),
            ))),
            metrics,
            recorder,
            store,
            controller_name: controller_name.into(),
            last: Mutex::new(HashMap::new()),
            autoscalers: OnceLock::new(),
        }
    }
}

/// A client from the in-cluster service account or the local kubeconfig.
pub async fn infer_client() -> Result<Client, kube::Error> {
    Client::try_default().await
}

/// The current time, as reconciles take it.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// One reconcile of one ModelAutoscaler. Traced as `reconcile` with a child span per step, so
/// that an exported trace shows where a slow pass spent its time (Prometheus, the decision, the
/// API server).
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(
        namespace = ma.namespace().unwrap_or_default(),
        name = %ma.name_any(),
        model = %ma.spec.model,
        decided = tracing::field::Empty,
        desired = tracing::field::Empty,
        reason = tracing::field::Empty,
    )
)]
pub async fn reconcile(
    ma: Arc<ModelAutoscaler>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let namespace = ma.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = ma.name_any();
    let key = format!("{namespace}/{name}");
    let interval = Duration::from_secs(u64::from(ma.spec.policy.interval_seconds.max(1)));
    if ma.meta().deletion_timestamp.is_some() {
        forget(&ctx, &namespace, &name);
        return Ok(Action::await_change());
    }
    let pools: BTreeMap<String, AcceleratorPoolSpec> =
        Api::<AcceleratorPool>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await
            .inspect_err(|_| ctx.metrics.error(ErrorReason::Kube))?
            .into_iter()
            .map(|p| (p.name_any(), p.spec))
            .collect();
    let pools_fp = serde_json::to_string(&pools).unwrap_or_default();
    let generation = ma.meta().generation;
    let current = read_targets(&ctx, &namespace, &ma)
        .instrument(tracing::info_span!("read_targets"))
        .await;
    let seen: Vec<Option<u32>> = current.iter().map(|c| c.map(|s| s.spec)).collect();
    let refresh = {
        let mut last = ctx.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&key) {
            Some(pass)
                if pass.generation == generation
                    && pass.pools == pools_fp
                    && pass.at.elapsed() < interval =>
            {
                let wait = interval - pass.at.elapsed();
                tracing::Span::current().record("decided", false);
                if pass.current == seen {
                    return Ok(Action::requeue(wait));
                }
                match refreshed(pass, &seen) {
                    Some(r) => Some((r, wait)),
                    None => {
                        // Nothing to refresh (no decision yet): remember what was seen.
                        pass.current.clone_from(&seen);
                        None
                    }
                }
            }
            _ => None,
        }
    };
    if let Some(((variants, desired), wait)) = refresh {
        let api: Api<ModelAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": { "variants": variants } });
        let pp = PatchParams {
            field_manager: Some(ctx.controller_name.clone()),
            ..PatchParams::default()
        };
        match api
            .patch_status(&name, &pp, &Patch::Merge(&patch))
            .instrument(tracing::info_span!("patch_status"))
            .await
        {
            // Only a written refresh counts as seen: a failed one is retried at the next reconcile.
            Ok(_) => {
                if let Some(pass) = ctx
                    .last
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&key)
                {
                    pass.current.clone_from(&seen);
                }
            }
            Err(e) => {
                ctx.metrics.error(ErrorReason::Kube);
                tracing::warn!(%key, error = %e, "status patch failed");
            }
        }
        ctx.metrics.current(&namespace, &ma.spec.model, &desired);
        tracing::debug!(%key, "a target changed between decisions; current replicas refreshed");
        return Ok(Action::requeue(wait));
    }
    let pass_started = Instant::now();
    let metrics_started = Instant::now();
    let observed = collect(&ctx.prom, &scope_of(&ma.spec), Grouping::Variant)
        .instrument(tracing::info_span!("collect_metrics"))
        .await
        .map_err(|e| e.to_string());
    let gateway_waiting = gateway_demand(&ctx.prom, &ma.spec).await;
    let prometheus_time = metrics_started.elapsed();
    let others = other_holdings(&ctx).await;

    // The decision may probe the engine model (CPU-bound, cached): off the async workers.
    let reconciler = ctx.reconciler.clone();
    let spec = ma.spec.clone();
    let previous = ma.status.clone();
    let (ns2, name2) = (namespace.clone(), name.clone());
    let pools2 = pools.clone();
    let decide = tracing::info_span!("decide");
    let outcome = tokio::task::spawn_blocking(move || {
        let _in_span = decide.enter();
        let current: Vec<Option<ScaleState>> = current;
        let snap = Snapshot {
            namespace: &ns2,
            name: &name2,
            generation,
            spec: &spec,
            pools: &pools2,
            current: &current,
            metrics: observed.as_ref().map_err(|e| e.clone()),
            gateway_waiting,
            previous: previous.as_ref(),
            now: Timestamp::now(),
            others: &others,
        };
        reconciler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reconcile(&snap)
    })
    .await
    .map_err(|e| {
        ReconcileError::Kube(kube::Error::Service(Box::new(std::io::Error::other(
            e.to_string(),
        ))))
    })?;

    // Status.
    let api: Api<ModelAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({ "status": outcome.status });
    let pp = PatchParams {
        field_manager: Some(ctx.controller_name.clone()),
        ..PatchParams::default()
    };
    let span = tracing::Span::current();
    span.record("decided", true);
    span.record("desired", outcome.status.desired_replicas);
    span.record("reason", outcome.status.reason.as_str());
    if let Err(e) = api
        .patch_status(&name, &pp, &Patch::Merge(&patch))
        .instrument(tracing::info_span!("patch_status"))
        .await
    {
        ctx.metrics.error(ErrorReason::Kube);
        tracing::warn!(%key, error = %e, "status patch failed");
    }
    // Actuation.
    let mut events = outcome.events.clone();
    for p in &outcome.patches {
        if let Err(e) = scale::patch(
            &ctx.client,
            &namespace,
            &p.target,
            p.replicas,
            &ctx.controller_name,
        )
        .instrument(
            tracing::info_span!("patch_scale", target = %p.target.name, replicas = p.replicas),
        )
        .await
        {
            ctx.metrics.error(ErrorReason::Actuation);
            events.push(super::reconcile::EventNote {
                warning: true,
                reason: "ScaleFailed".into(),
                note: format!("{} {}: {e}", p.target.kind, p.target.name),
            });
        }
    }
    if outcome.actuation == Actuation::Keda {
        for d in &outcome.desired {
            ctx.store.set(
                DesiredKey {
                    namespace: namespace.clone(),
                    autoscaler: name.clone(),
                    variant: d.variant.clone(),
                },
                d.replicas,
            );
        }
    }
    ctx.last.lock().unwrap_or_else(|p| p.into_inner()).insert(
        key.clone(),
        LastPass {
            at: pass_started,
            generation,
            pools: pools_fp,
            current: seen,
            variants: outcome.status.variants.clone(),
            desired: outcome.desired.clone(),
        },
    );
    let slo = (
        ma.spec.slo.ttft.target_ms / 1e3,
        ma.spec.slo.itl.target_ms / 1e3,
    );
    ctx.metrics
        .record(&namespace, &ma.spec.model, slo, &outcome);
    for (pool_name, used) in &outcome.pool_devices_used {
        if let Some(pool) = pools.get(pool_name) {
            ctx.metrics
                .pool(pool_name, &pool.accelerator_type, pool.devices, *used);
        }
    }
    // Events.
    let reference = ma.object_ref(&());
    for e in events {
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason,
            note: Some(e.note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx
            .recorder
            .publish(&ev, &reference)
            .instrument(tracing::info_span!("publish_event"))
            .await
        {
            ctx.metrics.error(ErrorReason::Kube);
            tracing::warn!(%key, error = %err, "event not published");
        }
    }
    ctx.metrics
        .reconcile_duration_seconds
        .observe((started.elapsed().saturating_sub(prometheus_time)).as_secs_f64());
    tracing::info!(%key, desired = outcome.status.desired_replicas, reason = %outcome.status.reason, "reconciled");
    Ok(Action::requeue(interval))
}

/// Each variant's `/scale` (None where it cannot be read: a missing target is reported by the
/// decision, not an error of the pass).
async fn read_targets(
    ctx: &Context,
    namespace: &str,
    ma: &ModelAutoscaler,
) -> Vec<Option<ScaleState>> {
    let mut current = Vec::with_capacity(ma.spec.variants.len());
    for v in &ma.spec.variants {
        current.push(
            scale::read(&ctx.client, namespace, &v.scale_target_ref)
                .await
                .inspect_err(
                    |e| tracing::debug!(target = %v.scale_target_ref.name, error = %e, "no /scale"),
                )
                .ok(),
        );
    }
    current
}

/// The last pass's status variants and desired counts with `seen` as the current replicas; None
/// when the last pass wrote no variants (an invalid spec).
fn refreshed(pass: &LastPass, seen: &[Option<u32>]) -> Option<(Vec<VariantStatus>, Vec<Desired>)> {
    if pass.variants.len() != seen.len() || pass.desired.len() != seen.len() {
        return None;
    }
    let mut variants = pass.variants.clone();
    let mut desired = pass.desired.clone();
    for ((v, d), s) in variants.iter_mut().zip(&mut desired).zip(seen) {
        v.current_replicas = s.unwrap_or(0);
        d.current = *s;
    }
    Some((variants, desired))
}

/// Maps a changed `apps/v1` workload of `kind` to the ModelAutoscalers with a variant scaling
/// it (same namespace and name).
fn scaling<K: Resource>(
    autoscalers: Store<ModelAutoscaler>,
    kind: &'static str,
) -> impl Fn(K) -> Vec<ObjectRef<ModelAutoscaler>> + Send + 'static {
    move |workload: K| {
        let (namespace, name) = (workload.namespace(), workload.name_any());
        let targets =
            |t: &ScaleTargetRef| t.api_version == "apps/v1" && t.kind == kind && t.name == name;
        autoscalers
            .state()
            .iter()
            .filter(|ma| ma.namespace() == namespace)
            .filter(|ma| {
                ma.spec
                    .variants
                    .iter()
                    .any(|v| targets(&v.scale_target_ref))
            })
            .map(|ma| ObjectRef::from_obj(&**ma))
            .collect()
    }
}

/// What every existing ModelAutoscaler's status says it holds in the pools, by
/// `namespace/name`, once the Controller's cache has its first full list (before that, a model
/// would plan into devices that others it has not seen yet hold).
async fn other_holdings(ctx: &Context) -> BTreeMap<String, PoolHoldings> {
    let Some(store) = ctx.autoscalers.get() else {
        return BTreeMap::new();
    };
    if store.wait_until_ready().await.is_err() {
        return BTreeMap::new();
    }
    store
        .state()
        .iter()
        .filter(|ma| ma.meta().deletion_timestamp.is_none())
        .filter_map(|ma| {
            let key = format!("{}/{}", ma.namespace()?, ma.name_any());
            Some((key, holdings_from_status(&ma.spec, ma.status.as_ref())))
        })
        .collect()
}

fn forget(ctx: &Context, namespace: &str, name: &str) {
    ctx.reconciler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(namespace, name);
    ctx.store.remove_autoscaler(namespace, name);
    ctx.last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&format!("{namespace}/{name}"));
}

fn error_policy(_ma: Arc<ModelAutoscaler>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %error, "reconcile failed");
    ctx.metrics.error(ErrorReason::Kube);
    Action::requeue(Duration::from_secs(15))
}

/// Runs the Controller until `stop` fires.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    let client = ctx.client.clone();
    let mas: Api<ModelAutoscaler> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pools: Api<AcceleratorPool> = Api::all(client.clone());
    // The targets are watched so that a change to one shows in status before the next interval.
    // LeaderWorkerSets are read each interval only: their CRD may not be installed, and a watch
    // on a missing resource would fail for as long as the controller runs.
    let (deployments, statefulsets): (Api<Deployment>, Api<StatefulSet>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let controller = Controller::new(mas, watcher::Config::default());
    let reader = controller.store();
    // One Controller per process: losing the lease ends the process.
    let _ = ctx.autoscalers.set(reader.clone());
    controller
        .watches(
            deployments,
            watcher::Config::default(),
            scaling::<Deployment>(reader.clone(), "Deployment"),
        )
        .watches(
            statefulsets,
            watcher::Config::default(),
            scaling::<StatefulSet>(reader.clone(), "StatefulSet"),
        )
        .watches(
            pools,
            watcher::Config::default(),
            move |pool: AcceleratorPool| {
                let name = pool.name_any();
                reader
                    .state()
                    .into_iter()
                    .filter(|ma| ma.spec.variants.iter().any(|v| v.pool == name))
                    .map(|ma| ObjectRef::from_obj(&*ma))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// The whole controller process: HTTP endpoints, optional KEDA scaler, leader election, and the
/// Controller while leading. Returns on `shutdown` or when the lease is lost.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let prom = PromHttp::new(&cfg.prometheus_url, cfg.prometheus_timeout)?;
    let mut registry = crate::export::registry();
    let mut wva = prometheus_client::registry::Registry::default();
    let metrics = ControllerMetrics::register(&mut registry, cfg.wva_metrics.then_some(&mut wva));
    let http = HttpState::new(vec![registry, wva]);
    let store = DesiredStore::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        prom,
        metrics,
        store.clone(),
        &cfg.controller_name,
        &cfg.identity,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    });

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.http_addr,
            source,
        })?;
    let app = router(http.clone());
    let mut http_stop = stop_rx.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    if let Some(addr) = cfg.keda_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        let svc = KedaScaler::new(store).into_service();
        let mut keda_stop = stop_rx.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = keda_stop.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(error = %e, "KEDA scaler server stopped");
            }
        });
    }

    // Ready means serving, leader or standby: a pod that only became ready once it led would
    // never become ready during a rolling update (the old pod holds the Lease until it is
    // replaced), and the rollout would stall.
    http.set_ready(true);
    let (lead_tx, mut lead_rx) = watch::channel(cfg.lease.is_none());
    let lease_task = cfg.lease.as_ref().map(|(ns, name)| {
        let lock = LeaseLock::new(client.clone(), ns, name, &cfg.identity, cfg.lease_duration);
        let stop = stop_rx.clone();
        tokio::spawn(async move { lock.hold(lead_tx, stop).await })
    });
    // Wait to lead (or to stop).
    let mut stop_wait = stop_rx.clone();
    tokio::select! {
        r = lead_rx.wait_for(|l| *l) => if r.is_err() {
            // The lease task ends when asked to stop: that is a shutdown, not a lost lease.
            return if *stop_rx.borrow() { Ok(()) } else { Err(RunError::LostLease) };
        },
        _ = stop_wait.wait_for(|s| *s) => return Ok(()),
    }
    let controller = tokio::spawn(run_controller(ctx, cfg.namespace.clone(), stop_rx.clone()));
    let lost = async {
        // Leadership is lost when the flag goes false; the sender going away means the lease
        // task stopped because we are shutting down, which is not a loss.
        if lease_task.is_none() || lead_rx.wait_for(|l| !*l).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut stop_wait = stop_rx.clone();
    let result = tokio::select! {
        biased;
        _ = stop_wait.wait_for(|s| *s) => Ok(()),
        _ = lost => Err(RunError::LostLease),
    };
    let _ = stop_tx.send(true);
    http.set_ready(false);
    let _ = controller.await;
    result
}
