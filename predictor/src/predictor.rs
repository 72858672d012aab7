//! The online predictor: a training window, the current versioned models, and the background
//! retraining that replaces them.
//!
//! Data flow:
//! ```text
//! observed Sample ──add_samples──► Window (stratified, held-out slice) ──snapshot──► fit_models
//!        │ (held-out rows)                                                         │ (pure)
//!        └──► drift monitor (live error of the current model) ──nudge──► trainer   ▼
//! predict(Features) ◄── Arc<ModelSet> (read, never blocked by training) ◄── atomic swap
//!        ▲                       │ every labelled sample, replayed through the raw models
//!        └── online calibration ◄┘ (bias and quantile offsets of this version, `online`)
//! ```
//! Predictions read the current `Arc<ModelSet>` under a read lock held for a pointer copy;
//! training copies the window out under its own lock, fits without any lock, and swaps the new
//! set in with one pointer write. [`fit_models`] is the pure core; [`Trainer`] is the thread that
//! calls it on a cadence and when the drift monitor asks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::features::{FeatureVector, Features, Sample, Target, ignored_features, prior_index};
use crate::metrics::PredictorMetrics;
use crate::model::{FitError, FitParams, Quantiles, TargetModel, fit_target};
use crate::online::{LiveAccuracy, OnlineConfig, TargetCalibration};
use crate::physics::VariantPhysics;
use crate::window::{Placement, Snapshot, Window, WindowConfig};

/// A versioned pair of target models. `ttft` and `tpot` are `None` until fitted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelSet {
    /// 0 = nothing fitted yet; increases by one per successful retraining.
    pub version: u64,
    /// Unix seconds of the fit (set by the caller's clock).
    pub trained_at_s: f64,
    pub ttft: Option<TargetModel>,
    pub tpot: Option<TargetModel>,
    /// The variant's physics the models were fitted with (their prior features); carried from
    /// the predictor's config so that every prediction encodes features as training did.
    #[serde(skip)]
    pub physics: Option<VariantPhysics>,
    /// This version's online calibration per target (TTFT, TPOT), learned from the labels that
    /// arrived after it was fitted; shared by every clone of the version.
    #[serde(skip)]
    pub online: Arc<[TargetCalibration; 2]>,
}

/// Predicted latencies for one endpoint, ms.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prediction {
    pub ttft: Quantiles,
    /// All zero while no TPOT model exists (llm-d's non-streaming mode never sends TPOT rows).
    pub tpot: Quantiles,
}

/// A prediction as it was served, kept with its request until the labels arrive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Served {
    /// [`ModelSet::version`] of the models that made it.
    pub version: u64,
    pub prediction: Prediction,
}

impl Prediction {
    /// The quantiles of target `t`.
    pub fn target(&self, t: Target) -> Quantiles {
        match t {
            Target::Ttft => self.ttft,
            Target::Tpot => self.tpot,
        }
    }
}

impl ModelSet {
    /// Whether predictions are real: a TTFT model has been fitted on observed data.
    pub fn is_ready(&self) -> bool {
        self.ttft.is_some()
    }

    pub fn target(&self, t: Target) -> Option<&TargetModel> {
        match t {
            Target::Ttft => self.ttft.as_ref(),
            Target::Tpot => self.tpot.as_ref(),
        }
    }

    /// The online calibration of target `t`.
    pub fn calibration(&self, t: Target) -> &TargetCalibration {
        &self.online[t.index()]
    }

    /// Live accuracy of the calibrated predictions per target since this version was fitted.
    pub fn live(&self) -> [LiveAccuracy; 2] {
        Target::ALL.map(|t| self.calibration(t).live())
    }

    /// The feature vector of `f` as these models see it (with their physics priors).
    #[inline]
    pub fn vector(&self, f: &Features) -> FeatureVector {
        f.vector_with(self.physics.as_ref())
    }

    /// Predicts both targets for one endpoint (calibrated online).
    #[inline]
    pub fn predict(&self, f: &Features) -> Prediction {
        let x = self.vector(f);
        let one = |t: Target| {
            self.target(t)
                .map(|m| self.calibration(t).apply(m.predict(&x)))
                .unwrap_or_default()
        };
        Prediction {
            ttft: one(Target::Ttft),
            tpot: one(Target::Tpot),
        }
    }

    /// The models' own predictions, without the online calibration.
    #[inline]
    pub fn predict_raw(&self, f: &Features) -> Prediction {
        let x = self.vector(f);
        let one = |t: Target| self.target(t).map(|m| m.predict(&x)).unwrap_or_default();
        Prediction {
            ttft: one(Target::Ttft),
            tpot: one(Target::Tpot),
        }
    }

    /// The `q` quantile of both targets (`q` = None: the point prediction), ms.
    #[inline]
    pub fn predict_at(&self, f: &Features, q: Option<f64>) -> (f64, f64) {
        let x = self.vector(f);
        let one = |t: Target| {
            self.target(t).map_or(0.0, |m| {
                let raw = match q {
                    Some(q) => m.quantile(&x, q),
                    None => m.point(&x),
                };
                raw * self.calibration(t).factor(q)
            })
        };
        (one(Target::Ttft), one(Target::Tpot))
    }
}

/// Fits both targets from a snapshot. A target that cannot be fitted keeps `previous`'s model.
pub fn fit_models(
    snapshot: &Snapshot,
    params: &FitParams,
    previous: &ModelSet,
    now_s: f64,
) -> (ModelSet, Vec<FitError>) {
    let mut errors = Vec::new();
    let mut refitted = [false; 2];
    let mut fit = |t: Target| {
        let d = match t {
            Target::Ttft => &snapshot.ttft,
            Target::Tpot => &snapshot.tpot,
        };
        match fit_target(
            t.as_str(),
            Some(prior_index(t)),
            ignored_features(t),
            &d.train,
            &d.calibration,
            &d.evaluation,
            params,
        ) {
            Ok(m) => {
                refitted[t.index()] = true;
                Some(m)
            }
            Err(e) => {
                errors.push(e);
                previous.target(t).cloned()
            }
        }
    };
    let ttft = fit(Target::Ttft);
    let tpot = fit(Target::Tpot);
    (
        ModelSet {
            version: previous.version + 1,
            trained_at_s: now_s,
            ttft,
            tpot,
            physics: previous.physics,
            online: Arc::new([
                previous.online[0].successor(!refitted[0]),
                previous.online[1].successor(!refitted[1]),
            ]),
        },
        errors,
    )
}

/// Settings of a [`Predictor`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PredictorConfig {
    pub window: WindowConfig,
    pub fit: FitParams,
    /// Retrain at most this often, seconds (and only when new rows arrived).
    pub retrain_interval_s: f64,
    /// New training rows needed before a scheduled retraining runs.
    pub min_new_rows: usize,
    /// Held-out rows the drift monitor needs before it may trigger.
    pub drift_min_rows: u64,
    /// The variant this predictor serves (one predictor per variant, as the scheduler keeps
    /// them): its physics priors become features and the models learn the log-ratio to them.
    /// None: no priors (features as llm-d's only).
    #[serde(skip)]
    pub physics: Option<VariantPhysics>,
    /// Calibration of each model version from the labels that follow its fit.
    #[serde(default)]
    pub online: OnlineConfig,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            fit: FitParams::default(),
            retrain_interval_s: 10.0,
            min_new_rows: 50,
            drift_min_rows: 100,
            physics: None,
            online: OnlineConfig::default(),
        }
    }
}

/// Live error of the current model on fresh held-out rows of one target.
#[derive(Debug, Clone, Copy, Default)]
struct Drift {
    rows: u64,
    ape_ewma: f64,
    cover90_ewma: f64,
}

impl Drift {
    const ALPHA: f64 = 0.02;

    fn observe(&mut self, ape: f64, covered: bool) {
        let c = f64::from(u8::from(covered));
        if self.rows == 0 {
            self.ape_ewma = ape;
            self.cover90_ewma = c;
        } else {
            self.ape_ewma += Self::ALPHA * (ape - self.ape_ewma);
            self.cover90_ewma += Self::ALPHA * (c - self.cover90_ewma);
        }
        self.rows += 1;
    }

    /// Whether the live error departs from what the model was calibrated for: MAPE doubled
    /// (and up by 5 points) or p90 coverage off by more than 10 points.
    fn drifted(&self, trained_mape_percent: f64, min_rows: u64) -> bool {
        self.rows >= min_rows
            && (self.ape_ewma * 100.0
                > (2.0 * trained_mape_percent).max(trained_mape_percent + 5.0)
                || (self.cover90_ewma - 0.9).abs() > 0.1)
    }
}

#[derive(Debug)]
struct Training {
    window: Window,
    new_rows: usize,
    drift: [Drift; 2],
    drift_pending: bool,
}

/// Why a retraining ran (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrainReason {
    Schedule,
    Drift,
    Manual,
}

impl RetrainReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetrainReason::Schedule => "schedule",
            RetrainReason::Drift => "drift",
            RetrainReason::Manual => "manual",
        }
    }
}

/// The online predictor. Share it as `Arc<Predictor>`.
#[derive(Debug)]
pub struct Predictor {
    config: PredictorConfig,
    training: Mutex<Training>,
    /// Serialises fits so that two retrainings never race to swap.
    fitting: Mutex<()>,
    current: RwLock<Arc<ModelSet>>,
    wake: Condvar,
    wake_lock: Mutex<bool>,
    samples_seen: AtomicU64,
    metrics: PredictorMetrics,
}

impl Predictor {
    pub fn new(config: PredictorConfig) -> Self {
        Self {
            config,
            training: Mutex::new(Training {
                window: Window::new(config.window).with_physics(config.physics),
                new_rows: 0,
                drift: [Drift::default(); 2],
                drift_pending: false,
            }),
            fitting: Mutex::new(()),
            current: RwLock::new(Arc::new(ModelSet {
                physics: config.physics,
                online: Arc::new([
                    TargetCalibration::new(config.online),
                    TargetCalibration::new(config.online),
                ]),
                ..ModelSet::default()
            })),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            samples_seen: AtomicU64::new(0),
            metrics: PredictorMetrics::default(),
        }
    }

    pub fn config(&self) -> &PredictorConfig {
        &self.config
    }

    pub fn metrics(&self) -> &PredictorMetrics {
        &self.metrics
    }

    /// The current models (a cheap pointer copy; never waits for training).
    #[inline]
    pub fn models(&self) -> Arc<ModelSet> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            // A panic while holding the lock cannot leave a half-written Arc: use it.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Predicts one endpoint with the current models.
    #[inline]
    pub fn predict(&self, f: &Features) -> Prediction {
        self.models().predict(f)
    }

    /// Adds observed samples (`now_s` is the caller's clock, used for ageing rows). Their labels
    /// also calibrate the current version online, replayed through it as it stands now.
    pub fn add_samples(&self, samples: &[Sample], now_s: f64) {
        self.add(samples.iter().map(|s| (s, None)), samples.len(), now_s);
    }

    /// [`Predictor::add_samples`] for requests whose prediction the caller kept from dispatch:
    /// the online calibration then learns from what was actually served. This is what makes
    /// its quantiles converge to their coverage when labels arrive late (a TPOT label comes
    /// seconds after the prediction, while the calibration keeps moving); a replay at label
    /// time would score a prediction nobody was given.
    pub fn add_served_samples(&self, samples: &[(Sample, Served)], now_s: f64) {
        self.add(
            samples.iter().map(|(s, v)| (s, Some(v))),
            samples.len(),
            now_s,
        );
    }

    fn add<'a>(
        &self,
        samples: impl Iterator<Item = (&'a Sample, Option<&'a Served>)>,
        count: usize,
        now_s: f64,
    ) {
        let models = self.models();
        let mut nudge = false;
        {
            let mut t = match self.training.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (s, served) in samples {
                // Every label is out of sample for the version in use (fitted before it came):
                // it calibrates that version's predictions until the next retraining. A
                // prediction served by an older version says nothing about this one's offsets.
                let x = models.vector(&s.features);
                let served = served.filter(|v| v.version == models.version);
                for target in Target::ALL {
                    if let (Some(m), Some(y)) = (models.target(target), s.target(target)) {
                        let c = models.calibration(target);
                        match served {
                            Some(v) => {
                                c.observe_served(v.prediction.target(target), m.predict(&x), y)
                            }
                            None => c.observe(m.predict(&x), y),
                        }
                    }
                }
                let placed = t.window.add(s, now_s);
                for (i, target) in Target::ALL.into_iter().enumerate() {
                    match placed[i] {
                        Some(Placement::Train) => t.new_rows += 1,
                        Some(Placement::Evaluation) => {
                            // The model's own error (not the calibrated one) decides whether
                            // it is due for a refit.
                            if let (Some(m), Some(y)) = (models.target(target), s.target(target)) {
                                let q = m.predict(&x);
                                t.drift[i].observe(((q.point - y) / y).abs(), y <= q.p90);
                                if t.drift[i]
                                    .drifted(m.accuracy.mape_percent, self.config.drift_min_rows)
                                    && !t.drift_pending
                                {
                                    t.drift_pending = true;
                                    nudge = true;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            self.metrics.set_window(
                t.window.train_rows(Target::Ttft),
                t.window.train_rows(Target::Tpot),
            );
            self.metrics.set_live(&models.live());
        }
        self.samples_seen.fetch_add(count as u64, Ordering::Relaxed);
        self.metrics.samples.inc_by(count as u64);
        if nudge {
            self.metrics.drift_detected.inc();
            self.nudge();
        }
    }

    /// Samples received since start.
    pub fn samples_seen(&self) -> u64 {
        self.samples_seen.load(Ordering::Relaxed)
    }

    /// Training rows per target.
    pub fn window_rows(&self) -> [(usize, usize); 2] {
        let t = match self.training.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Target::ALL.map(|x| (t.window.train_rows(x), t.window.held_out_rows(x)))
    }

    /// Forgets all samples (the models stay until the next retraining).
    pub fn flush(&self) {
        let mut t = match self.training.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        t.window.clear();
        t.new_rows = 0;
    }

    /// Retrains now if there is anything new (or always for `Manual`); returns the new version.
    pub fn retrain(&self, reason: RetrainReason, now_s: f64) -> Option<u64> {
        let _one_at_a_time = match self.fitting.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let snapshot = {
            let mut t = match self.training.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let due = match reason {
                RetrainReason::Manual => true,
                RetrainReason::Drift => t.drift_pending,
                RetrainReason::Schedule => {
                    t.new_rows >= self.config.min_new_rows || t.drift_pending
                }
            };
            if !due {
                return None;
            }
            t.window.evict_stale(now_s);
            t.new_rows = 0;
            t.drift_pending = false;
            t.drift = [Drift::default(); 2];
            t.window.snapshot()
        };
        let started = std::time::Instant::now();
        let previous = self.models();
        let (set, errors) = fit_models(&snapshot, &self.config.fit, &previous, now_s);
        if set.ttft.is_none() && set.tpot.is_none() {
            self.metrics.retrain_failures.inc();
            return None;
        }
        let _ = errors; // a target without enough rows keeps its previous model
        let version = set.version;
        self.metrics
            .record_fit(&set, reason, started.elapsed().as_secs_f64());
        let new = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
        Some(version)
    }

    fn nudge(&self) {
        if let Ok(mut flag) = self.wake_lock.lock() {
            *flag = true;
            self.wake.notify_all();
        }
    }

    /// Starts the background trainer: retrains every `retrain_interval_s` when new rows
    /// arrived, and at once when the drift monitor fires. `clock` gives Unix seconds.
    pub fn spawn_trainer(self: &Arc<Self>, clock: fn() -> f64) -> std::io::Result<Trainer> {
        let stop = Arc::new(AtomicBool::new(false));
        let me = Arc::clone(self);
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("goodput-predictor-trainer".into())
            .spawn(move || {
                let interval = Duration::from_secs_f64(me.config.retrain_interval_s.max(0.01));
                while !stop2.load(Ordering::Relaxed) {
                    let drift = {
                        let guard = match me.wake_lock.lock() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        let (mut guard, _) = match me.wake.wait_timeout(guard, interval) {
                            Ok(x) => x,
                            Err(p) => p.into_inner(),
                        };
                        std::mem::replace(&mut *guard, false)
                    };
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let reason = if drift {
                        RetrainReason::Drift
                    } else {
                        RetrainReason::Schedule
                    };
                    me.retrain(reason, clock());
                }
            })?;
        Ok(Trainer {
            stop,
            predictor: Arc::clone(self),
            handle: Some(handle),
        })
    }
}

/// The background trainer; stops (and joins) when dropped.
#[derive(Debug)]
pub struct Trainer {
    stop: Arc<AtomicBool>,
    predictor: Arc<Predictor>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Trainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.predictor.nudge();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(n: usize, scale: f64) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let f = Features {
                    input_token_length: 100 + (i * 7919 % 3000) as u32,
                    num_request_running: (i % 17) as u32,
                    kv_cache_percentage: (i % 10) as f64 / 10.0,
                    ..Default::default()
                };
                let ttft = scale * (5.0 + 0.02 * f.input_token_length as f64);
                let tpot = scale * (10.0 + 0.5 * f.num_request_running as f64);
                Sample {
                    features: f,
                    ttft_ms: Some(ttft),
                    tpot_ms: Some(tpot),
                }
            })
            .collect()
    }

    #[test]
    fn not_ready_until_fitted_then_versions_increase() {
        let p = Predictor::new(PredictorConfig::default());
        assert!(!p.models().is_ready());
        assert_eq!(p.predict(&Features::default()), Prediction::default());
        assert_eq!(p.retrain(RetrainReason::Schedule, 0.0), None);
        p.add_samples(&samples(3000, 1.0), 0.0);
        assert_eq!(p.retrain(RetrainReason::Schedule, 1.0), Some(1));
        let m = p.models();
        assert!(m.is_ready() && m.tpot.is_some());
        let s = samples(50, 1.0)[25];
        let pred = p.predict(&s.features);
        let want = s.ttft_ms.unwrap();
        assert!(
            (pred.ttft.point / want - 1.0).abs() < 0.05,
            "{pred:?} vs {want}"
        );
        assert!(pred.ttft.p99 >= pred.ttft.p90 && pred.ttft.p90 >= pred.ttft.p50);
        // Nothing new: a scheduled retraining is skipped; a manual one runs.
        assert_eq!(p.retrain(RetrainReason::Schedule, 2.0), None);
        assert_eq!(p.retrain(RetrainReason::Manual, 2.0), Some(2));
    }

    #[test]
    fn labels_calibrate_the_version_in_use_until_the_next_retraining() {
        let p = Predictor::new(PredictorConfig::default());
        p.add_samples(&samples(3000, 1.0), 0.0);
        p.retrain(RetrainReason::Manual, 0.0).unwrap();
        let f = samples(50, 1.0)[25].features;
        let before = p.predict(&f).ttft.point;
        assert_eq!(p.models().predict_raw(&f).ttft.point, before);
        // The traffic turns 1.4x slower; no retraining yet.
        p.add_samples(&samples(3000, 1.4), 1.0);
        let models = p.models();
        let after = p.predict(&f).ttft.point;
        assert!(after / before > 1.3, "{before} -> {after}");
        assert_eq!(
            models.predict_raw(&f).ttft.point,
            before,
            "the model itself is unchanged"
        );
        assert_eq!(models.live()[0].rows, 3000);
        let (t, _) = models.predict_at(&f, None);
        assert!(
            (t - after).abs() < 1e-9,
            "the bulk path serves the same point"
        );
        // A new version starts with a neutral bias (and the offsets of the old one).
        p.retrain(RetrainReason::Manual, 2.0).unwrap();
        let fresh = p.models();
        assert_eq!(fresh.live()[0].rows, 0);
        assert_eq!(fresh.calibration(Target::Ttft).factor(None), 1.0);
    }

    #[test]
    fn served_predictions_count_only_for_the_version_that_served_them() {
        let p = Predictor::new(PredictorConfig::default());
        p.add_samples(&samples(3000, 1.0), 0.0);
        p.retrain(RetrainReason::Manual, 0.0).unwrap();
        let s = samples(50, 1.0)[25];
        // A served prediction far below its label: the quantile offsets move up.
        let low = Prediction {
            ttft: Quantiles {
                point: 1.0,
                p50: 1.0,
                p90: 1.0,
                p99: 1.0,
            },
            tpot: Quantiles::default(),
        };
        let version = p.models().version;
        p.add_served_samples(
            &[(
                s,
                Served {
                    version,
                    prediction: low,
                },
            )],
            1.0,
        );
        let factors = p.models().live()[0].quantile_factors;
        assert!(factors.iter().all(|&f| f > 1.0), "{factors:?}");
        // The same from another version is replayed through the current one instead: its
        // p99 covers the label, which the stale served 1 ms would not.
        p.retrain(RetrainReason::Manual, 2.0).unwrap();
        let stale = Served {
            version: version.wrapping_sub(1),
            prediction: low,
        };
        p.add_served_samples(&[(s, stale)], 3.0);
        let live = p.models().live()[0];
        assert_eq!(live.rows, 1);
        assert_eq!(live.coverage[2], 1.0, "{live:?}");
    }

    #[test]
    fn a_regime_change_is_detected_as_drift_and_retrained_in_the_background() {
        let p = Arc::new(Predictor::new(PredictorConfig {
            retrain_interval_s: 3600.0, // only drift can wake the trainer in this test
            ..Default::default()
        }));
        p.add_samples(&samples(3000, 1.0), 0.0);
        p.retrain(RetrainReason::Manual, 0.0);
        let trainer = p.spawn_trainer(|| 0.0).unwrap();
        // Latencies triple (e.g. a slower engine version): the live error explodes.
        let mut rx = 0;
        while p.models().version < 2 && rx < 200 {
            p.add_samples(&samples(200, 3.0), 0.0);
            rx += 1;
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(trainer);
        assert!(p.models().version >= 2, "no drift retraining");
        assert!(p.metrics().drift_detected.get() >= 1);
    }
}
