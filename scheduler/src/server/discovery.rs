//! Kubernetes endpoint discovery (cargo feature `kubernetes`): the scheduler's endpoints are the
//! ready pods matching a label selector, one per (pod, target port), as the Gateway API
//! Inference Extension's endpoint picker finds them; the selector and ports come from the
//! command line (`--selector`, `--target-ports`) or from an `InferencePool`
//! (`inference.networking.k8s.io/v1`, `--inference-pool`), whose changes are followed.
//!
//! Data flow:
//! ```text
//! InferencePool watch ──► PoolSpec (selector, ports) ──(selector changed: new pod watch)──┐
//!                                                                                          ▼
//! Pod watch (labelSelector) ──► Mirror (complete snapshot) ──► endpoints_from(spec, pods)
//!      ──► Vec<EndpointSpec> ──► EndpointSink::apply (the Pool: add, drain, remove)
//! ```
//! The mapping from a snapshot to the endpoint set, [`endpoints_from`], is a pure function;
//! the watchers only keep snapshots current. A pod is an endpoint iff it matches the selector,
//! has no `deletionTimestamp`, has condition `Ready=True` and a `status.podIP`; the annotation
//! `inference.networking.k8s.io/active-ports` limits which target ports are active. The pod
//! labels `goodput.dev/role`, `goodput.dev/accelerator` and `goodput.dev/tensor-parallel` give
//! the endpoint's attributes; a pod with a value the scheduler cannot use is logged as an error
//! and skipped, never a panic. Watch errors are logged and retried with kube's default backoff;
//! the last endpoint set stays in force meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use goodput_predictor::PodType;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde::Deserialize;

use crate::server::extproc::Shared;
use crate::server::pool::{Applied, EndpointSpec};

/// Pod label naming the endpoint's role: `prefill`, `decode` or `unified` (absent: unified).
pub const ROLE_LABEL: &str = "goodput.dev/role";
/// Pod label naming the endpoint's accelerator by catalog id (e.g. `h100`); absent: no
/// physics prior for its predictor.
pub const ACCELERATOR_LABEL: &str = "goodput.dev/accelerator";
/// Pod label with the endpoint's tensor parallelism, a positive integer (absent: 1).
pub const TP_LABEL: &str = "goodput.dev/tensor-parallel";
/// GIE's pod annotation limiting the active target ports, e.g. `"8000,8001"`.
pub const ACTIVE_PORTS_ANNOTATION: &str = "inference.networking.k8s.io/active-ports";
/// The InferencePool API.
pub const POOL_GROUP: &str = "inference.networking.k8s.io";
pub const POOL_VERSION: &str = "v1";
pub const POOL_KIND: &str = "InferencePool";
pub const POOL_PLURAL: &str = "inferencepools";
/// GIE's limit on target ports.
pub const MAX_TARGET_PORTS: usize = 8;

/// Which pods and ports make the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Equality selector (every label must match); never empty.
    pub match_labels: BTreeMap<String, String>,
    /// 1 to 8 distinct ports; each is an endpoint `podIP:port`.
    pub target_ports: Vec<u16>,
}

impl PoolSpec {
    /// The selector in the API's `labelSelector` syntax (`a=b,c=d`).
    pub fn label_selector(&self) -> String {
        self.match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether `labels` carry every label of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Bad discovery settings or a bad InferencePool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("selector `{text}`: {message}")]
    Selector { text: String, message: String },
    #[error("target ports `{text}`: {message}")]
    Ports { text: String, message: String },
    #[error("InferencePool `{name}`: {message}")]
    Pool { name: String, message: String },
}

/// Parses `key=value[,key=value]` (equality only, as an InferencePool's `matchLabels`).
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let err = |m: &str| DiscoveryError::Selector {
        text: text.into(),
        message: m.into(),
    };
    let mut out = BTreeMap::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(&format!("`{part}` is not key=value")));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.ends_with('!') || v.contains('=') {
            return Err(err(&format!(
                "`{part}` is not key=value (only equality is supported)"
            )));
        }
        if !valid_label_part(k, true) || !valid_label_part(v, false) {
            return Err(err(&format!("`{part}` is not a valid label key=value")));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(err(&format!("key `{k}` given twice")));
        }
    }
    if out.is_empty() {
        return Err(err("empty: it would select every pod in the namespace"));
    }
    Ok(out)
}

/// Label keys (optionally `prefix/name`) and values: alphanumerics, `-`, `_`, `.`, at most 63
/// characters per name (253 for a key's prefix); values may be empty.
fn valid_label_part(s: &str, key: bool) -> bool {
    let name_ok = |n: &str, max: usize| {
        n.len() <= max
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && n.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && n.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    if !key {
        return name_ok(s, 63);
    }
    match s.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && !name.is_empty() && name_ok(prefix, 253) && name_ok(name, 63)
        }
        None => !s.is_empty() && name_ok(s, 63),
    }
}

/// Parses `8000[,8001]`: 1 to 8 distinct ports in 1..65535.
pub fn parse_target_ports(text: &str) -> Result<Vec<u16>, DiscoveryError> {
    let err = |m: String| DiscoveryError::Ports {
        text: text.into(),
        message: m,
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p: u16 = part
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| err(format!("`{part}` is not a port in 1..65535")))?;
        if out.contains(&p) {
            return Err(err(format!("port {p} given twice")));
        }
        out.push(p);
    }
    check_port_count(&out).map_err(err)?;
    Ok(out)
}

fn check_port_count(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() || ports.len() > MAX_TARGET_PORTS {
        return Err(format!(
            "{} ports; 1 to {MAX_TARGET_PORTS} are allowed",
            ports.len()
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpecWire {
    selector: SelectorWire,
    target_ports: Vec<PortWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorWire {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PortWire {
    number: i64,
}

/// The selector and ports of an InferencePool object (`spec.selector.matchLabels`,
/// `spec.targetPorts[].number`).
pub fn pool_spec_from(
    name: &str,
    spec: Option<&serde_json::Value>,
) -> Result<PoolSpec, DiscoveryError> {
    let err = |m: String| DiscoveryError::Pool {
        name: name.into(),
        message: m,
    };
    let spec = spec.ok_or_else(|| err("has no spec".into()))?;
    let wire: PoolSpecWire =
        serde_json::from_value(spec.clone()).map_err(|e| err(format!("spec: {e}")))?;
    if wire.selector.match_labels.is_empty() {
        return Err(err("spec.selector.matchLabels is empty".into()));
    }
    let mut ports = Vec::new();
    for p in wire.target_ports {
        let port = u16::try_from(p.number)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| err(format!("target port {} is not in 1..65535", p.number)))?;
        if ports.contains(&port) {
            return Err(err(format!("target port {port} listed twice")));
        }
        ports.push(port);
    }
    check_port_count(&ports).map_err(|m| err(format!("spec.targetPorts: {m}")))?;
    Ok(PoolSpec {
        match_labels: wire.selector.match_labels,
        target_ports: ports,
    })
}

/// A pod that matched the selector and was ready but could not become an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rejected {
    /// `namespace/name`.
    pub pod: String,
    pub reason: String,
}

/// The endpoints a snapshot yields, and the pods skipped for bad labels or annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub endpoints: Vec<EndpointSpec>,
    pub rejected: Vec<Rejected>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Whether the pod may serve: not terminating, `Ready=True`, with an IP.
fn serving_ip(pod: &Pod) -> Option<&str> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    ready.then_some(ip)
}

/// Role, accelerator and tp from the pod's labels.
fn attributes(labels: &BTreeMap<String, String>) -> Result<(PodType, Option<String>, u32), String> {
    let role = match labels.get(ROLE_LABEL).map(String::as_str) {
        None | Some("unified") => PodType::Monolithic,
        Some("prefill") => PodType::Prefill,
        Some("decode") => PodType::Decode,
        Some(other) => {
            return Err(format!(
                "label {ROLE_LABEL}=`{other}`: expected prefill, decode or unified"
            ));
        }
    };
    let accelerator = match labels.get(ACCELERATOR_LABEL) {
        None => None,
        Some(a) if a.is_empty() => {
            return Err(format!("label {ACCELERATOR_LABEL} is empty"));
        }
        Some(a) => Some(a.clone()),
    };
    let tp = match labels.get(TP_LABEL) {
        None => 1,
        Some(t) => t
            .parse()
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| format!("label {TP_LABEL}=`{t}`: expected a positive integer"))?,
    };
    Ok((role, accelerator, tp))
}

/// The target ports active on `pod`: all, or those its annotation lists.
fn active_ports(pod: &Pod, target: &[u16]) -> Result<Vec<u16>, String> {
    let Some(text) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACTIVE_PORTS_ANNOTATION))
    else {
        return Ok(target.to_vec());
    };
    let mut listed = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p: u16 = part.parse().map_err(|_| {
            format!("annotation {ACTIVE_PORTS_ANNOTATION}=`{text}`: `{part}` is not a port")
        })?;
        listed.insert(p);
    }
    Ok(target
        .iter()
        .copied()
        .filter(|p| listed.contains(p))
        .collect())
}

/// The endpoint set of a snapshot of pods under `pool`: one endpoint per (ready pod, active
/// target port), in pod order then port order. Pods that do not match the selector, are
/// terminating, not ready or have no IP yet are left out quietly (that is their normal life);
/// pods with unusable labels or annotations, or whose address another pod already took, are
/// listed in [`Discovered::rejected`].
pub fn endpoints_from<'a>(pool: &PoolSpec, pods: impl IntoIterator<Item = &'a Pod>) -> Discovered {
    let mut out = Discovered::default();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let no_labels = BTreeMap::new();
    for pod in pods {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
        if !pool.matches(labels) {
            continue;
        }
        let Some(ip) = serving_ip(pod) else {
            continue;
        };
        let key = pod_key(pod);
        let reject = |reason: String| Rejected {
            pod: key.clone(),
            reason,
        };
        let (role, accelerator, tp) = match attributes(labels) {
            Ok(a) => a,
            Err(reason) => {
                out.rejected.push(reject(reason));
                continue;
            }
        };
        let ports = match active_ports(pod, &pool.target_ports) {
            Ok(p) => p,
            Err(reason) => {
                out.rejected.push(reject(reason));
                continue;
            }
        };
        for port in ports {
            let addr = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            if let Some(owner) = taken.get(&addr) {
                out.rejected
                    .push(reject(format!("address {addr} is already pod {owner}'s")));
                continue;
            }
            taken.insert(addr.clone(), key.clone());
            out.endpoints.push(EndpointSpec {
                addr,
                role,
                accelerator: accelerator.clone(),
                tp,
            });
        }
    }
    out
}

/// A watch's objects by `namespace/name`, complete after each (re)list: a relist is
/// buffered and swapped in when it is done, so a snapshot is never a half-listed set.
#[derive(Debug, Clone)]
pub struct Mirror<K> {
    objects: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Resource> Mirror<K> {
    fn key(k: &K) -> String {
        let m = k.meta();
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
    }

    /// Applies one watch event; true when the snapshot changed and is complete.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Apply(k) => {
                self.objects.insert(Self::key(&k), k);
                self.synced
            }
            Event::Delete(k) => {
                self.objects.remove(&Self::key(&k));
                self.synced
            }
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(Self::key(&k), k);
                false
            }
            Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
        }
    }

    /// Whether a first list completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.objects.values()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&format!("{namespace}/{name}"))
    }
}

/// Where the endpoints come from in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// Pods by label selector, with these ports.
    Selector(PoolSpec),
    /// The selector and ports of this InferencePool, followed as it changes.
    InferencePool(String),
}

/// Discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub namespace: String,
    pub source: KubeSource,
}

/// What discovery feeds: the scheduler's pool, or a test's recorder.
pub trait EndpointSink: Send + Sync + 'static {
    fn apply(&self, endpoints: Vec<EndpointSpec>) -> Applied;
}

impl EndpointSink for Shared {
    fn apply(&self, endpoints: Vec<EndpointSpec>) -> Applied {
        self.set_endpoints(endpoints)
    }
}

type PodEvents = Pin<Box<dyn Stream<Item = Result<Event<Pod>, watcher::Error>> + Send>>;

fn pod_events(api: &Api<Pod>, spec: &PoolSpec) -> PodEvents {
    let config = watcher::Config::default().labels(&spec.label_selector());
    Box::pin(watcher(api.clone(), config).default_backoff())
}

/// Publishes snapshots to the sink, logging each rejection once (until it goes away) and
/// each change of the set.
struct Publisher {
    sink: Arc<dyn EndpointSink>,
    logged: HashSet<(String, String)>,
}

impl Publisher {
    fn publish(&mut self, endpoints: Vec<EndpointSpec>, rejected: Vec<Rejected>) {
        let applied = self.sink.apply(endpoints);
        let mut now: HashSet<(String, String)> = rejected
            .into_iter()
            .map(|r| (format!("pod {}", r.pod), r.reason))
            .collect();
        now.extend(
            applied
                .rejected
                .iter()
                .map(|(addr, reason)| (format!("endpoint {addr}"), reason.clone())),
        );
        for (what, reason) in now.difference(&self.logged) {
            tracing::error!(%what, %reason, "discovery: skipped");
        }
        self.logged = now;
        if !(applied.added.is_empty()
            && applied.removed.is_empty()
            && applied.draining.is_empty()
            && applied.changed.is_empty())
        {
            tracing::info!(
                added = ?applied.added,
                removed = ?applied.removed,
                draining = ?applied.draining,
                changed = ?applied.changed,
                "discovery: endpoint set changed"
            );
        }
    }

    fn pods(&mut self, spec: &PoolSpec, mirror: &Mirror<Pod>) {
        let d = endpoints_from(spec, mirror.objects());
        self.publish(d.endpoints, d.rejected);
    }
}

/// Keeps `sink`'s endpoint set equal to what the cluster says, forever (run it as a task;
/// abort it to stop).
pub async fn run(client: kube::Client, config: DiscoveryConfig, sink: Arc<dyn EndpointSink>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
    let mut publisher = Publisher {
        sink,
        logged: HashSet::new(),
    };
    match config.source {
        KubeSource::Selector(spec) => follow_selector(pods, spec, &mut publisher).await,
        KubeSource::InferencePool(name) => {
            let gvk = GroupVersionKind::gvk(POOL_GROUP, POOL_VERSION, POOL_KIND);
            let ar = ApiResource::from_gvk_with_plural(&gvk, POOL_PLURAL);
            let pools: Api<DynamicObject> = Api::namespaced_with(client, &config.namespace, &ar);
            follow_pool(pools, pods, &config.namespace, &name, &mut publisher).await;
        }
    }
}

async fn follow_selector(api: Api<Pod>, spec: PoolSpec, publisher: &mut Publisher) {
    let mut events = pod_events(&api, &spec);
    let mut mirror = Mirror::default();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                if mirror.apply(ev) {
                    publisher.pods(&spec, &mirror);
                }
            }
            Err(e) => tracing::warn!("discovery: watching pods: {e}"),
        }
    }
}

async fn follow_pool(
    pools: Api<DynamicObject>,
    pods: Api<Pod>,
    namespace: &str,
    name: &str,
    publisher: &mut Publisher,
) {
    // The API server filters by name; the pool is also looked up by name in the snapshot.
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut pool_events = Box::pin(watcher(pools, config).default_backoff());
    let mut pool_mirror: Mirror<DynamicObject> = Mirror::default();
    let mut spec: Option<PoolSpec> = None;
    let mut pod_stream: Option<PodEvents> = None;
    let mut pod_mirror: Mirror<Pod> = Mirror::default();
    loop {
        tokio::select! {
            ev = pool_events.next() => {
                let Some(ev) = ev else { return };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!("discovery: watching InferencePool {namespace}/{name}: {e}");
                        continue;
                    }
                };
                if !pool_mirror.apply(ev) {
                    continue;
                }
                let next = match pool_mirror.get(namespace, name) {
                    None => None,
                    Some(obj) => match pool_spec_from(name, obj.data.get("spec")) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            // Hold the last good selector: a bad edit must not empty the pool.
                            tracing::error!("discovery: {e}; keeping the previous endpoints");
                            continue;
                        }
                    },
                };
                if next == spec {
                    continue;
                }
                match &next {
                    None => {
                        tracing::warn!("discovery: InferencePool {namespace}/{name} not found; no endpoints");
                        pod_stream = None;
                        pod_mirror = Mirror::default();
                        publisher.publish(Vec::new(), Vec::new());
                    }
                    Some(s) => {
                        tracing::info!(selector = %s.label_selector(), ports = ?s.target_ports,
                            "discovery: InferencePool {namespace}/{name}");
                        let reselect = spec.as_ref().is_none_or(|old| old.match_labels != s.match_labels);
                        if reselect || pod_stream.is_none() {
                            // The old snapshot stays until the new list completes; filtered by the
                            // new selector meanwhile, so pods that left it go at once.
                            pod_stream = Some(pod_events(&pods, s));
                        }
                        if pod_mirror.synced() {
                            publisher.pods(s, &pod_mirror);
                        }
                    }
                }
                spec = next;
            }
            ev = next_pod_event(&mut pod_stream) => {
                let (Some(ev), Some(s)) = (ev, spec.as_ref()) else { continue };
                match ev {
                    Ok(ev) => {
                        if pod_mirror.apply(ev) {
                            publisher.pods(s, &pod_mirror);
                        }
                    }
                    Err(e) => tracing::warn!("discovery: watching pods: {e}"),
                }
            }
        }
    }
}

/// The next pod event, or never while there is no pod watch.
async fn next_pod_event(
    stream: &mut Option<PodEvents>,
) -> Option<Result<Event<Pod>, watcher::Error>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use proptest::prelude::*;

    fn spec(labels: &[(&str, &str)], ports: &[u16]) -> PoolSpec {
        PoolSpec {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            target_ports: ports.to_vec(),
        }
    }

    fn pod(name: &str, labels: &[(&str, &str)], ip: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("llm".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: ip.map(String::from),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        p
    }

    fn annotated(mut p: Pod, ports: &str) -> Pod {
        p.metadata.annotations = Some(
            [(ACTIVE_PORTS_ANNOTATION.to_string(), ports.to_string())]
                .into_iter()
                .collect(),
        );
        p
    }

    #[test]
    fn ready_matching_pods_with_an_ip_become_one_endpoint_per_port() {
        let s = spec(&[("app", "vllm")], &[8000, 8001]);
        let pods = [
            pod("a", &[("app", "vllm")], Some("10.0.0.1"), true),
            pod("b", &[("app", "vllm")], Some("10.0.0.2"), false),
            pod("c", &[("app", "other")], Some("10.0.0.3"), true),
            pod("d", &[("app", "vllm")], None, true),
            terminating(pod("e", &[("app", "vllm")], Some("10.0.0.5"), true)),
            annotated(
                pod("f", &[("app", "vllm")], Some("10.0.0.6"), true),
                "8001,9999",
            ),
            pod("g", &[("app", "vllm")], Some("fd00::7"), true),
        ];
        let d = endpoints_from(&s, &pods);
        let addrs: Vec<&str> = d.endpoints.iter().map(|e| e.addr.as_str()).collect();
        assert_eq!(
            addrs,
            vec![
                "10.0.0.1:8000",
                "10.0.0.1:8001",
                "10.0.0.6:8001",
                "[fd00::7]:8000",
                "[fd00::7]:8001"
            ]
        );
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn labels_give_attributes_and_bad_values_skip_the_pod() {
        let s = spec(&[("app", "vllm")], &[8000]);
        let pods = [
            pod(
                "p",
                &[
                    ("app", "vllm"),
                    (ROLE_LABEL, "prefill"),
                    (ACCELERATOR_LABEL, "h100"),
                    (TP_LABEL, "2"),
                ],
                Some("10.0.0.1"),
                true,
            ),
            pod(
                "q",
                &[("app", "vllm"), (ROLE_LABEL, "both")],
                Some("10.0.0.2"),
                true,
            ),
            pod(
                "r",
                &[("app", "vllm"), (TP_LABEL, "0")],
                Some("10.0.0.3"),
                true,
            ),
            annotated(pod("s", &[("app", "vllm")], Some("10.0.0.4"), true), "80a"),
            pod("t", &[("app", "vllm")], Some("10.0.0.1"), true),
        ];
        let d = endpoints_from(&s, &pods);
        assert_eq!(
            d.endpoints,
            vec![EndpointSpec {
                addr: "10.0.0.1:8000".into(),
                role: PodType::Prefill,
                accelerator: Some("h100".into()),
                tp: 2,
            }]
        );
        let why: Vec<(&str, &str)> = d
            .rejected
            .iter()
            .map(|r| (r.pod.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why[0].0 == "llm/q" && why[0].1.contains("both"), "{why:?}");
        assert!(
            why[1].0 == "llm/r" && why[1].1.contains(TP_LABEL),
            "{why:?}"
        );
        assert!(why[2].0 == "llm/s" && why[2].1.contains("80a"), "{why:?}");
        assert!(why[3].0 == "llm/t" && why[3].1.contains("llm/p"), "{why:?}");
    }

    #[test]
    fn selectors_and_ports_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_selector("app=vllm, goodput.dev/variant=h100").unwrap(),
            [("app", "vllm"), ("goodput.dev/variant", "h100")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        );
        for bad in ["", "app", "app!=x", "a=b=c", "a=b,a=c", "a b=c", "=x"] {
            let e = parse_selector(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(parse_target_ports("8000, 8001").unwrap(), vec![8000, 8001]);
        for bad in ["", "0", "x", "70000", "1,1", "1,2,3,4,5,6,7,8,9"] {
            assert!(parse_target_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inference_pool_specs_are_read_and_checked() {
        let ok = serde_json::json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "targetPorts": [{"number": 8000}, {"number": 8002}],
            "endpointPickerRef": {"name": "goodput-scheduler", "port": {"number": 9002}},
        });
        assert_eq!(
            pool_spec_from("p", Some(&ok)).unwrap(),
            spec(&[("app", "vllm")], &[8000, 8002])
        );
        for (bad, says) in [
            (
                serde_json::json!({"selector": {}, "targetPorts": [{"number": 1}]}),
                "matchLabels",
            ),
            (
                serde_json::json!({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": []}),
                "targetPorts",
            ),
            (
                serde_json::json!({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 0}]}),
                "0",
            ),
            (
                serde_json::json!({"selector": {"matchLabels": {"a": "b"}}}),
                "targetPorts",
            ),
        ] {
            let e = pool_spec_from("p", Some(&bad)).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        assert!(pool_spec_from("p", None).is_err());
    }

    #[test]
    fn a_relist_replaces_the_snapshot_only_when_complete() {
        let mut m: Mirror<Pod> = Mirror::default();
        let p = |n: &str| pod(n, &[], Some("10.0.0.1"), true);
        assert!(!m.apply(Event::Init));
        assert!(!m.apply(Event::InitApply(p("a"))));
        assert!(m.apply(Event::InitDone));
        assert!(m.apply(Event::Apply(p("b"))));
        assert_eq!(m.objects().count(), 2);
        // A relist that no longer has `a`: the old snapshot stands until it is done.
        assert!(!m.apply(Event::Init));
        assert!(!m.apply(Event::InitApply(p("b"))));
        assert_eq!(m.objects().count(), 2);
        assert!(m.apply(Event::InitDone));
        assert_eq!(m.objects().count(), 1);
        assert!(m.apply(Event::Delete(p("b"))));
        assert_eq!(m.objects().count(), 0);
    }

    #[derive(Debug, Clone)]
    struct PodCase {
        app: bool,
        ready: bool,
        ip: Option<u8>,
        deleting: bool,
        role: Option<u8>,
        ports: Option<Vec<u16>>,
    }

    fn pod_case() -> impl Strategy<Value = PodCase> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0u8..6),
            any::<bool>(),
            prop::option::of(0u8..5),
            prop::option::of(prop::collection::vec(
                prop::sample::select(vec![8000u16, 8001, 9000]),
                0..3,
            )),
        )
            .prop_map(|(app, ready, ip, deleting, role, ports)| PodCase {
                app,
                ready,
                ip,
                deleting,
                role,
                ports,
            })
    }

    proptest! {
        /// Against a plain model of GIE's rules: the endpoints are exactly (eligible pod,
        /// active target port) pairs, addresses are unique, and every skipped eligible pod is
        /// reported.
        #[test]
        fn endpoints_follow_the_pod_rules(cases in prop::collection::vec(pod_case(), 0..12)) {
            let s = spec(&[("app", "vllm")], &[8000, 8001]);
            let roles = ["prefill", "decode", "unified", "both", ""];
            let pods: Vec<Pod> = cases
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut labels = vec![("app", if c.app { "vllm" } else { "x" })];
                    if let Some(r) = c.role {
                        labels.push((ROLE_LABEL, roles[r as usize]));
                    }
                    let ip = c.ip.map(|n| format!("10.0.0.{n}"));
                    let mut p = pod(&format!("p{i}"), &labels, ip.as_deref(), c.ready);
                    if c.deleting {
                        p = terminating(p);
                    }
                    if let Some(ports) = &c.ports {
                        let text = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
                        p = annotated(p, &text);
                    }
                    p
                })
                .collect();
            let d = endpoints_from(&s, &pods);
            let mut expected = Vec::new();
            let mut rejected = 0;
            let mut taken = BTreeSet::new();
            for c in &cases {
                let Some(ip) = c.ip else { continue };
                if !(c.app && c.ready && !c.deleting) {
                    continue;
                }
                if matches!(c.role, Some(3 | 4)) {
                    rejected += 1;
                    continue;
                }
                for port in [8000u16, 8001] {
                    if c.ports.as_ref().is_some_and(|l| !l.contains(&port)) {
                        continue;
                    }
                    let addr = format!("10.0.0.{ip}:{port}");
                    if taken.insert(addr.clone()) {
                        expected.push(addr);
                    } else {
                        rejected += 1;
                    }
                }
            }
            let got: Vec<String> = d.endpoints.iter().map(|e| e.addr.clone()).collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(d.rejected.len(), rejected);
        }
    }
}
