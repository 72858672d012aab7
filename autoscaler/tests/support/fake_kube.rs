//! A FAKE Kubernetes API server for tests: an in-process HTTP server that speaks the API's real
//! wire format for the handful of calls the controller makes. It is an imitation (no API server
//! can be installed on these machines), kept small and literal:
//!
//! - list (`{"kind":"...List","metadata":{"resourceVersion"},"items":[...]}`) and watch
//!   (`?watch=true`: a chunked stream of `{"type":"ADDED|MODIFIED|DELETED","object":{...}}`
//!   lines, replaying events after the requested `resourceVersion`) of any collection, cluster-
//!   or namespace-scoped, under `/api/v1` and `/apis/{group}/{version}`;
//! - `labelSelector` on list and watch, equality selectors only (`a=b,c==d`; anything else is a
//!   400): a list returns the matching objects; a watch sends what the real API server's watch
//!   cache sends, ADDED when an object starts matching, MODIFIED while it keeps matching,
//!   DELETED (with the last matching state) when it stops matching or is deleted. Other query
//!   parameters (`fieldSelector`, `allowWatchBookmarks`, ...) are ignored;
//! - get, create (POST, 409 AlreadyExists), replace (PUT, 409 Conflict on a stale
//!   `resourceVersion`) and JSON merge patch (PATCH, `application/merge-patch+json` only) of
//!   objects, with `metav1.Status` bodies and codes for errors (404 NotFound, 409, 415);
//! - the `status` subresource (merge patch touches `.status` only, no generation bump);
//! - the `scale` subresource of Deployments (`autoscaling/v1` `Scale` built from and written
//!   back to the Deployment's `spec.replicas` / `status.replicas`).
//!
//! Objects are `serde_json::Value`s of k8s-openapi or goodput types; every write bumps one
//! global `resourceVersion`, spec changes bump `metadata.generation`. Tests talk to it through
//! kube's real `Client` over HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// One recorded write to a `/scale` subresource.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleWrite {
    pub namespace: String,
    pub name: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    /// collection ("{apiPrefix}/{resource}") -> (namespace, name) -> object
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    rv: u64,
    /// (resourceVersion, collection, namespace, type, object)
    log: Vec<(u64, String, String, String, Value)>,
    scale_writes: Vec<ScaleWrite>,
    requests: Vec<String>,
}

type Shared = Arc<(
    Mutex<Inner>,
    broadcast::Sender<(u64, String, String, String, Value)>,
)>;

/// The fake server; dropping it leaves the task running until the test's runtime ends.
#[derive(Clone)]
pub struct FakeKube {
    shared: Shared,
    pub addr: SocketAddr,
}

/// The parts of an API path.
#[derive(Debug)]
struct ApiPath {
    /// "/api/v1" or "/apis/{group}/{version}"
    prefix: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<ApiPath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *segs.first()? {
        "api" => (format!("/api/{}", segs.get(1)?), &segs[2..]),
        "apis" => (
            format!("/apis/{}/{}", segs.get(1)?, segs.get(2)?),
            &segs[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(ApiPath {
        prefix,
        namespace,
        resource: rest.first()?.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(v: &Value, code: StatusCode) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn kind_of_list(resource: &str, items: &[Value]) -> String {
    items
        .first()
        .and_then(|o| o["kind"].as_str())
        .map(|k| format!("{k}List"))
        .unwrap_or_else(|| format!("{resource}List"))
}

impl FakeKube {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let (tx, _) = broadcast::channel(1024);
        let shared: Shared = Arc::new((Mutex::new(Inner::default()), tx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// kube's real client, over HTTP to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or updates an object (as `kubectl apply` would): `collection` is
    /// "{apiPrefix}/{resource}", e.g. "/apis/apps/v1/deployments".
    pub fn apply(&self, collection: &str, mut obj: Value) {
        let (lock, tx) = &*self.shared;
        let mut s = lock.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let coll = s.objects.entry(collection.to_string()).or_default();
        let old = coll.get(&(ns.clone(), name.clone())).cloned();
        let generation = match &old {
            Some(o) if o["spec"] == obj["spec"] => {
                o["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        if let Some(o) = &old
            && obj.get("status").is_none()
            && let Some(st) = o.get("status")
        {
            obj["status"] = st.clone();
        }
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        obj["metadata"]["generation"] = generation.into();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = format!("uid-{name}-{rv}").into();
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = "2026-11-26T00:00:00Z".into();
        }
        coll.insert((ns.clone(), name), obj.clone());
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        s.log
            .push((rv, collection.into(), ns.clone(), ty.into(), obj.clone()));
        let _ = tx.send((rv, collection.into(), ns, ty.into(), obj));
    }

    /// The stored object, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.shared.0.lock().unwrap();
        s.objects
            .get(collection)
            .and_then(|c| c.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Every object of a collection.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let s = self.shared.0.lock().unwrap();
        s.objects
            .get(collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes to `/scale` so far.
    pub fn scale_writes(&self) -> Vec<ScaleWrite> {
        self.shared.0.lock().unwrap().scale_writes.clone()
    }

    /// "METHOD path" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().requests.clone()
    }
}

async fn handle(State(shared): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    shared
        .0
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {}", uri.path()));
    let Some(p) = parse_path(uri.path()) else {
        return status(404, "NotFound", format!("no route {}", uri.path()));
    };
    let collection = format!("{}/{}", p.prefix, p.resource);
    match (method, &p.name, p.subresource.as_deref()) {
        (Method::GET, None, None) => {
            let selector = match query.get("labelSelector").map(|s| parse_label_selector(s)) {
                None => None,
                Some(Ok(sel)) => Some(sel),
                Some(Err(message)) => return status(400, "BadRequest", message),
            };
            let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            if watch {
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                match selector {
                    None => watch_stream(&shared, collection, p.namespace, since),
                    Some(sel) => watch_selected(&shared, collection, p.namespace, since, sel),
                }
            } else {
                list(
                    &shared,
                    &collection,
                    p.namespace.as_deref(),
                    &p.resource,
                    selector.as_deref(),
                )
            }
        }
        (Method::GET, Some(name), None) => {
            match get_obj(&shared, &collection, p.namespace.as_deref(), name) {
                Some(o) => ok_json(&o, StatusCode::OK),
                None => status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", p.resource),
                ),
            }
        }
        (Method::POST, None, None) => create(&shared, &collection, p.namespace.as_deref(), &body),
        (Method::PUT, Some(name), None) => {
            replace(&shared, &collection, p.namespace.as_deref(), name, &body)
        }
        (Method::PATCH, Some(name), sub) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !ct.starts_with("application/merge-patch+json") {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("the fake server takes merge patches only, got `{ct}`"),
                );
            }
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "patch body is not JSON".into());
            };
            patch_obj(
                &shared,
                &collection,
                p.namespace.as_deref(),
                name,
                sub,
                &patch,
                ct,
            )
        }
        (Method::GET, Some(name), Some("scale")) => {
            match get_obj(&shared, &collection, p.namespace.as_deref(), name) {
                Some(o) => ok_json(&scale_of(&o), StatusCode::OK),
                None => status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", p.resource),
                ),
            }
        }
        (m, _, _) => status(
            405,
            "MethodNotAllowed",
            format!("the fake server does not implement {m} {}", uri.path()),
        ),
    }
}

fn get_obj(shared: &Shared, collection: &str, ns: Option<&str>, name: &str) -> Option<Value> {
    let s = shared.0.lock().unwrap();
    s.objects
        .get(collection)?
        .get(&(ns.unwrap_or("").to_string(), name.to_string()))
        .cloned()
}

/// An equality label selector: every (key, value) must be a label of the object.
type LabelSelector = Vec<(String, String)>;

/// `%XX` escapes and `+` of a query value.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(x) => {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c==d`; set-based and inequality selectors are not supported by the fake.
fn parse_label_selector(text: &str) -> Result<LabelSelector, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(k, v)| !k.is_empty() && !k.ends_with('!') && !v.contains('='))
            .ok_or_else(|| {
                format!("the fake server supports equality label selectors only, got `{part}`")
            })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

fn selects(sel: &[(String, String)], obj: &Value) -> bool {
    sel.iter()
        .all(|(k, v)| obj["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()))
}

fn list(
    shared: &Shared,
    collection: &str,
    ns: Option<&str>,
    resource: &str,
    selector: Option<&[(String, String)]>,
) -> Response {
    let s = shared.0.lock().unwrap();
    let items: Vec<Value> = s
        .objects
        .get(collection)
        .map(|c| {
            c.iter()
                .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
                .filter(|(_, o)| selector.is_none_or(|sel| selects(sel, o)))
                .map(|(_, o)| o.clone())
                .collect()
        })
        .unwrap_or_default();
    let body = json!({
        "apiVersion": "v1",
        "kind": kind_of_list(resource, &items),
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    });
    ok_json(&body, StatusCode::OK)
}

fn watch_stream(shared: &Shared, collection: String, ns: Option<String>, since: u64) -> Response {
    let (tx_out, rx_out) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let (replay, mut live) = {
        let s = shared.0.lock().unwrap();
        // Subscribe under the lock, so nothing falls between the replay and the live feed.
        let live = shared.1.subscribe();
        let replay: Vec<_> = s.log.iter().filter(|e| e.0 > since).cloned().collect();
        (replay, live)
    };
    let wanted = move |c: &str, n: &str| c == collection && ns.as_deref().is_none_or(|ns| ns == n);
    tokio::spawn(async move {
        let line = |ty: &str, obj: &Value| {
            Bytes::from(format!("{}\n", json!({"type": ty, "object": obj})))
        };
        for (_, c, n, ty, obj) in replay {
            if wanted(&c, &n) && tx_out.send(Ok(line(&ty, &obj))).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok((_, c, n, ty, obj)) => {
                    if wanted(&c, &n) && tx_out.send(Ok(line(&ty, &obj))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx_out);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A watch with a label selector: like [`watch_stream`], but each event is translated by
/// whether the object matched before and matches now, as the API server's watch cache does.
fn watch_selected(
    shared: &Shared,
    collection: String,
    ns: Option<String>,
    since: u64,
    selector: LabelSelector,
) -> Response {
    let (tx_out, rx_out) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let wanted = move |c: &str, n: &str| c == collection && ns.as_deref().is_none_or(|ns| ns == n);
    let (before, replay, mut live) = {
        let s = shared.0.lock().unwrap();
        let live = shared.1.subscribe();
        // What the watcher already knows: the matching objects as of `since`.
        let mut before: BTreeMap<(String, String), Value> = BTreeMap::new();
        for (rv, c, n, ty, obj) in &s.log {
            if *rv > since || !wanted(c, n) {
                continue;
            }
            let key = (
                n.clone(),
                obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            if ty != "DELETED" && selects(&selector, obj) {
                before.insert(key, obj.clone());
            } else {
                before.remove(&key);
            }
        }
        let replay: Vec<_> = s.log.iter().filter(|e| e.0 > since).cloned().collect();
        (before, replay, live)
    };
    tokio::spawn(async move {
        let mut known = before;
        let mut translate = |n: &str, ty: &str, obj: &Value| -> Option<Bytes> {
            let key = (
                n.to_string(),
                obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            let now = ty != "DELETED" && selects(&selector, obj);
            let (ty, obj) = match (known.contains_key(&key), now) {
                (false, true) => ("ADDED", obj.clone()),
                (true, true) => ("MODIFIED", obj.clone()),
                (true, false) => ("DELETED", known.get(&key).cloned().unwrap_or_default()),
                (false, false) => return None,
            };
            if now {
                known.insert(key, obj.clone());
            } else {
                known.remove(&key);
            }
            Some(Bytes::from(format!(
                "{}\n",
                json!({"type": ty, "object": obj})
            )))
        };
        for (_, c, n, ty, obj) in replay {
            if !wanted(&c, &n) {
                continue;
            }
            if let Some(line) = translate(&n, &ty, &obj)
                && tx_out.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok((_, c, n, ty, obj)) => {
                    if !wanted(&c, &n) {
                        continue;
                    }
                    if let Some(line) = translate(&n, &ty, &obj)
                        && tx_out.send(Ok(line)).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx_out);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn bump(
    s: &mut Inner,
    tx: &broadcast::Sender<(u64, String, String, String, Value)>,
    collection: &str,
    ns: &str,
    ty: &str,
    obj: &mut Value,
) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = s.rv.to_string().into();
    s.log
        .push((s.rv, collection.into(), ns.into(), ty.into(), obj.clone()));
    let _ = tx.send((s.rv, collection.into(), ns.into(), ty.into(), obj.clone()));
}

fn create(shared: &Shared, collection: &str, ns: Option<&str>, body: &Bytes) -> Response {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let (lock, tx) = &**shared;
    let mut s = lock.lock().unwrap();
    let ns = ns.unwrap_or("").to_string();
    let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
        return status(422, "Invalid", "metadata.name is required".into());
    };
    if s.objects
        .get(collection)
        .is_some_and(|c| c.contains_key(&(ns.clone(), name.clone())))
    {
        return status(409, "AlreadyExists", format!("\"{name}\" already exists"));
    }
    if !ns.is_empty() {
        obj["metadata"]["namespace"] = ns.clone().into();
    }
    obj["metadata"]["generation"] = 1.into();
    obj["metadata"]["uid"] = format!("uid-{name}").into();
    bump(&mut s, tx, collection, &ns, "ADDED", &mut obj);
    s.objects
        .entry(collection.into())
        .or_default()
        .insert((ns, name), obj.clone());
    ok_json(&obj, StatusCode::CREATED)
}

fn replace(
    shared: &Shared,
    collection: &str,
    ns: Option<&str>,
    name: &str,
    body: &Bytes,
) -> Response {
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let (lock, tx) = &**shared;
    let mut s = lock.lock().unwrap();
    let key = (ns.unwrap_or("").to_string(), name.to_string());
    let Some(old) = s.objects.get(collection).and_then(|c| c.get(&key)).cloned() else {
        return status(404, "NotFound", format!("\"{name}\" not found"));
    };
    if obj["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on \"{name}\": the object has been modified"),
        );
    }
    obj["metadata"]["generation"] = old["metadata"]["generation"].clone();
    bump(&mut s, tx, collection, &key.0, "MODIFIED", &mut obj);
    s.objects
        .entry(collection.into())
        .or_default()
        .insert(key, obj.clone());
    ok_json(&obj, StatusCode::OK)
}

fn scale_of(o: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"],
            "resourceVersion": o["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": ""},
    })
}

fn patch_obj(
    shared: &Shared,
    collection: &str,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    patch: &Value,
    content_type: String,
) -> Response {
    let (lock, tx) = &**shared;
    let mut s = lock.lock().unwrap();
    let key = (ns.unwrap_or("").to_string(), name.to_string());
    let Some(mut obj) = s.objects.get(collection).and_then(|c| c.get(&key)).cloned() else {
        return status(404, "NotFound", format!("\"{name}\" not found"));
    };
    let reply = match sub {
        None => {
            let spec_before = obj["spec"].clone();
            merge_patch(&mut obj, patch);
            if obj["spec"] != spec_before {
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                obj["metadata"]["generation"] = g.into();
            }
            None
        }
        Some("status") => {
            if let Some(st) = patch.get("status") {
                merge_patch(&mut obj["status"], st);
            }
            None
        }
        Some("scale") => {
            s.scale_writes.push(ScaleWrite {
                namespace: key.0.clone(),
                name: name.into(),
                content_type,
                body: patch.clone(),
            });
            let mut scale = scale_of(&obj);
            merge_patch(&mut scale, patch);
            obj["spec"]["replicas"] = scale["spec"]["replicas"].clone();
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            obj["metadata"]["generation"] = g.into();
            Some(())
        }
        Some(other) => {
            return status(
                404,
                "NotFound",
                format!("no subresource `{other}` in the fake server"),
            );
        }
    };
    bump(&mut s, tx, collection, &key.0, "MODIFIED", &mut obj);
    s.objects
        .entry(collection.into())
        .or_default()
        .insert(key, obj.clone());
    match reply {
        Some(()) => ok_json(&scale_of(&obj), StatusCode::OK),
        None => ok_json(&obj, StatusCode::OK),
    }
}

/// Request headers are unused beyond Content-Type; kept for debugging.
#[allow(dead_code)]
fn header_list(h: &HeaderMap) -> Vec<String> {
    h.keys().map(|k| k.to_string()).collect()
}
