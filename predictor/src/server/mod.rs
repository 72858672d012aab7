//! The HTTP façade: the endpoints of llm-d's latency-predictor training and prediction servers
//! that its EPP and Go client use, served by one process over one in-memory [`Predictor`]
//! (point both `TRAINING_SERVER_URL` and `PREDICTION_SERVER_URL` at it).
//!
//! Data flow: a request body is read up to `max_body_bytes` (413 beyond), parsed and validated
//! in [`api`] (422 naming the field), handed to the predictor's current models (predictions) or
//! window (training rows), and answered in llm-d's JSON shapes. The trainer thread retrains in
//! the background; no handler ever waits for it.
//!
//! Compatibility choices: `model_type` is reported as `"xgboost"` so that llm-d's Go client keeps
//! asking over HTTP (with `"bayesian_ridge"` it would predict locally from `/metrics`
//! coefficients we do not publish); the model family really used per target is in `/status`
//! under `goodput`. `/model/{ttft,tpot}/xgb/json` answer an empty tree list, which the client
//! accepts and never uses.

pub mod api;
mod fast_json;
pub mod time;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::features::{FieldError, Target};
use crate::predictor::{ModelSet, Predictor};

use api::{BulkError, BulkOut, PredictionOut, SinglePredictionOut, ValidationBody};

/// What the predictions mean (`LATENCY_OBJECTIVE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// The point prediction (conditional median of the log-latency model).
    Mean,
    /// The conformally calibrated `quantile` of the latency.
    Quantile,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Mean => "mean",
            Objective::Quantile => "quantile",
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub objective: Objective,
    /// `LATENCY_QUANTILE_ALPHA`: the quantile served in quantile mode and reported always.
    pub quantile: f64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most rows in one bulk prediction (llm-d: 10 000; its Go client: 100).
    pub max_rows: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            objective: Objective::Quantile,
            quantile: 0.9,
            max_body_bytes: 32 << 20,
            max_rows: 100_000,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    endpoint: &'static str,
    class: &'static str,
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    pub predictor: Arc<Predictor>,
    pub config: ServerConfig,
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    rows_predicted: Counter,
}

/// llm-d's value, see the module docs.
const MODEL_TYPE: &str = "xgboost";

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl AppState {
    pub fn new(predictor: Arc<Predictor>, config: ServerConfig) -> Self {
        let mut registry = Registry::with_prefix("goodput_predictor");
        predictor.metrics().register(&mut registry);
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status class",
            requests.clone(),
        );
        let rows_predicted = Counter::default();
        registry.register(
            "rows_predicted",
            "Endpoints predicted over HTTP",
            rows_predicted.clone(),
        );
        Self {
            predictor,
            config,
            registry,
            requests,
            rows_predicted,
        }
    }

    fn count(&self, endpoint: &'static str, status: StatusCode) {
        let class = match status.as_u16() {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&HttpLabels { endpoint, class })
            .inc();
    }

    fn quantile_arg(&self) -> Option<f64> {
        match self.config.objective {
            Objective::Mean => None,
            Objective::Quantile => Some(self.config.quantile),
        }
    }
}

/// The router with every endpoint; body limit applied.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(root))
        .route("/predict", post(predict))
        .route("/predict/bulk", post(predict_bulk))
        .route("/predict/bulk/strict", post(predict_bulk_strict))
        .route("/add_training_data_bulk", post(add_training_data))
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/model/download/info", get(download_info))
        .route("/model/{name}/xgb/json", get(xgb_json))
        .route("/flush", post(flush))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until the future is dropped or fails.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn to_json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => json_response(status, b),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"detail":"serialisation failed"}"#.to_vec(),
        ),
    }
}

fn unprocessable(errors: &[FieldError]) -> Response {
    to_json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &ValidationBody::from_errors(errors),
    )
}

fn parse_body(bytes: &[u8]) -> Result<Value, Box<Response>> {
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        Box::new(unprocessable(&[FieldError::new(
            "body",
            format!("JSON decode error: {e}"),
        )]))
    })
}

fn not_ready(detail: &str) -> Response {
    to_json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "detail": detail }),
    )
}

struct Stamp {
    predicted_at: String,
    last_load: Option<String>,
}

fn stamp(models: &ModelSet) -> Stamp {
    Stamp {
        predicted_at: time::rfc3339(now_s()),
        last_load: (models.version > 0).then(|| time::rfc3339(models.trained_at_s)),
    }
}

fn out<'a>(st: &'a AppState, s: &'a Stamp, ttft: f64, tpot: f64) -> PredictionOut<'a> {
    PredictionOut {
        ttft_ms: ttft.max(0.0),
        tpot_ms: tpot.max(0.0),
        predicted_at: &s.predicted_at,
        model_type: MODEL_TYPE,
        objective_type: st.config.objective.as_str(),
        quantile: st.config.quantile,
        last_model_load: s.last_load.as_deref(),
    }
}

async fn root(State(st): State<Arc<AppState>>) -> Response {
    let ready = st.predictor.models().is_ready();
    st.count("root", StatusCode::OK);
    to_json(
        StatusCode::OK,
        &json!({
            "message": "goodput latency predictor (llm-d latency predictor API)",
            "model_type": MODEL_TYPE,
            "objective_type": st.config.objective.as_str(),
            "quantile": st.config.quantile,
            "is_ready": ready,
            "sync_interval": 0,
            "training_server": "in-process",
        }),
    )
}

async fn predict(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let r = predict_inner(&st, &body);
    st.count("predict", r.status());
    r
}

fn predict_inner(st: &AppState, body: &[u8]) -> Response {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let f = match api::parse_features(&v, "") {
        Ok(f) => f,
        Err(e) => return unprocessable(&[e]),
    };
    let models = st.predictor.models();
    if !models.is_ready() {
        return not_ready("Models not ready");
    }
    let (ttft, tpot) = models.predict_at(&f, st.quantile_arg());
    let x = models.vector(&f);
    let bounds = |t: Target| {
        models.target(t).map_or([0.0, 0.0], |m| {
            [
                m.quantile(&x, 0.025).max(0.0),
                m.quantile(&x, 0.975).max(0.0),
            ]
        })
    };
    let (tb, pb) = (bounds(Target::Ttft), bounds(Target::Tpot));
    let s = stamp(&models);
    st.rows_predicted.inc();
    to_json(
        StatusCode::OK,
        &SinglePredictionOut {
            prediction: out(st, &s, ttft, tpot),
            // Half the central 95 % interval over 1.96: the σ a Gaussian with that interval has.
            ttft_uncertainty: (tb[1] - tb[0]) / (2.0 * 1.96),
            tpot_uncertainty: (pb[1] - pb[0]) / (2.0 * 1.96),
            ttft_prediction_bounds: tb,
            tpot_prediction_bounds: pb,
        },
    )
}

async fn predict_bulk_strict(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let r = predict_bulk_strict_inner(&st, &body);
    st.count("predict_bulk_strict", r.status());
    r
}

/// `/predict/bulk/strict` without the HTTP layer (also what the benchmark times).
pub fn predict_bulk_strict_inner(st: &AppState, body: &[u8]) -> Response {
    let started = Instant::now();
    let rows = match api::parse_bulk_features_fast(body, st.config.max_rows) {
        Some(rows) => rows,
        None => {
            // Anything unusual: the generic walk decides, and names the field when it rejects.
            let v = match parse_body(body) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            match api::parse_bulk_features(&v, st.config.max_rows) {
                Ok(r) => r,
                Err(e) => return unprocessable(&e),
            }
        }
    };
    let models = st.predictor.models();
    if !models.is_ready() {
        return not_ready("Models not ready");
    }
    let s = stamp(&models);
    let q = st.quantile_arg();
    let values: Vec<(f64, f64)> = rows
        .iter()
        .map(|f| {
            let (t, p) = models.predict_at(f, q);
            (t.max(0.0), p.max(0.0))
        })
        .collect();
    st.rows_predicted.inc_by(rows.len() as u64);
    let shared = out(st, &s, 0.0, 0.0);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    match api::strict_bulk_json(&shared, &values, elapsed_ms) {
        Some(body) => json_response(StatusCode::OK, body),
        None => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"detail":"serialisation failed"}"#.to_vec(),
        ),
    }
}

async fn predict_bulk(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let r = predict_bulk_inner(&st, &body);
    st.count("predict_bulk", r.status());
    r
}

fn predict_bulk_inner(st: &AppState, body: &[u8]) -> Response {
    let started = Instant::now();
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let raw = match api::list(&v, "requests", st.config.max_rows) {
        Ok(r) => r,
        Err(e) => return unprocessable(&[e]),
    };
    let rows = match api::parse_bulk_features(&v, st.config.max_rows) {
        Ok(r) => r,
        Err(e) => return unprocessable(&e),
    };
    let models = st.predictor.models();
    let s = stamp(&models);
    let q = st.quantile_arg();
    let ready = models.is_ready();
    let mut predictions = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (i, f) in rows.iter().enumerate() {
        if ready {
            let (t, p) = models.predict_at(f, q);
            predictions.push(Some(out(st, &s, t, p)));
        } else {
            // llm-d answers 200 with every row failed when no model is loaded.
            predictions.push(None);
            errors.push(BulkError {
                index: i,
                error: "Models not ready".into(),
                request: &raw[i],
            });
        }
    }
    let ok = predictions.iter().filter(|p| p.is_some()).count();
    st.rows_predicted.inc_by(ok as u64);
    to_json(
        StatusCode::OK,
        &BulkOut {
            total_requests: predictions.len(),
            successful_predictions: ok,
            failed_predictions: predictions.len() - ok,
            predictions,
            errors,
            processing_time_ms: started.elapsed().as_secs_f64() * 1e3,
        },
    )
}

async fn add_training_data(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let r = add_training_inner(&st, &body);
    st.count("add_training_data_bulk", r.status());
    r
}

fn add_training_inner(st: &AppState, body: &[u8]) -> Response {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    // No length cap beyond the body limit: llm-d's Go client flushes up to 10 000 rows.
    let rows = match api::list(&v, "entries", usize::MAX) {
        Ok(r) => r,
        Err(e) => return unprocessable(&[e]),
    };
    let mut samples = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match api::parse_sample(r, &format!("entries[{i}]")) {
            Ok(s) => samples.push(s),
            Err(e) => errors.push(e),
        }
    }
    // Per-row ingestion: one bad row no longer drops the whole flush (llm-d weakness 11); a
    // body with no valid row at all is still a 422.
    if samples.is_empty() {
        return unprocessable(&errors);
    }
    st.predictor.add_samples(&samples, now_s());
    let mut body = json!({ "message": format!("Accepted {} training samples.", samples.len()) });
    if !errors.is_empty() {
        body["rejected"] = json!(errors.len());
        body["errors"] = json!(ValidationBody::from_errors(&errors).detail);
    }
    to_json(StatusCode::ACCEPTED, &body)
}

/// The online calibration per target: live accuracy of what is served, and its multipliers.
fn live_json(models: &ModelSet) -> Value {
    let mut out = serde_json::Map::new();
    for (t, l) in Target::ALL.iter().zip(models.live()) {
        out.insert(
            t.as_str().into(),
            json!({
                "labels": l.rows,
                "mape_percent": l.mape_percent,
                "coverage": {"0.5": l.coverage[0], "0.9": l.coverage[1], "0.99": l.coverage[2]},
                "bias": l.bias,
                "quantile_factors": {"0.5": l.quantile_factors[0], "0.9": l.quantile_factors[1], "0.99": l.quantile_factors[2]},
            }),
        );
    }
    Value::Object(out)
}

fn accuracy_json(models: &ModelSet) -> Value {
    let mut m = serde_json::Map::new();
    for t in Target::ALL {
        let v = models.target(t).map_or(Value::Null, |tm| {
            json!({
                "family": tm.regressor.family().as_str(),
                "candidates_mape_percent": tm.candidates.iter()
                    .map(|(f, x)| (f.as_str().to_string(), json!(x)))
                    .collect::<serde_json::Map<_, _>>(),
                "training_rows": tm.training_rows,
                "held_out_rows": tm.accuracy.rows,
                "mape_percent": tm.accuracy.mape_percent,
                "pinball_loss_ms": {"0.5": tm.accuracy.pinball_ms[0], "0.9": tm.accuracy.pinball_ms[1], "0.99": tm.accuracy.pinball_ms[2]},
                "coverage": {"0.5": tm.accuracy.coverage[0], "0.9": tm.accuracy.coverage[1], "0.99": tm.accuracy.coverage[2]},
            })
        });
        m.insert(t.as_str().into(), v);
    }
    Value::Object(m)
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    let models = st.predictor.models();
    let s = stamp(&models);
    let [(ttft_rows, ttft_held), (tpot_rows, tpot_held)] = st.predictor.window_rows();
    st.count("status", StatusCode::OK);
    to_json(
        StatusCode::OK,
        &json!({
            "is_ready": models.is_ready(),
            "model_type": MODEL_TYPE,
            "objective_type": st.config.objective.as_str(),
            "quantile": st.config.quantile,
            "last_model_load": s.last_load,
            "training_server_url": "in-process",
            "models_exist": {"ttft_model": models.ttft.is_some(), "tpot_model": models.tpot.is_some()},
            "ensemble_active": false,
            "goodput": {
                "model_version": models.version,
                "samples_received": st.predictor.samples_seen(),
                "window": {
                    "ttft": {"training_rows": ttft_rows, "held_out_rows": ttft_held},
                    "tpot": {"training_rows": tpot_rows, "held_out_rows": tpot_held},
                },
                "accuracy": accuracy_json(&models),
                "live": live_json(&models),
            },
        }),
    )
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    st.count("healthz", StatusCode::OK);
    to_json(
        StatusCode::OK,
        &json!({"status": "ok", "service": "http-based-latency-predictor"}),
    )
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let r = if st.predictor.models().is_ready() {
        to_json(
            StatusCode::OK,
            &json!({
                "status": "ready",
                "model_type": MODEL_TYPE,
                "objective_type": st.config.objective.as_str(),
                "quantile": st.config.quantile,
            }),
        )
    } else {
        not_ready("Models are not ready")
    };
    st.count("readyz", r.status());
    r
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &st.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    st.count("metrics", StatusCode::OK);
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn download_info(State(st): State<Arc<AppState>>) -> Response {
    let models = st.predictor.models();
    st.count("model_download_info", StatusCode::OK);
    to_json(
        StatusCode::OK,
        &json!({
            "model_type": MODEL_TYPE,
            "quantile": st.config.quantile,
            "available_endpoints": {
                "trees": {"ttft_trees": "/model/ttft/xgb/json", "tpot_trees": "/model/tpot/xgb/json"},
            },
            "model_status": {
                "ttft_model_ready": models.ttft.is_some(),
                "tpot_model_ready": models.tpot.is_some(),
            },
            "evaluation_info": accuracy_json(&models),
        }),
    )
}

async fn xgb_json(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let r = match name.as_str() {
        // llm-d's Go client fetches these and discards them; predictions stay on HTTP.
        "ttft" | "tpot" => to_json(StatusCode::OK, &json!([])),
        _ => to_json(
            StatusCode::NOT_FOUND,
            &json!({"detail": format!("unknown model {name}")}),
        ),
    };
    st.count("model_xgb_json", r.status());
    r
}

async fn flush(State(st): State<Arc<AppState>>) -> Response {
    let [(a, b), (c, d)] = st.predictor.window_rows();
    st.predictor.flush();
    st.count("flush", StatusCode::OK);
    to_json(
        StatusCode::OK,
        &json!({
            "success": true,
            "flushed_at": time::rfc3339(now_s()),
            "reason": null,
            "ttft_training_samples_flushed": a,
            "tpot_training_samples_flushed": c,
            "ttft_test_samples_flushed": b,
            "tpot_test_samples_flushed": d,
            "metrics_cleared": false,
            "message": "Training data flushed; models are kept until the next retraining.",
        }),
    )
}
