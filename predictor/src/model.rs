//! The models of one target (TTFT or TPOT) and how they are chosen and calibrated.
//!
//! Data flow: [`fit_target`] takes the training rows and a held-out slice (split in a
//! calibration half and an evaluation half), fits every model family on the training rows,
//! keeps the one with the lowest MAPE on the calibration half, calibrates its quantiles on the
//! same half (split conformal prediction on the ratio `actual / predicted`), and measures the
//! result on the evaluation half, which no step saw. Everything is a pure function; the
//! [`crate::predictor`] module decides when to call it.
//!
//! Both families predict `ln(latency)`: latencies are positive and span orders of magnitude, and
//! a multiplicative error model is what MAPE and ratio-based conformal intervals assume.

use serde::{Deserialize, Serialize};

use crate::features::{FeatureVector, N_FEATURES};
use crate::gbdt::{self, Gbdt, GbdtParams};
use crate::linear::Linear;

/// Quantiles the predictor reports and scores.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Errors from fitting.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("{target}: {have} training rows, need at least {need}")]
    TooFewRows {
        target: &'static str,
        have: usize,
        need: usize,
    },
    #[error("{target}: {have} held-out rows, need at least {need} to calibrate")]
    TooFewHeldOut {
        target: &'static str,
        have: usize,
        need: usize,
    },
}

/// Which family a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Elastic-net (mostly ridge) regression on standardised engineered features and their logs.
    Linear,
    /// Gradient-boosted trees on the engineered features.
    Gbdt,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Linear => "linear",
            Family::Gbdt => "gbdt",
        }
    }
}

/// One fitted model of either family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Regressor {
    Linear(Linear),
    Gbdt(Gbdt),
}

impl Regressor {
    pub fn family(&self) -> Family {
        match self {
            Regressor::Linear(_) => Family::Linear,
            Regressor::Gbdt(_) => Family::Gbdt,
        }
    }

    /// The model's raw output (a log latency, or a log-ratio to the prior under an offset).
    #[inline]
    pub fn predict_log(&self, x: &FeatureVector) -> f64 {
        match self {
            Regressor::Linear(m) => m.predict(x),
            Regressor::Gbdt(m) => m.predict(x),
        }
    }

    /// Point prediction in ms (the conditional median under the log model), without offset.
    #[inline]
    pub fn predict_ms(&self, x: &FeatureVector) -> f64 {
        point_ms(self, None, x)
    }
}

/// `exp(model + ln x[offset])`: the point prediction in ms, the model read as the log-ratio to
/// the prior feature `offset` when one is used.
#[inline]
fn point_ms(regressor: &Regressor, offset: Option<usize>, x: &FeatureVector) -> f64 {
    let base = offset.map_or(0.0, |i| x[i].max(1e-9).ln());
    // Guard against absurd extrapolation of the linear model.
    (regressor.predict_log(x) + base).clamp(-20.0, 20.0).exp()
}

/// [`point_ms`], or the prior alone (`x[offset]`) where `x` is outside `support`.
#[inline]
fn guarded_point(
    regressor: &Regressor,
    offset: Option<usize>,
    support: Option<&Support>,
    x: &FeatureVector,
) -> f64 {
    if let (Some(i), Some(support)) = (offset, support)
        && !support.contains(x)
    {
        return x[i].max(1e-9);
    }
    point_ms(regressor, offset, x)
}

/// Split-conformal calibration of the ratio `actual / predicted`: its empirical quantiles on
/// held-out rows, with the finite-sample correction, on a grid of 1001 levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conformal {
    grid: Vec<f64>,
}

impl Conformal {
    const STEPS: usize = 1000;

    /// From held-out ratios (any order); `None` when empty.
    pub fn calibrate(ratios: &[f64]) -> Option<Self> {
        let mut r: Vec<f64> = ratios.iter().copied().filter(|x| x.is_finite()).collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        let n = r.len();
        let grid = (0..=Self::STEPS)
            .map(|k| {
                let a = k as f64 / Self::STEPS as f64;
                // The ceil((n+1) a)-th smallest ratio covers a future row with probability >= a
                // under exchangeability.
                let rank = ((n as f64 + 1.0) * a).ceil() as usize;
                r[rank.clamp(1, n) - 1]
            })
            .collect();
        Some(Self { grid })
    }

    /// Multiplier turning the point prediction into the `q` quantile (`q` in 0..=1).
    #[inline]
    pub fn factor(&self, q: f64) -> f64 {
        let k = (q.clamp(0.0, 1.0) * Self::STEPS as f64).round() as usize;
        self.grid.get(k).copied().unwrap_or(1.0)
    }
}

/// Held-out accuracy of a target's model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Accuracy {
    /// Rows scored.
    pub rows: usize,
    /// Mean absolute percentage error of the point prediction, percent.
    pub mape_percent: f64,
    /// Pinball loss per quantile of [`QUANTILES`], ms.
    pub pinball_ms: [f64; 3],
    /// Fraction of rows at or below the predicted quantile, per quantile of [`QUANTILES`].
    pub coverage: [f64; 3],
}

impl Accuracy {
    /// Scores predictions `(point, [q50, q90, q99])` against actual values.
    pub fn score(rows: impl IntoIterator<Item = (f64, [f64; 3], f64)>) -> Self {
        let mut acc = Accuracy::default();
        let (mut ape, mut pin, mut cov) = (0.0, [0.0; 3], [0.0; 3]);
        for (point, q, actual) in rows {
            acc.rows += 1;
            ape += ((point - actual) / actual).abs();
            for i in 0..3 {
                let a = QUANTILES[i];
                let d = actual - q[i];
                pin[i] += if d >= 0.0 { a * d } else { (a - 1.0) * d };
                cov[i] += f64::from(u8::from(actual <= q[i]));
            }
        }
        if acc.rows > 0 {
            let n = acc.rows as f64;
            acc.mape_percent = 100.0 * ape / n;
            acc.pinball_ms = pin.map(|p| p / n);
            acc.coverage = cov.map(|c| c / n);
        }
        acc
    }
}

/// A target's chosen model with its calibration and accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetModel {
    pub regressor: Regressor,
    pub conformal: Conformal,
    /// On the evaluation half of the held-out slice.
    pub accuracy: Accuracy,
    /// Calibration-half MAPE of every family tried (for /status).
    pub candidates: Vec<(Family, f64)>,
    pub training_rows: usize,
    /// Feature index of the physics prior the regressor is a log-ratio to (None: it predicts
    /// the log latency itself).
    #[serde(default)]
    pub offset: Option<usize>,
    /// Feature indices this model never sees: held at 0 in training and prediction alike.
    #[serde(default)]
    pub ignored: Vec<usize>,
    /// The box the training rows span, when the model is a log-ratio to a prior: a row outside
    /// it is predicted by the prior alone (see [`Support`]).
    #[serde(default)]
    pub support: Option<Support>,
}

/// The smallest and largest value of every feature over the training rows.
///
/// Trees answer any row beyond the training data with the correction learnt at its edge, and
/// the linear family extrapolates its slope; neither knows what happens there. The physics
/// prior does: it is built from the engine's step times and scheduler, not from the rows. So a
/// model that learns the log-ratio to the prior adds its correction only inside the box it was
/// trained in. On an unseen sharegpt load of 36 req/s on four H100s (batches of 700 running
/// requests, where training reached 136) the prior alone was within 1.3 % MAPE of
/// TTFT and the trees' edge correction 13 % (docs/predictor.md, "Accuracy").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Support {
    pub lo: FeatureVector,
    pub hi: FeatureVector,
}

impl Support {
    /// The box of `rows` (None when empty).
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a FeatureVector>) -> Option<Self> {
        let mut it = rows.into_iter();
        let first = *it.next()?;
        let mut s = Self {
            lo: first,
            hi: first,
        };
        for r in it {
            for (f, v) in r.iter().enumerate() {
                s.lo[f] = s.lo[f].min(*v);
                s.hi[f] = s.hi[f].max(*v);
            }
        }
        Some(s)
    }

    /// Whether every feature of `x` is within the box.
    #[inline]
    pub fn contains(&self, x: &FeatureVector) -> bool {
        x.iter()
            .zip(self.lo.iter().zip(&self.hi))
            .all(|(v, (lo, hi))| v >= lo && v <= hi)
    }
}

/// `x` with the `ignored` features at 0.
#[inline]
fn masked(x: &FeatureVector, ignored: &[usize]) -> FeatureVector {
    let mut x = *x;
    for &i in ignored {
        if let Some(v) = x.get_mut(i) {
            *v = 0.0;
        }
    }
    x
}

/// Quantile predictions of one target, ms.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Quantiles {
    /// Point prediction (conditional median of the log model).
    pub point: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl TargetModel {
    #[inline]
    pub fn predict(&self, x: &FeatureVector) -> Quantiles {
        let point = self.point(x);
        Quantiles {
            point,
            p50: point * self.conformal.factor(0.5),
            p90: point * self.conformal.factor(0.9),
            p99: point * self.conformal.factor(0.99),
        }
    }

    /// The calibrated `q` quantile, ms.
    #[inline]
    pub fn quantile(&self, x: &FeatureVector, q: f64) -> f64 {
        self.point(x) * self.conformal.factor(q)
    }

    /// The point prediction, ms: the prior alone for a row outside the training box.
    #[inline]
    pub fn point(&self, x: &FeatureVector) -> f64 {
        let support = self.support.as_ref();
        if self.ignored.is_empty() {
            guarded_point(&self.regressor, self.offset, support, x)
        } else {
            guarded_point(
                &self.regressor,
                self.offset,
                support,
                &masked(x, &self.ignored),
            )
        }
    }
}

/// Fitting knobs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitParams {
    pub gbdt: GbdtParams,
    /// Elastic-net penalty of the linear family (on standardised inputs, log target).
    pub linear_penalty: f64,
    /// Fewest training rows to fit a target.
    pub min_training_rows: usize,
    /// Fewest held-out rows (calibration plus evaluation) to calibrate a target.
    pub min_held_out_rows: usize,
}

impl Default for FitParams {
    fn default() -> Self {
        Self {
            gbdt: GbdtParams::default(),
            linear_penalty: 1e-4,
            min_training_rows: 100,
            min_held_out_rows: 20,
        }
    }
}

/// Rows of one target: features and the latency in ms.
pub type Rows = [(FeatureVector, f64)];

/// Fits every family on `train`, selects by calibration MAPE, calibrates quantiles on
/// `calibration`, scores on `evaluation`. With `offset` (a prior feature's index) and that
/// feature positive on every training row, the families learn `ln(actual / prior)` instead of
/// `ln(actual)`.
pub fn fit_target(
    target: &'static str,
    offset: Option<usize>,
    ignored: &[usize],
    train: &Rows,
    calibration: &Rows,
    evaluation: &Rows,
    params: &FitParams,
) -> Result<TargetModel, FitError> {
    if train.len() < params.min_training_rows.max(2) {
        return Err(FitError::TooFewRows {
            target,
            have: train.len(),
            need: params.min_training_rows.max(2),
        });
    }
    let held = calibration.len() + evaluation.len();
    if calibration.is_empty() || held < params.min_held_out_rows {
        return Err(FitError::TooFewHeldOut {
            target,
            have: held,
            need: params.min_held_out_rows.max(1),
        });
    }
    let offset = offset
        .filter(|&i| i < N_FEATURES && train.iter().all(|r| r.0[i] > 0.0 && r.0[i].is_finite()));
    let base = |f: &FeatureVector| offset.map_or(0.0, |i| f[i].ln());
    let x: Vec<FeatureVector> = train.iter().map(|r| masked(&r.0, ignored)).collect();
    let y: Vec<f64> = train.iter().map(|r| r.1.ln() - base(&r.0)).collect();
    let support = offset.and_then(|_| Support::of(&x));
    let point = |m: &Regressor, f: &FeatureVector| {
        guarded_point(m, offset, support.as_ref(), &masked(f, ignored))
    };
    let mut candidates: Vec<Regressor> = Vec::new();
    if let Some(l) = Linear::fit(&x, &y, params.linear_penalty) {
        candidates.push(Regressor::Linear(l));
    }
    candidates.push(Regressor::Gbdt(gbdt::fit(&x, &y, &params.gbdt)));
    let mape = |m: &Regressor| {
        calibration
            .iter()
            .map(|(f, a)| ((point(m, f) - a) / a).abs())
            .sum::<f64>()
            / calibration.len() as f64
            * 100.0
    };
    let scored: Vec<(Family, f64)> = candidates.iter().map(|m| (m.family(), mape(m))).collect();
    let best = scored
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map_or(0, |(i, _)| i);
    let regressor = candidates.swap_remove(best);
    let ratios: Vec<f64> = calibration
        .iter()
        .map(|(f, a)| a / point(&regressor, f))
        .collect();
    let conformal = Conformal::calibrate(&ratios).ok_or(FitError::TooFewHeldOut {
        target,
        have: 0,
        need: 1,
    })?;
    let mut model = TargetModel {
        regressor,
        conformal,
        accuracy: Accuracy::default(),
        candidates: scored,
        training_rows: train.len(),
        offset,
        ignored: ignored.to_vec(),
        support,
    };
    let scored_on = if evaluation.is_empty() {
        calibration
    } else {
        evaluation
    };
    model.accuracy = Accuracy::score(scored_on.iter().map(|(f, a)| {
        let q = model.predict(f);
        (q.point, [q.p50, q.p90, q.p99], *a)
    }));
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_factor_covers_the_requested_share() {
        let ratios: Vec<f64> = (1..=1000).map(|i| i as f64 / 1000.0).collect();
        let c = Conformal::calibrate(&ratios).unwrap();
        let f90 = c.factor(0.9);
        let covered = ratios.iter().filter(|&&r| r <= f90).count();
        assert!((900..=902).contains(&covered), "{covered}");
        assert!(c.factor(0.99) >= f90 && f90 >= c.factor(0.5));
        assert!(Conformal::calibrate(&[]).is_none());
    }

    #[test]
    fn accuracy_scores_mape_pinball_and_coverage() {
        let acc = Accuracy::score([
            (110.0, [100.0, 120.0, 150.0], 100.0),
            (90.0, [90.0, 95.0, 99.0], 100.0),
        ]);
        assert_eq!(acc.rows, 2);
        assert!((acc.mape_percent - 10.0).abs() < 1e-9);
        assert_eq!(acc.coverage, [0.5, 0.5, 0.5]);
        // q50 pinball: row 1 exact (0), row 2 under by 10 -> 0.5 * 10; mean 2.5
        assert!((acc.pinball_ms[0] - 2.5).abs() < 1e-9);
    }

    /// 2000 rows whose feature 0 cycles over [0, 1) in hundredths; `label` sets any other
    /// feature of row `i` and returns its latency.
    fn rows(label: impl Fn(usize, &mut FeatureVector) -> f64) -> Vec<(FeatureVector, f64)> {
        (0..2000)
            .map(|i| {
                let mut f = [0.0; N_FEATURES];
                f[0] = (i % 100) as f64 / 100.0;
                let y = label(i, &mut f);
                (f, y)
            })
            .collect()
    }

    #[test]
    fn selection_prefers_the_family_that_fits_and_reports_both() {
        // A step function of one feature: trees fit it, a linear model cannot.
        let rows = rows(|_, f| if f[0] > 0.5 { 200.0 } else { 20.0 });
        let (train, held) = rows.split_at(1600);
        let (cal, eval) = held.split_at(200);
        let m = fit_target("ttft", None, &[], train, cal, eval, &FitParams::default()).unwrap();
        assert_eq!(m.regressor.family(), Family::Gbdt);
        assert_eq!(m.candidates.len(), 2);
        assert!(m.accuracy.mape_percent < 1.0, "{:?}", m.accuracy);
        let err = fit_target(
            "ttft",
            None,
            &[],
            &train[..10],
            cal,
            eval,
            &FitParams::default(),
        );
        assert!(matches!(err, Err(FitError::TooFewRows { .. })));
    }

    #[test]
    fn an_ignored_feature_is_seen_neither_in_training_nor_in_prediction() {
        let rows = rows(|i, f| {
            f[1] = (i % 7) as f64;
            (if f[0] > 0.5 { 200.0 } else { 20.0 }) + f[1]
        });
        let (train, held) = rows.split_at(1600);
        let (cal, eval) = held.split_at(200);
        let m = fit_target("tpot", None, &[0], train, cal, eval, &FitParams::default()).unwrap();
        let (mut low, mut high) = ([0.0; N_FEATURES], [0.0; N_FEATURES]);
        low[1] = 3.0;
        high[1] = 3.0;
        high[0] = 0.9;
        assert_eq!(m.point(&low), m.point(&high));
        // The model still learns from the features it sees.
        let mut other = low;
        other[1] = 6.0;
        assert_ne!(m.point(&low), m.point(&other));
    }

    #[test]
    fn a_linear_law_is_recovered_by_the_linear_family() {
        let rows: Vec<(FeatureVector, f64)> = (0..3000)
            .map(|i| {
                let mut f = [0.0; N_FEATURES];
                f[1] = 10.0 + (i * 37 % 4000) as f64;
                f[3] = (i * 13 % 64) as f64;
                // ln y linear in ln(1+input) and running: a power law with an exponential term
                let y = 2.0 * (1.0 + f[1]).powf(0.8) * (0.01 * f[3]).exp();
                (f, y)
            })
            .collect();
        let (train, held) = rows.split_at(2400);
        let (cal, eval) = held.split_at(300);
        let m = fit_target("ttft", None, &[], train, cal, eval, &FitParams::default()).unwrap();
        let lin = m
            .candidates
            .iter()
            .find(|c| c.0 == Family::Linear)
            .unwrap()
            .1;
        assert!(lin < 1.0, "{:?}", m.candidates);
    }

    #[test]
    fn outside_the_training_box_the_prior_answers_alone() {
        // The latency is the prior (feature 14) times 2 where feature 0 <= 0.5, and the prior
        // itself elsewhere; training saw feature 0 in [0, 1).
        let rows = rows(|i, f| {
            f[14] = 10.0 + (i % 7) as f64;
            if f[0] <= 0.5 { 2.0 * f[14] } else { f[14] }
        });
        let (train, held) = rows.split_at(1600);
        let (cal, eval) = held.split_at(200);
        let m = fit_target(
            "ttft",
            Some(14),
            &[],
            train,
            cal,
            eval,
            &FitParams::default(),
        )
        .unwrap();
        let support = m.support.as_ref().expect("a log-ratio model keeps its box");
        let mut inside = [0.0; N_FEATURES];
        inside[0] = 0.2;
        inside[14] = 12.0;
        assert!(support.contains(&inside));
        assert!(
            (m.point(&inside) / 24.0 - 1.0).abs() < 0.02,
            "{}",
            m.point(&inside)
        );
        // Feature 0 at 5, beyond anything trained on, and at -1: the prior, not the edge's 2x.
        for outside in [5.0, -1.0] {
            let mut x = inside;
            x[0] = outside;
            assert!(!support.contains(&x));
            assert_eq!(m.point(&x), 12.0);
        }
        // A model of the latency itself (no prior) keeps no box and always answers.
        let plain = fit_target("ttft", None, &[], train, cal, eval, &FitParams::default()).unwrap();
        assert!(plain.support.is_none());
    }
}
