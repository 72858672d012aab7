//! Timings of the predictor: one in-process prediction (both targets, all quantiles), 1000 of
//! them (the model's share of a bulk call), and one `/predict/bulk/strict` call with 1000
//! endpoints handled server-side (JSON parse, validation, prediction, JSON response; no socket),
//! and the parse of that call's body alone (the fast path, and the generic `Value` walk it falls
//! back to).
//!
//! `cargo bench -p goodput-predictor --features server --bench predict`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use goodput_predictor::server::api::{parse_bulk_features, parse_bulk_features_fast};
use goodput_predictor::server::{AppState, ServerConfig, predict_bulk_strict_inner};
use goodput_predictor::{
    Features, Predictor, PredictorConfig, RetrainReason, Sample, VariantPhysics,
};
use serde_json::json;

fn trained() -> Arc<Predictor> {
    // One predictor per variant, with its physics priors (as the accuracy test trains it).
    let catalog = goodput_core::Catalog::builtin();
    let physics = match (catalog.model("llama-3.1-8b"), catalog.accelerator("h100")) {
        (Ok(m), Ok(a)) => Some(VariantPhysics::new(m, a, 1)),
        _ => None,
    };
    let p = Arc::new(Predictor::new(PredictorConfig {
        physics,
        ..Default::default()
    }));
    let samples: Vec<Sample> = (0..20_000u32)
        .map(|i| {
            let f = Features {
                kv_cache_percentage: (i % 100) as f64 / 100.0,
                input_token_length: 50 + (i * 7919) % 8000,
                num_request_waiting: i % 7,
                num_request_running: i % 64,
                prefix_cache_score: (i % 4) as f64 / 4.0,
                prefill_tokens_in_flight: u64::from(i * 31 % 20_000),
                ..Default::default()
            };
            let eff = (1.0 - f.prefix_cache_score) * f.input_token_length as f64;
            Sample {
                features: f,
                ttft_ms: Some(5.0 + 0.03 * eff + 0.01 * f.prefill_tokens_in_flight as f64),
                tpot_ms: Some(
                    8.0 + 0.3 * f.num_request_running as f64 + 4.0 * f.kv_cache_percentage,
                ),
            }
        })
        .collect();
    p.add_samples(&samples, 0.0);
    let _ = p.retrain(RetrainReason::Manual, 0.0);
    p
}

fn bench(c: &mut Criterion) {
    let p = trained();
    let f = Features {
        kv_cache_percentage: 0.42,
        input_token_length: 1830,
        num_request_running: 7,
        prefix_cache_score: 0.75,
        prefill_tokens_in_flight: 5120,
        ..Default::default()
    };
    c.bench_function("predict_one_in_process", |b| {
        b.iter(|| p.predict(black_box(&f)))
    });
    let models = p.models();
    c.bench_function("predict_one_in_process_held_models", |b| {
        b.iter(|| models.predict(black_box(&f)))
    });
    // The prediction part of a 1000-endpoint bulk call alone (no JSON).
    let many: Vec<Features> = (0..1000u32)
        .map(|i| Features {
            kv_cache_percentage: f64::from(i % 100) / 100.0,
            input_token_length: 1830,
            num_request_waiting: i % 5,
            num_request_running: i % 48,
            prefix_cache_score: 0.5,
            prefill_tokens_in_flight: u64::from(5120 + i),
            ..Default::default()
        })
        .collect();
    c.bench_function("predict_1000_in_process", |b| {
        b.iter(|| {
            black_box(&many)
                .iter()
                .map(|f| models.predict_at(f, None))
                .collect::<Vec<_>>()
        })
    });
    let st = AppState::new(Arc::clone(&p), ServerConfig::default());
    let rows: Vec<_> = (0..1000)
        .map(|i| {
            json!({"kv_cache_percentage": (i % 100) as f64 / 100.0, "input_token_length": 1830,
                   "num_request_waiting": i % 5, "num_request_running": i % 48,
                   "num_tokens_generated": 1, "prefix_cache_score": 0.5,
                   "prefill_tokens_in_flight": 5120 + i, "decode_tokens_in_flight": 0,
                   "encoder_input_size": 0, "encoder_matched_size": 0, "pod_type": ""})
        })
        .collect();
    let body = json!({ "requests": rows }).to_string();
    // The parse alone: the fast path the call takes, and the generic walk it falls back to.
    c.bench_function("parse_bulk_1000", |b| {
        b.iter(|| parse_bulk_features_fast(black_box(body.as_bytes()), 100_000))
    });
    c.bench_function("parse_bulk_1000_generic_walk", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes()))
                .ok()
                .map(|v| parse_bulk_features(&v, 100_000))
        })
    });
    c.bench_function("predict_bulk_strict_1000_server_side", |b| {
        b.iter(|| predict_bulk_strict_inner(&st, black_box(body.as_bytes())))
    });
    // Criterion reports means; the target is a p99, so sample 2000 calls and print percentiles.
    let mut times: Vec<f64> = (0..2000)
        .map(|_| {
            let t = std::time::Instant::now();
            black_box(predict_bulk_strict_inner(&st, black_box(body.as_bytes())));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * times.len() as f64) as usize).min(times.len() - 1)];
    println!(
        "predict_bulk_strict_1000_server_side percentiles over 2000 calls: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        times[times.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
