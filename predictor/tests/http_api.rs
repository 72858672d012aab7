//! The HTTP API against llm-d's payload shapes (predictor-api.md §2-3), field by field, and its
//! answers to malformed input: never a panic, always a 4xx naming the field.

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used)] // test code: a failed set-up should panic

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use goodput_predictor::server::{AppState, ServerConfig, router};
use goodput_predictor::{Predictor, PredictorConfig, RetrainReason};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

const STRICT_EXAMPLE: &str = r#"{"requests":[
 {"kv_cache_percentage":0.42,"input_token_length":1830,"num_request_waiting":0,"num_request_running":7,
  "num_tokens_generated":1,"prefix_cache_score":0.75,"prefill_tokens_in_flight":5120,
  "decode_tokens_in_flight":0,"encoder_input_size":0,"encoder_matched_size":0},
 {"kv_cache_percentage":0.88,"input_token_length":1830,"num_request_waiting":3,"num_request_running":31,
  "num_tokens_generated":1,"prefix_cache_score":0.0,"prefill_tokens_in_flight":40960,
  "decode_tokens_in_flight":0,"encoder_input_size":0,"encoder_matched_size":0,"pod_type":"prefill"}]}"#;

const TRAINING_EXAMPLE: &str = r#"{"entries":[
 {"kv_cache_percentage":0.42,"input_token_length":1830,"num_request_waiting":0,"num_request_running":7,
  "num_tokens_generated":0,"actual_ttft_ms":151,"actual_tpot_ms":0,"prefix_cache_score":0.75,
  "encoder_input_size":0,"encoder_matched_size":0,"prefill_tokens_in_flight":5120,
  "decode_tokens_in_flight":0,"timestamp":"2026-08-20T12:00:00.412345678Z"},
 {"kv_cache_percentage":0.47,"input_token_length":1830,"num_request_waiting":1,"num_request_running":7,
  "num_tokens_generated":0,"actual_ttft_ms":0,"actual_tpot_ms":23.4,"prefix_cache_score":0,
  "encoder_input_size":0,"encoder_matched_size":0,"prefill_tokens_in_flight":5120,
  "decode_tokens_in_flight":0,"timestamp":"2026-08-20T12:00:09.871002113Z"}]}"#;

fn app() -> (Arc<Predictor>, axum::Router) {
    let p = Arc::new(Predictor::new(PredictorConfig::default()));
    let st = Arc::new(AppState::new(
        Arc::clone(&p),
        ServerConfig {
            max_body_bytes: 1 << 20,
            ..Default::default()
        },
    ));
    (p, router(st))
}

async fn call(app: &axum::Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// Training rows with a known law, as the EPP would send them (TTFT and TPOT rows apart).
fn training_body(n: usize) -> String {
    let entries: Vec<Value> = (0..n)
        .flat_map(|i| {
            let input = 100 + (i * 7919) % 4000;
            let running = i % 32;
            let kv = (i % 20) as f64 / 20.0;
            let base = json!({
                "kv_cache_percentage": kv, "input_token_length": input,
                "num_request_waiting": i % 4, "num_request_running": running,
                "num_tokens_generated": 0, "prefix_cache_score": 0.0,
                "prefill_tokens_in_flight": 0, "decode_tokens_in_flight": 0,
                "timestamp": "2026-08-20T12:00:00.412345678Z",
            });
            let mut ttft = base.clone();
            ttft["actual_ttft_ms"] = json!(10.0 + 0.05 * input as f64);
            ttft["actual_tpot_ms"] = json!(0);
            let mut tpot = base;
            tpot["actual_ttft_ms"] = json!(0);
            tpot["actual_tpot_ms"] = json!(8.0 + 0.4 * running as f64);
            [ttft, tpot]
        })
        .collect();
    json!({ "entries": entries }).to_string()
}

#[tokio::test]
async fn not_ready_until_trained() {
    let (_, app) = app();
    let (s, v) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v, json!({"detail": "Models are not ready"}));
    let (s, v) = call(&app, "POST", "/predict/bulk/strict", STRICT_EXAMPLE).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v, json!({"detail": "Models not ready"}));
    // /predict/bulk answers 200 with every row failed, as llm-d does.
    let (s, v) = call(&app, "POST", "/predict/bulk", STRICT_EXAMPLE).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["failed_predictions"], 2);
    assert_eq!(v["predictions"], json!([null, null]));
    assert_eq!(v["errors"][1]["index"], 1);
    assert_eq!(v["errors"][1]["request"]["pod_type"], "prefill");
    let (s, v) = call(&app, "GET", "/healthz", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    let (_, v) = call(&app, "GET", "/status", "").await;
    assert_eq!(v["is_ready"], false);
}

#[tokio::test]
async fn reference_payloads_round_trip_field_by_field() {
    let (p, app) = app();
    let (s, v) = call(&app, "POST", "/add_training_data_bulk", TRAINING_EXAMPLE).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v, json!({"message": "Accepted 2 training samples."}));
    let (s, _) = call(
        &app,
        "POST",
        "/add_training_data_bulk",
        &training_body(1500),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(p.retrain(RetrainReason::Manual, 0.0).is_some());

    let (s, v) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"status":"ready","model_type":"xgboost","objective_type":"quantile","quantile":0.9})
    );

    let (s, v) = call(&app, "POST", "/predict/bulk/strict", STRICT_EXAMPLE).await;
    assert_eq!(s, StatusCode::OK);
    let obj = v.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "failed_predictions",
            "predictions",
            "processing_time_ms",
            "successful_predictions",
            "total_requests"
        ]
    );
    assert_eq!(v["total_requests"], 2);
    assert_eq!(v["successful_predictions"], 2);
    assert_eq!(v["failed_predictions"], 0);
    assert!(v["processing_time_ms"].as_f64().unwrap() >= 0.0);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    for pr in preds {
        let mut keys: Vec<_> = pr.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "last_model_load",
                "model_type",
                "objective_type",
                "predicted_at",
                "quantile",
                "tpot_ms",
                "ttft_ms"
            ]
        );
        assert!(pr["ttft_ms"].as_f64().unwrap() > 0.0);
        assert!(pr["tpot_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(pr["model_type"], "xgboost");
        assert_eq!(pr["objective_type"], "quantile");
        assert_eq!(pr["quantile"], 0.9);
        let at = pr["predicted_at"].as_str().unwrap();
        assert!(at.ends_with("+00:00") && at.len() == 32, "{at}");
        assert!(
            pr["last_model_load"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T")
        );
    }
    // Single /predict: prediction object plus uncertainty and bounds.
    let one = serde_json::to_string(
        &serde_json::from_str::<Value>(STRICT_EXAMPLE).unwrap()["requests"][0],
    )
    .unwrap();
    let (s, v) = call(&app, "POST", "/predict", &one).await;
    assert_eq!(s, StatusCode::OK);
    for k in [
        "ttft_ms",
        "tpot_ms",
        "ttft_uncertainty",
        "tpot_uncertainty",
        "quantile",
    ] {
        assert!(v[k].as_f64().is_some(), "{k}");
    }
    let b = v["ttft_prediction_bounds"].as_array().unwrap();
    assert!(b[0].as_f64().unwrap() <= b[1].as_f64().unwrap());

    let (s, v) = call(&app, "POST", "/predict/bulk", STRICT_EXAMPLE).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["successful_predictions"], 2);
    assert_eq!(v["errors"], json!([]));

    let (_, v) = call(&app, "GET", "/status", "").await;
    assert_eq!(v["is_ready"], true);
    assert_eq!(v["model_type"], "xgboost");
    assert_eq!(
        v["models_exist"],
        json!({"ttft_model": true, "tpot_model": true})
    );
    assert_eq!(v["ensemble_active"], false);
    let acc = &v["goodput"]["accuracy"]["ttft"];
    assert!(acc["mape_percent"].as_f64().unwrap() < 5.0, "{acc}");
    assert!(acc["coverage"]["0.9"].as_f64().is_some());
    assert!(acc["pinball_loss_ms"]["0.99"].as_f64().is_some());

    let (_, v) = call(&app, "GET", "/model/download/info", "").await;
    assert_eq!(v["model_type"], "xgboost");
    assert_eq!(
        v["available_endpoints"]["trees"]["ttft_trees"],
        "/model/ttft/xgb/json"
    );
    assert_eq!(
        v["model_status"],
        json!({"ttft_model_ready": true, "tpot_model_ready": true})
    );
    let (s, v) = call(&app, "GET", "/model/tpot/xgb/json", "").await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = call(&app, "GET", "/model/gated/xgb/json", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Labels after the fit calibrate the served predictions: /status reports it live.
    let (_, v) = call(&app, "GET", "/status", "").await;
    assert_eq!(v["goodput"]["live"]["ttft"]["labels"], 0);
    let (s, _) = call(&app, "POST", "/add_training_data_bulk", &training_body(200)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, v) = call(&app, "GET", "/status", "").await;
    let live = &v["goodput"]["live"];
    assert_eq!(live["ttft"]["labels"], 200, "{live}");
    assert_eq!(live["tpot"]["labels"], 200, "{live}");
    assert!(
        live["ttft"]["mape_percent"].as_f64().unwrap() < 10.0,
        "{live}"
    );
    assert!(live["tpot"]["quantile_factors"]["0.9"].as_f64().unwrap() > 0.0);

    let (s, v) = call(&app, "GET", "/metrics", "").await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(
        text.contains("live_mape_percent{target=\"ttft\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn more_than_100_rows_are_served() {
    let (p, app) = app();
    call(
        &app,
        "POST",
        "/add_training_data_bulk",
        &training_body(1000),
    )
    .await;
    p.retrain(RetrainReason::Manual, 0.0).unwrap();
    let row: Value = serde_json::from_str::<Value>(STRICT_EXAMPLE).unwrap()["requests"][0].clone();
    let body = json!({"requests": vec![row; 2500]}).to_string();
    let (s, v) = call(&app, "POST", "/predict/bulk/strict", &body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2500);
}

#[tokio::test]
async fn malformed_input_gets_a_422_naming_the_field() {
    let (_, app) = app();
    let mut v: Value = serde_json::from_str(STRICT_EXAMPLE).unwrap();
    v["requests"][1]
        .as_object_mut()
        .unwrap()
        .remove("kv_cache_percentage");
    let (s, body) = call(&app, "POST", "/predict/bulk/strict", &v.to_string()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "requests", 1, "kv_cache_percentage"])
    );
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("requests[1].kv_cache_percentage")
    );

    for (field, bad) in [
        ("kv_cache_percentage", json!(1.5)),
        ("prefix_cache_score", json!("high")),
        ("num_request_running", json!(-1)),
        ("input_token_length", json!(12.5)),
        ("pod_type", json!(3)),
        ("ms_since_last_token", json!(-2.5)),
        ("ms_since_last_token", json!("recently")),
        ("ms_since_oldest_prefill", json!(-1)),
        ("ms_since_oldest_prefill", json!([3])),
    ] {
        let mut v: Value = serde_json::from_str(STRICT_EXAMPLE).unwrap();
        v["requests"][0][field] = bad;
        let (s, body) = call(&app, "POST", "/predict/bulk/strict", &v.to_string()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert_eq!(body["detail"][0]["loc"][3], field);
    }
    let (s, body) = call(&app, "POST", "/predict/bulk/strict", r#"{"requests":[]}"#).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["body", "requests"]));
    let (s, _) = call(&app, "POST", "/predict/bulk/strict", "{not json").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let big = format!("{{\"requests\":[{}]}}", "1,".repeat(1 << 20));
    let (s, _) = call(&app, "POST", "/predict/bulk/strict", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    // Training: a bad row is reported, the good ones are kept (per-row ingestion).
    let mut v: Value = serde_json::from_str(TRAINING_EXAMPLE).unwrap();
    v["entries"][0]["timestamp"] = json!("yesterday");
    let (s, body) = call(&app, "POST", "/add_training_data_bulk", &v.to_string()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(body["message"], "Accepted 1 training samples.");
    assert_eq!(
        body["errors"][0]["loc"],
        json!(["body", "entries", 0, "timestamp"])
    );
    v["entries"][1]["actual_tpot_ms"] = json!(-3);
    let (s, body) = call(&app, "POST", "/add_training_data_bulk", &v.to_string()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"].as_array().unwrap().len(), 2);
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,24}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 14] = [
    "kv_cache_percentage",
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "num_tokens_generated",
    "prefix_cache_score",
    "pod_type",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "encoder_input_size",
    "encoder_matched_size",
    "actual_ttft_ms",
    "actual_tpot_ms",
    "timestamp",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any body (random JSON, or a reference payload with one field replaced by random JSON)
    /// gets an answer: 2xx, or a 4xx whose detail names a field; never a panic or a 5xx.
    #[test]
    fn parsers_never_panic_and_answer_4xx(
        junk in arb_json(),
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        field in 0usize..FIELDS.len(),
        row in 0usize..2,
        path in 0usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (_, app) = app();
        let (endpoint, example, key) = match path {
            0 => ("/predict/bulk/strict", STRICT_EXAMPLE, "requests"),
            1 => ("/predict/bulk", STRICT_EXAMPLE, "requests"),
            2 => ("/add_training_data_bulk", TRAINING_EXAMPLE, "entries"),
            _ => ("/predict", STRICT_EXAMPLE, ""),
        };
        let mut v: Value = serde_json::from_str(example).unwrap();
        if key.is_empty() {
            v = v["requests"][row].clone();
            v[FIELDS[field]] = junk.clone();
        } else {
            v[key][row][FIELDS[field]] = junk.clone();
        }
        for body in [v.to_string(), junk.to_string(), String::from_utf8_lossy(&bytes).into_owned()] {
            let (s, resp) = rt.block_on(call(&app, "POST", endpoint, &body));
            prop_assert!(
                s.is_success() || s == StatusCode::SERVICE_UNAVAILABLE || s.is_client_error(),
                "{endpoint} {body} -> {s}"
            );
            if s == StatusCode::UNPROCESSABLE_ENTITY {
                let loc = &resp["detail"][0]["loc"];
                prop_assert!(loc.as_array().is_some_and(|l| !l.is_empty()), "{resp}");
                prop_assert!(resp["detail"][0]["msg"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}
