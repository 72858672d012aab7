//! The accuracy evaluation shared by `tests/accuracy.rs` and `examples/accuracy_limits.rs`: the
//! training and unseen workloads, the predictor as the scheduler configures it, and the two
//! ways of scoring it (the model alone; served at dispatch with online calibration).

use goodput_predictor::window::WindowConfig;
use goodput_predictor::{
    Accuracy, Prediction, Predictor, PredictorConfig, RetrainReason, Sample, Served, Target,
    VariantPhysics,
};

use super::{Knowledge, Timed};

pub fn generator(rate: f64, lengths: &str, extra: &str, seed: u64) -> String {
    format!(
        "    rate: {rate}\n    duration_s: 900\n    lengths: {lengths}\n    seed: {seed}\n{extra}"
    )
}

fn run(
    accelerator: &str,
    replicas: u32,
    workload: String,
    seed: u64,
    knowledge: Knowledge,
) -> Vec<Sample> {
    super::collect(
        &super::scenario(accelerator, replicas, &workload),
        seed,
        knowledge,
    )
}

fn run_timed(
    accelerator: &str,
    replicas: u32,
    workload: String,
    seed: u64,
    knowledge: Knowledge,
) -> Vec<Timed> {
    super::collect_timed(
        &super::scenario(accelerator, replicas, &workload),
        seed,
        knowledge,
    )
}

/// The five training workloads (900 s each on 4 × H100).
pub fn training_data(knowledge: Knowledge) -> Vec<Sample> {
    let mut all = Vec::new();
    for (i, (rate, lengths, extra)) in [
        (10.0, "azure-conv", ""),
        (24.0, "azure-conv", "    arrival: { gamma: { cv: 2.0 } }\n"),
        (30.0, "sharegpt", ""),
        (
            10.0,
            "azure-code",
            "    prefix: { groups: 16, prefix_tokens: 1024 }\n",
        ),
        (5.0, "arxiv", "    arrival: { gamma: { cv: 1.5 } }\n"),
    ]
    .into_iter()
    .enumerate()
    {
        all.extend(run(
            "h100",
            4,
            generator(rate, lengths, extra, 100 + i as u64),
            11 + i as u64,
            knowledge,
        ));
    }
    all
}

/// The two workloads never trained on, with each request's dispatch and finish time.
pub fn held_out_workloads(knowledge: Knowledge) -> Vec<(&'static str, Vec<Timed>)> {
    vec![
        (
            "azure-conv 16 req/s, daily envelope, shared prefixes",
            run_timed(
                "h100",
                4,
                generator(
                    16.0,
                    "azure-conv",
                    "    envelope: { daily: { peak_to_trough: 3.0, period_s: 900 } }\n    prefix: { groups: 8, prefix_tokens: 512 }\n",
                    900,
                ),
                901,
                knowledge,
            ),
        ),
        (
            "sharegpt 22 req/s, bursty",
            run_timed(
                "h100",
                4,
                generator(
                    22.0,
                    "sharegpt",
                    "    arrival: { gamma: { cv: 3.0 } }\n",
                    902,
                ),
                903,
                knowledge,
            ),
        ),
    ]
}

/// Three more workloads never trained on, for the accuracy test's served scoring: a heavier
/// load than any trained (sharegpt at 36 req/s, where batches reach five times the training's),
/// long prompts under an envelope (arxiv), and prefix-heavy code traffic with bursts
/// (azure-code with 32 shared 2048-token prefixes).
pub fn more_held_out_workloads(knowledge: Knowledge) -> Vec<(&'static str, Vec<Timed>)> {
    vec![
        (
            "sharegpt 36 req/s",
            run_timed(
                "h100",
                4,
                generator(36.0, "sharegpt", "", 777),
                778,
                knowledge,
            ),
        ),
        (
            "arxiv 7 req/s, daily envelope",
            run_timed(
                "h100",
                4,
                generator(
                    7.0,
                    "arxiv",
                    "    envelope: { daily: { peak_to_trough: 3.0, period_s: 900 } }\n",
                    777,
                ),
                778,
                knowledge,
            ),
        ),
        (
            "azure-code 14 req/s, gamma CV 2.5, 32 prefixes",
            run_timed(
                "h100",
                4,
                generator(
                    14.0,
                    "azure-code",
                    "    arrival: { gamma: { cv: 2.5 } }\n    prefix: { groups: 32, prefix_tokens: 2048 }\n",
                    777,
                ),
                778,
                knowledge,
            ),
        ),
    ]
}

/// Per request of `at_dispatch`, whether prompts reached its replica after its dispatch and
/// before its first token (prompts that may share its prefill step; each counts at least the
/// one token vLLM computes however much of it is cached), which no dispatch-time predictor can
/// know. `joined` is the same run collected with
/// [`Knowledge::FutureWait`].
pub fn joined_after_dispatch(at_dispatch: &[Timed], joined: &[Timed]) -> Vec<bool> {
    assert_eq!(at_dispatch.len(), joined.len(), "the same run");
    at_dispatch
        .iter()
        .zip(joined)
        .map(|(a, j)| {
            j.sample.features.prefill_tokens_in_flight > a.sample.features.prefill_tokens_in_flight
        })
        .collect()
}

/// Served TTFT on the requests no later prompt reached before their first token, and on the
/// others (`later` is the same run collected with [`Knowledge::FutureWait`]), each printed.
pub fn ttft_by_later_prompts(
    name: &str,
    samples: &[Timed],
    later: &[Timed],
    served: &[Option<Prediction>],
) -> (Accuracy, Accuracy) {
    let joined = joined_after_dispatch(samples, later);
    let t = Target::Ttft;
    let alone = score_predictions(samples, served, t, |i| !joined[i]);
    let shared = score_predictions(samples, served, t, |i| joined[i]);
    line(
        name,
        "served, no later prompt before its first token",
        t,
        &alone,
    );
    line(
        name,
        "served, later prompts before its first token",
        t,
        &shared,
    );
    (alone, shared)
}

/// The model's own predictions (no online calibration) against the labels.
pub fn score_frozen(p: &Predictor, samples: &[Timed], t: Target) -> Accuracy {
    let m = p.models();
    Accuracy::score(samples.iter().filter_map(|s| {
        let y = s.sample.target(t)?;
        let q = m.predict_raw(&s.sample.features).target(t);
        Some((q.point, [q.p50, q.p90, q.p99], y))
    }))
}

/// What a user of the predictor gets: each request predicted at dispatch with the calibration
/// of that moment, its labels added to the predictor when it finishes (no retraining), with the
/// prediction served (`keep_served`, as an in-process caller can) or without (as llm-d's EPP
/// sends them).
pub fn score_served(p: &Predictor, samples: &[Timed], keep_served: bool) -> [Accuracy; 2] {
    score_prequential(p, samples, keep_served, None)
}

/// [`score_served`], with the predictor also retrained every `retrain_every_s` of simulated
/// time as its background trainer does in service (test-then-train: each request is predicted
/// before its own labels exist, by the model fitted on the labels that had arrived by then).
pub fn score_prequential(
    p: &Predictor,
    samples: &[Timed],
    keep_served: bool,
    retrain_every_s: Option<f64>,
) -> [Accuracy; 2] {
    let served = serve_prequential(p, samples, keep_served, retrain_every_s);
    Target::ALL.map(|t| score_predictions(samples, &served, t, |_| true))
}

/// The accuracy of `served` (one prediction per sample) on the samples `keep` selects.
pub fn score_predictions(
    samples: &[Timed],
    served: &[Option<Prediction>],
    t: Target,
    keep: impl Fn(usize) -> bool,
) -> Accuracy {
    Accuracy::score(
        samples
            .iter()
            .zip(served)
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .filter_map(|(_, (s, pred))| {
                let y = s.sample.target(t)?;
                let q = pred.as_ref()?.target(t);
                Some((q.point, [q.p50, q.p90, q.p99], y))
            }),
    )
}

/// The predictions [`score_prequential`] scores, one per sample.
pub fn serve_prequential(
    p: &Predictor,
    samples: &[Timed],
    keep_served: bool,
    retrain_every_s: Option<f64>,
) -> Vec<Option<Prediction>> {
    enum Event {
        Dispatch(usize),
        Finish(usize),
    }
    let mut events: Vec<(f64, Event)> = Vec::with_capacity(2 * samples.len());
    for (i, s) in samples.iter().enumerate() {
        events.push((s.dispatched_s, Event::Dispatch(i)));
        events.push((s.finished_s, Event::Finish(i)));
    }
    // Stable: a request that finishes at the instant another is dispatched is learned first
    // only if it was pushed first, which keeps dispatch before its own finish.
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut served = vec![None; samples.len()];
    let mut versions = vec![0; samples.len()];
    let mut next_retrain = events.first().map_or(0.0, |e| e.0) + retrain_every_s.unwrap_or(0.0);
    for (now, e) in events {
        if let Some(every) = retrain_every_s
            && now >= next_retrain
        {
            p.retrain(RetrainReason::Schedule, now);
            next_retrain = now + every;
        }
        match e {
            Event::Dispatch(i) => {
                versions[i] = p.models().version;
                served[i] = Some(p.predict(&samples[i].sample.features));
            }
            Event::Finish(i) => match (keep_served, served[i]) {
                (true, Some(prediction)) => p.add_served_samples(
                    &[(
                        samples[i].sample,
                        Served {
                            version: versions[i],
                            prediction,
                        },
                    )],
                    now,
                ),
                _ => p.add_samples(&[samples[i].sample], now),
            },
        }
    }
    served
}

/// H100's predictor (with its physics) trained once on `train`.
pub fn trained(train: &[Sample]) -> Predictor {
    let catalog = goodput_core::Catalog::builtin();
    let physics = VariantPhysics::new(
        catalog.model("llama-3.1-8b").expect("model"),
        catalog.accelerator("h100").expect("accelerator"),
        1,
    );
    let p = Predictor::new(PredictorConfig {
        physics: Some(physics),
        window: WindowConfig {
            per_bucket: 400,
            held_out_cap: 8000,
            ..Default::default()
        },
        ..Default::default()
    });
    p.add_samples(train, 0.0);
    p.retrain(RetrainReason::Manual, 0.0).expect("fitted");
    p
}

/// Prints one accuracy line.
pub fn line(name: &str, how: &str, t: Target, a: &Accuracy) {
    eprintln!(
        "held-out {name} [{how}]: {} rows={} MAPE={:.2}% coverage(p50,p90,p99)=({:.3},{:.3},{:.3}) pinball(ms)=({:.3},{:.3},{:.3})",
        t.as_str(),
        a.rows,
        a.mape_percent,
        a.coverage[0],
        a.coverage[1],
        a.coverage[2],
        a.pinball_ms[0],
        a.pinball_ms[1],
        a.pinball_ms[2],
    );
}
