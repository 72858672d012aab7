//! Timings of a retraining's parts on a window of 10,000 rows shaped like the predictor's
//! (both families on one target, and a whole retraining of both targets), with the linear
//! family's solver beside linfa-elasticnet's on the same standardised design, which it
//! replaced (same objective, step and stopping rule; `linear.rs` tests that they agree).
//!
//! `cargo bench -p goodput-predictor --bench fit`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use goodput_predictor::features::{FeatureVector, N_FEATURES};
use goodput_predictor::linear::{self, L1_RATIO, LINEAR_WIDTH, Linear, MAX_SWEEPS, TOLERANCE};
use goodput_predictor::{
    Features, FitParams, Predictor, PredictorConfig, RetrainReason, Sample, gbdt,
};
use linfa::prelude::*;
use linfa_elasticnet::ElasticNet;
use ndarray::{Array1, Array2};

const ROWS: u32 = 10_000;

fn samples() -> Vec<Sample> {
    (0..ROWS)
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
            let noise = 0.9 + 0.2 * ((i * 2_654_435_761) % 1000) as f64 / 1000.0;
            Sample {
                features: f,
                ttft_ms: Some(
                    (5.0 + 0.03 * eff + 0.01 * f.prefill_tokens_in_flight as f64) * noise,
                ),
                tpot_ms: Some(
                    (8.0 + 0.3 * f.num_request_running as f64 + 4.0 * f.kv_cache_percentage)
                        * noise,
                ),
            }
        })
        .collect()
}

/// linfa-elasticnet on the standardised design, as the linear family was fitted before.
fn fit_with_linfa(x: &[FeatureVector], y: &[f64], penalty: f64) -> Array1<f64> {
    let n = x.len() as f64;
    let rows: Vec<[f64; LINEAR_WIDTH]> = x.iter().map(linear::design).collect();
    let mut mean = [0.0; LINEAR_WIDTH];
    let mut sd = [0.0; LINEAR_WIDTH];
    for r in &rows {
        for j in 0..LINEAR_WIDTH {
            mean[j] += r[j] / n;
        }
    }
    for r in &rows {
        for j in 0..LINEAR_WIDTH {
            sd[j] += (r[j] - mean[j]).powi(2) / n;
        }
    }
    let mut data = Array2::<f64>::zeros((rows.len(), LINEAR_WIDTH));
    for (i, r) in rows.iter().enumerate() {
        for j in 0..LINEAR_WIDTH {
            let s = sd[j].sqrt();
            data[[i, j]] = if s > 1e-12 { (r[j] - mean[j]) / s } else { 0.0 };
        }
    }
    let ds = Dataset::new(data, Array1::from_iter(y.iter().copied()));
    match ElasticNet::params()
        .penalty(penalty)
        .l1_ratio(L1_RATIO)
        .max_iterations(MAX_SWEEPS)
        .tolerance(TOLERANCE)
        .fit(&ds)
    {
        Ok(m) => m.hyperplane().clone(),
        Err(_) => Array1::zeros(LINEAR_WIDTH),
    }
}

fn bench(c: &mut Criterion) {
    let samples = samples();
    let x: Vec<FeatureVector> = samples.iter().map(|s| s.features.vector()).collect();
    let y: Vec<f64> = samples
        .iter()
        .map(|s| s.ttft_ms.unwrap_or(1.0).ln())
        .collect();
    assert_eq!(x[0].len(), N_FEATURES);
    let penalty = FitParams::default().linear_penalty;
    let mut g = c.benchmark_group("fit_10k_rows");
    g.sample_size(10);
    g.bench_function("linear_gram_descent", |b| {
        b.iter(|| black_box(Linear::fit(black_box(&x), black_box(&y), penalty)))
    });
    g.bench_function("linear_linfa_elasticnet", |b| {
        b.iter(|| black_box(fit_with_linfa(black_box(&x), black_box(&y), penalty)))
    });
    g.bench_function("gbdt", |b| {
        b.iter(|| black_box(gbdt::fit(black_box(&x), black_box(&y), &Default::default())))
    });
    g.bench_function("retrain_both_targets", |b| {
        let p = Predictor::new(PredictorConfig::default());
        p.add_samples(&samples, 0.0);
        b.iter(|| black_box(p.retrain(RetrainReason::Manual, 0.0)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
