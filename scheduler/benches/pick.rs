//! A pick among 1000 endpoints (target: ≤ 50 µs p99), with the in-process predictor fitted on
//! physics-shaped samples so that predictions cost what they cost in production.
//!
//! `cargo bench -p goodput-scheduler --bench pick` prints criterion's mean and, from a separate
//! timed loop of individual picks, p50/p90/p99/max of each pick's wall time and of the CPU time
//! the bench thread spent in it (`CLOCK_THREAD_CPUTIME_ID`). On a shared virtual machine the
//! wall-time tail also holds the time the thread was not running (preempted, or its vCPU
//! stolen); the CPU-time tail is what the pick itself costs.

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use goodput_core::catalog::Catalog;
use goodput_predictor::{
    Features, PodType, Predictor, PredictorConfig, RetrainReason, Sample, VariantPhysics,
};
use goodput_scheduler::prefix::{PrefixIndex, text_block_hashes};
use goodput_scheduler::{
    EndpointView, GoodputPicker, NoPredictions, PickRequest, Picker, VariantPredictors,
};

const ENDPOINTS: usize = 1000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fitted_predictor(physics: VariantPhysics, rng: &mut Rng) -> Arc<Predictor> {
    let p = Arc::new(Predictor::new(PredictorConfig {
        physics: Some(physics),
        ..Default::default()
    }));
    let samples: Vec<Sample> = (0..3000)
        .map(|_| {
            let f = Features {
                kv_cache_percentage: rng.below(100) as f64 / 100.0,
                input_token_length: 16 + rng.below(4000) as u32,
                num_request_waiting: rng.below(8) as u32,
                num_request_running: rng.below(64) as u32,
                prefix_cache_score: rng.below(100) as f64 / 100.0,
                prefill_tokens_in_flight: rng.below(20_000),
                pod_type: PodType::Monolithic,
                ..Default::default()
            };
            let prior = physics.prior(&f);
            let noise = 0.8 + rng.below(40) as f64 / 100.0;
            Sample {
                features: f,
                ttft_ms: Some(prior.ttft_ms * noise),
                tpot_ms: Some(prior.tpot_ms * noise),
            }
        })
        .collect();
    p.add_samples(&samples, 0.0);
    p.retrain(RetrainReason::Manual, 1.0);
    p
}

struct Setup {
    endpoints: Vec<EndpointView>,
    prefix: PrefixIndex,
    latency: VariantPredictors,
    prompts: Vec<Vec<u64>>,
}

fn setup() -> Setup {
    let c = Catalog::builtin();
    let model = c.model("llama-3.1-8b").expect("model");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let predictors = ["h100", "a100", "l40s"]
        .iter()
        .map(|a| {
            let ph = VariantPhysics::new(model, c.accelerator(a).expect("accelerator"), 1);
            Some(fitted_predictor(ph, &mut rng))
        })
        .collect();
    let latency = VariantPredictors::new(predictors);
    let endpoints: Vec<EndpointView> = (0..ENDPOINTS)
        .map(|i| EndpointView {
            slot: i,
            variant: i % 3,
            running: rng.below(64) as u32,
            waiting: rng.below(6) as u32,
            kv_usage: rng.below(95) as f64 / 100.0,
            in_flight: rng.below(64) as u32,
            prefill_tokens_in_flight: rng.below(8000),
            ..Default::default()
        })
        .collect();
    // 200 shared system prompts of 2-3k characters plus a user turn, spread over the pool.
    let mut prefix = PrefixIndex::default();
    let mut prompts = Vec::new();
    let mut h = Vec::new();
    for g in 0..200 {
        let text = format!("{:0>2048}{}", g, "q".repeat(64 * (rng.below(16) as usize)));
        text_block_hashes("llama", &text, &mut h);
        for _ in 0..5 {
            prefix.record(rng.below(ENDPOINTS as u64) as usize, &h);
        }
        prompts.push(h.clone());
    }
    Setup {
        endpoints,
        prefix,
        latency,
        prompts,
    }
}

fn request(hashes: &[u64]) -> PickRequest<'_> {
    PickRequest {
        prompt_tokens: (hashes.len() * 16 + 40) as u32,
        output_tokens: 200,
        slo_ttft_ms: Some(500.0),
        slo_tpot_ms: Some(50.0),
        sheddable: false,
        hashes,
        block_tokens: 16,
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut picker = GoodputPicker::default();
    let mut i = 0usize;
    c.bench_function("goodput pick among 1000 endpoints", |b| {
        b.iter(|| {
            i = (i + 1) % s.prompts.len();
            black_box(picker.pick(
                &request(&s.prompts[i]),
                black_box(&s.endpoints),
                &s.prefix,
                &s.latency,
            ))
        })
    });
}

/// Individual picks timed one by one, for the tail.
fn percentiles() {
    let s = setup();
    let ready = s.latency.get(0).is_some_and(|p| p.models().is_ready());
    let mut picker = GoodputPicker::default();
    tail(&format!("goodput, models fitted: {ready}"), |k| {
        let hashes = &s.prompts[k % s.prompts.len()];
        black_box(picker.pick(&request(hashes), &s.endpoints, &s.prefix, &s.latency));
    });
    let mut baseline = goodput_scheduler::PrefixLoad::default();
    tail("llm-d prefix+load baseline", |k| {
        let hashes = &s.prompts[k % s.prompts.len()];
        black_box(baseline.pick(&request(hashes), &s.endpoints, &s.prefix, &NoPredictions));
    });
    let empty = PrefixIndex::default();
    tail("llm-d prefix+load baseline, empty prefix index", |k| {
        let hashes = &s.prompts[k % s.prompts.len()];
        black_box(baseline.pick(&request(hashes), &s.endpoints, &empty, &NoPredictions));
    });
    let mut picker = GoodputPicker::default();
    tail("goodput, no predictions (load fallback)", |k| {
        let hashes = &s.prompts[k % s.prompts.len()];
        black_box(picker.pick(&request(hashes), &s.endpoints, &s.prefix, &NoPredictions));
    });
}

/// The CPU time this thread has used, µs.
fn thread_cpu_us() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

fn tail(label: &str, mut pick: impl FnMut(usize)) {
    let n = 20_000;
    let mut wall = Vec::with_capacity(n);
    let mut cpu = Vec::with_capacity(n);
    for k in 0..n + 2000 {
        let c = thread_cpu_us();
        let t = Instant::now();
        pick(k);
        let dt = t.elapsed().as_secs_f64() * 1e6;
        let dc = thread_cpu_us() - c;
        if k >= 2000 {
            wall.push(dt);
            cpu.push(dc);
        }
    }
    for (what, times) in [("wall", &mut wall), ("CPU", &mut cpu)] {
        times.sort_by(f64::total_cmp);
        let q = |p: f64| times[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        println!(
            "pick among {ENDPOINTS} endpoints ({label}), {n} picks, {what} time: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            q(0.5),
            q(0.9),
            q(0.99),
            times[n - 1]
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    percentiles();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
