//! The JSON bodies of llm-d's latency-predictor API: parsing with field-precise errors, and the
//! response shapes, field for field (names, types, units as in llm-d-latency-predictor v0.9.0).
//!
//! Parsing never panics and never trusts the input: a body is walked as a `serde_json::Value`
//! and every field is checked for presence, type and range, so that a 422 names the field
//! (`requests[3].kv_cache_percentage`) the way FastAPI's `detail[].loc` does. Unknown fields are
//! ignored, as pydantic does.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::features::{Features, FieldError, PodType, Sample};

use super::time::is_rfc3339;

/// FastAPI's validation error body: `{"detail":[{"loc":[...],"msg":...,"type":...}]}`.
#[derive(Debug, Serialize)]
pub struct ValidationBody {
    pub detail: Vec<ValidationItem>,
}

#[derive(Debug, Serialize)]
pub struct ValidationItem {
    pub loc: Vec<Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl ValidationBody {
    pub fn from_errors(errors: &[FieldError]) -> Self {
        Self {
            detail: errors
                .iter()
                .map(|e| ValidationItem {
                    loc: loc_of(&e.field),
                    msg: format!("{}: {}", e.field, e.message),
                    kind: "value_error",
                })
                .collect(),
        }
    }
}

/// `requests[3].kv_cache_percentage` → `["body","requests",3,"kv_cache_percentage"]`.
fn loc_of(path: &str) -> Vec<Value> {
    let mut loc = vec![Value::from("body")];
    for part in path.split('.').filter(|p| !p.is_empty()) {
        match part.split_once('[') {
            Some((name, idx)) => {
                if !name.is_empty() {
                    loc.push(Value::from(name));
                }
                match idx.trim_end_matches(']').parse::<u64>() {
                    Ok(i) => loc.push(Value::from(i)),
                    Err(_) => loc.push(Value::from(idx)),
                }
            }
            None => loc.push(Value::from(part)),
        }
    }
    loc
}

fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object()
        .ok_or_else(|| FieldError::new(path, "must be a JSON object"))
}

fn field_name(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn fraction(m: &Map<String, Value>, parent: &str, name: &str) -> Result<f64, FieldError> {
    let at = || field_name(parent, name);
    let v = m
        .get(name)
        .ok_or_else(|| FieldError::new(at(), "field required"))?;
    let x = v
        .as_f64()
        .ok_or_else(|| FieldError::new(at(), "must be a number"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(FieldError::new(at(), "must be between 0.0 and 1.0"));
    }
    Ok(x)
}

fn nonneg_ms(m: &Map<String, Value>, parent: &str, name: &str) -> Result<f64, FieldError> {
    let at = || field_name(parent, name);
    let v = m
        .get(name)
        .ok_or_else(|| FieldError::new(at(), "field required"))?;
    let x = v
        .as_f64()
        .ok_or_else(|| FieldError::new(at(), "must be a number"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(FieldError::new(at(), "must be >= 0"));
    }
    Ok(x)
}

/// An optional non-negative number of milliseconds (goodput's extension; absent or null is
/// None).
fn optional_nonneg_ms(
    m: &Map<String, Value>,
    parent: &str,
    name: &str,
) -> Result<Option<f64>, FieldError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => nonneg_ms(m, parent, name).map(Some),
    }
}

/// A non-negative integer; like pydantic's lax mode, a float with no fraction is accepted.
fn count(
    m: &Map<String, Value>,
    parent: &str,
    name: &str,
    required: bool,
    max: u64,
) -> Result<u64, FieldError> {
    let at = || field_name(parent, name);
    let v = match m.get(name) {
        None if required => return Err(FieldError::new(at(), "field required")),
        None => return Ok(0),
        Some(v) => v,
    };
    let n = if let Some(n) = v.as_u64() {
        n
    } else if v.as_i64().is_some() {
        return Err(FieldError::new(at(), "must be >= 0"));
    } else if let Some(f) = v.as_f64() {
        if f < 0.0 {
            return Err(FieldError::new(at(), "must be >= 0"));
        }
        if f.fract() != 0.0 || f > max as f64 {
            return Err(FieldError::new(at(), "must be a whole number"));
        }
        f as u64
    } else {
        return Err(FieldError::new(at(), "must be an integer"));
    };
    if n > max {
        return Err(FieldError::new(at(), format!("must be <= {max}")));
    }
    Ok(n)
}

/// One prediction row (`PredictionRequest`) at `parent` (e.g. `requests[3]`, or "" for /predict).
pub fn parse_features(v: &Value, parent: &str) -> Result<Features, FieldError> {
    let m = obj(v, if parent.is_empty() { "body" } else { parent })?;
    let u32max = u64::from(u32::MAX);
    let pod_type = match m.get("pod_type") {
        None | Some(Value::Null) => PodType::Monolithic,
        Some(Value::String(s)) => PodType::from_label(Some(s)),
        Some(_) => {
            return Err(FieldError::new(
                field_name(parent, "pod_type"),
                "must be a string or null",
            ));
        }
    };
    let f = Features {
        kv_cache_percentage: fraction(m, parent, "kv_cache_percentage")?,
        input_token_length: count(m, parent, "input_token_length", true, u32max)? as u32,
        num_request_waiting: count(m, parent, "num_request_waiting", true, u32max)? as u32,
        num_request_running: count(m, parent, "num_request_running", true, u32max)? as u32,
        num_tokens_generated: count(m, parent, "num_tokens_generated", true, u32max)? as u32,
        prefix_cache_score: fraction(m, parent, "prefix_cache_score")?,
        pod_type,
        prefill_tokens_in_flight: count(m, parent, "prefill_tokens_in_flight", false, u64::MAX)?,
        decode_tokens_in_flight: count(m, parent, "decode_tokens_in_flight", false, u64::MAX)?,
        ms_since_last_token: optional_nonneg_ms(m, parent, "ms_since_last_token")?,
        ms_since_oldest_prefill: optional_nonneg_ms(m, parent, "ms_since_oldest_prefill")?,
    };
    // Encoder (multimodal) sizes are accepted and checked, not used: the simulator has no
    // multimodal requests to learn their effect from.
    count(m, parent, "encoder_matched_size", false, u64::MAX)?;
    count(m, parent, "encoder_input_size", false, u64::MAX)?;
    Ok(f)
}

/// One training row (`TrainingEntry`).
pub fn parse_sample(v: &Value, parent: &str) -> Result<Sample, FieldError> {
    let features = parse_features(v, parent)?;
    let m = obj(v, parent)?;
    let ttft = nonneg_ms(m, parent, "actual_ttft_ms")?;
    let tpot = nonneg_ms(m, parent, "actual_tpot_ms")?;
    match m.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_rfc3339(s) => {}
        Some(_) => {
            return Err(FieldError::new(
                field_name(parent, "timestamp"),
                "must be an RFC 3339 date-time",
            ));
        }
    }
    Ok(Sample {
        features,
        ttft_ms: Some(ttft),
        tpot_ms: Some(tpot),
    })
}

/// The list under `key` of a bulk body, checked for type and length.
pub fn list<'a>(body: &'a Value, key: &str, max: usize) -> Result<&'a [Value], FieldError> {
    let m = obj(body, "body")?;
    let v = m
        .get(key)
        .ok_or_else(|| FieldError::new(key, "field required"))?;
    let a = v
        .as_array()
        .ok_or_else(|| FieldError::new(key, "must be a list"))?;
    if a.is_empty() {
        return Err(FieldError::new(key, "must have at least 1 item"));
    }
    if a.len() > max {
        return Err(FieldError::new(
            key,
            format!("must have at most {max} items"),
        ));
    }
    Ok(a)
}

/// The fast path of `{"requests":[row...]}`: a byte scanner straight into [`Features`]
/// ([`super::fast_json`]), no `Value` tree. `None` whenever anything is unusual (a type or
/// range error, a float or negative number in an integer field, a missing or duplicate key,
/// any escape in a string, a nested value under an unknown key, too few or too many rows,
/// trailing bytes): the caller then runs the generic walk ([`parse_bulk_features`]), which
/// names the offending field. Every body this accepts, the generic walk accepts with the
/// bit-identical result.
pub fn parse_bulk_features_fast(body: &[u8], max_rows: usize) -> Option<Vec<Features>> {
    super::fast_json::bulk_features(body, max_rows)
}

/// Parses `{"requests":[row...]}`, all rows or the errors of every bad row.
pub fn parse_bulk_features(
    body: &Value,
    max_rows: usize,
) -> Result<Vec<Features>, Vec<FieldError>> {
    let rows = list(body, "requests", max_rows).map_err(|e| vec![e])?;
    let mut out = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match parse_features(r, &format!("requests[{i}]")) {
            Ok(f) => out.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A prediction object (`PredictionResponse`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PredictionOut<'a> {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    pub predicted_at: &'a str,
    pub model_type: &'a str,
    pub objective_type: &'a str,
    pub quantile: f64,
    pub last_model_load: Option<&'a str>,
}

/// `/predict` adds the training server's uncertainty fields.
#[derive(Debug, Serialize)]
pub struct SinglePredictionOut<'a> {
    #[serde(flatten)]
    pub prediction: PredictionOut<'a>,
    pub ttft_uncertainty: f64,
    pub tpot_uncertainty: f64,
    pub ttft_prediction_bounds: [f64; 2],
    pub tpot_prediction_bounds: [f64; 2],
}

/// `/predict/bulk/strict`.
#[derive(Debug, Serialize)]
pub struct StrictBulkOut<'a> {
    pub predictions: Vec<PredictionOut<'a>>,
    pub total_requests: usize,
    pub successful_predictions: usize,
    pub failed_predictions: usize,
    pub processing_time_ms: f64,
}

/// The fields every row of one bulk response shares (all of [`PredictionOut`] after the two
/// latencies, in its order).
#[derive(Debug, Serialize)]
struct PredictionTail<'a> {
    predicted_at: &'a str,
    model_type: &'a str,
    objective_type: &'a str,
    quantile: f64,
    last_model_load: Option<&'a str>,
}

/// The bytes serde writes for [`StrictBulkOut`] with `shared`'s fields on every row and the
/// `(ttft_ms, tpot_ms)` of `rows`, written without building the rows: the shared fields are
/// serialised once, each row adds only its two numbers. `None` if serialisation fails.
pub fn strict_bulk_json(
    shared: &PredictionOut<'_>,
    rows: &[(f64, f64)],
    processing_time_ms: f64,
) -> Option<Vec<u8>> {
    let tail = serde_json::to_vec(&PredictionTail {
        predicted_at: shared.predicted_at,
        model_type: shared.model_type,
        objective_type: shared.objective_type,
        quantile: shared.quantile,
        last_model_load: shared.last_model_load,
    })
    .ok()?;
    // `tail` is `{...}`: each row continues after its latencies with `,` + tail without `{`.
    let tail = tail.get(1..)?;
    let mut out = Vec::with_capacity(rows.len() * (tail.len() + 48) + 128);
    out.extend_from_slice(b"{\"predictions\":[");
    for (i, &(ttft, tpot)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"ttft_ms\":");
        serde_json::to_writer(&mut out, &ttft).ok()?;
        out.extend_from_slice(b",\"tpot_ms\":");
        serde_json::to_writer(&mut out, &tpot).ok()?;
        out.push(b',');
        out.extend_from_slice(tail);
    }
    let n = rows.len();
    out.extend_from_slice(
        format!(
            "],\"total_requests\":{n},\"successful_predictions\":{n},\"failed_predictions\":0,\"processing_time_ms\":"
        )
        .as_bytes(),
    );
    serde_json::to_writer(&mut out, &processing_time_ms).ok()?;
    out.push(b'}');
    Some(out)
}

/// One failed row of `/predict/bulk`.
#[derive(Debug, Serialize)]
pub struct BulkError<'a> {
    pub index: usize,
    pub error: String,
    pub request: &'a Value,
}

/// `/predict/bulk`.
#[derive(Debug, Serialize)]
pub struct BulkOut<'a> {
    pub predictions: Vec<Option<PredictionOut<'a>>>,
    pub errors: Vec<BulkError<'a>>,
    pub total_requests: usize,
    pub successful_predictions: usize,
    pub failed_predictions: usize,
    pub processing_time_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loc_splits_paths_like_fastapi() {
        assert_eq!(
            loc_of("requests[3].kv_cache_percentage"),
            vec![
                json!("body"),
                json!("requests"),
                json!(3),
                json!("kv_cache_percentage")
            ]
        );
        assert_eq!(loc_of("entries"), vec![json!("body"), json!("entries")]);
    }

    #[test]
    fn the_fast_path_agrees_with_the_generic_walk_or_refuses() {
        let row = |kv: f64, pod: Value| {
            json!({"kv_cache_percentage":kv,"input_token_length":1830,"num_request_waiting":2,
                "num_request_running":7,"num_tokens_generated":1,"prefix_cache_score":0.75,
                "prefill_tokens_in_flight":5120,"decode_tokens_in_flight":3,
                "encoder_input_size":0,"pod_type":pod,"unknown":"ignored"})
        };
        let body = json!({"requests":[row(0.4, json!("")), row(1.0, json!("decode")),
            row(0.0, Value::Null)]});
        let bytes = body.to_string();
        let fast = parse_bulk_features_fast(bytes.as_bytes(), 10).unwrap();
        assert_eq!(fast, parse_bulk_features(&body, 10).unwrap());
        assert_eq!(fast[1].pod_type, PodType::Decode);
        // Refused (the generic walk then decides): out of range, a lax integer, too many rows,
        // no rows; and below an escaped label, which the generic walk reads the same.
        for (b, max) in [
            (json!({"requests":[row(1.5, json!(""))]}), 10),
            (
                json!({"requests":[{"kv_cache_percentage":0.5,"input_token_length":10.0,
                "num_request_waiting":0,"num_request_running":1,"num_tokens_generated":1,
                "prefix_cache_score":0}]}),
                10,
            ),
            (body.clone(), 2),
            (json!({"requests":[]}), 10),
        ] {
            assert!(parse_bulk_features_fast(b.to_string().as_bytes(), max).is_none());
        }
        let escaped = bytes.replacen(r#""decode""#, r#""dec\u006fde""#, 1);
        assert!(parse_bulk_features_fast(escaped.as_bytes(), 10).is_none());
        assert_eq!(
            parse_bulk_features(&serde_json::from_str::<Value>(&escaped).unwrap(), 10).unwrap(),
            fast
        );
    }

    #[test]
    fn the_hand_written_strict_bulk_body_is_byte_identical_to_serde() {
        for last in [None, Some("2026-01-01T00:00:00Z")] {
            let shared = PredictionOut {
                ttft_ms: 0.0,
                tpot_ms: 0.0,
                predicted_at: "2026-01-01T00:00:01.5Z",
                model_type: "xgboost",
                objective_type: "quantile",
                quantile: 0.9,
                last_model_load: last,
            };
            let rows = [(12.5, 3.25), (1e-7, 0.0), (123_456.789, 1.0 / 3.0)];
            let serde = serde_json::to_vec(&StrictBulkOut {
                predictions: rows
                    .iter()
                    .map(|&(t, p)| PredictionOut {
                        ttft_ms: t,
                        tpot_ms: p,
                        ..shared
                    })
                    .collect(),
                total_requests: 3,
                successful_predictions: 3,
                failed_predictions: 0,
                processing_time_ms: 0.123,
            })
            .unwrap();
            let ours = strict_bulk_json(&shared, &rows, 0.123).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn lax_integers_and_optional_fields() {
        let v = json!({"kv_cache_percentage":0.5,"input_token_length":10.0,"num_request_waiting":0,
            "num_request_running":1,"num_tokens_generated":1,"prefix_cache_score":0,"pod_type":null});
        let f = parse_features(&v, "").unwrap();
        assert_eq!(f.input_token_length, 10);
        assert_eq!(f.pod_type, PodType::Monolithic);
        let bad = json!({"kv_cache_percentage":0.5,"input_token_length":10.5,"num_request_waiting":0,
            "num_request_running":1,"num_tokens_generated":1,"prefix_cache_score":0});
        assert_eq!(
            parse_features(&bad, "").unwrap_err().field,
            "input_token_length"
        );
    }
}
