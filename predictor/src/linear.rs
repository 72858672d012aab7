//! The linear family: an elastic net on `ln(latency)` over the standardised features and their
//! `ln(1 + |x|)`.
//!
//! Data flow: [`Linear::fit`] builds each row's design (the features and their logs), takes
//! the columns' means and standard deviations, and accumulates the Gram matrix `XᵀX` and `Xᵀy`
//! of the standardised design in one pass over the rows. Cyclic coordinate descent then runs on
//! those `p × p` sums alone (the "covariance updates" of Friedman, Hastie and Tibshirani, JSS
//! 2010): a coordinate step costs `O(p)` instead of `O(n)`. The objective, the step and the
//! stopping rule (largest step relative to the largest coefficient, then the duality gap) are
//! those of linfa-elasticnet 0.8's coordinate descent, which the tests hold it to.
//!
//! Why not linfa itself: its descent updates the residual of every row at every coordinate
//! step, and with the penalty this model uses (1e-4, nearly ridge) and a design whose columns
//! come in correlated pairs (`x` and `ln(1 + x)`) it runs to its iteration limit. On a training
//! window of 10,600 rows that took about 2 s per target, twenty times the trees' fit, every
//! retraining (docs/benchmarks.md, "Fitting").

use serde::{Deserialize, Serialize};

use crate::features::{FeatureVector, N_FEATURES};

/// Width of the linear model's design: each feature and its `ln(1 + |x|)` (the intercept is
/// the mean of the target, the design being centred).
pub const LINEAR_WIDTH: usize = 2 * N_FEATURES;

/// Share of the penalty on the L1 norm (the rest on the squared L2 norm): mostly ridge, which
/// keeps both columns of a correlated pair instead of picking one at random.
pub const L1_RATIO: f64 = 0.05;

/// Coordinate-descent sweeps at most.
pub const MAX_SWEEPS: u32 = 2000;

/// Stop when the largest step of a sweep is below this share of the largest coefficient and
/// the duality gap below this share of the centred target's sum of squares.
pub const TOLERANCE: f64 = 1e-6;

/// A linear model on `ln(latency)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    mean: Vec<f64>,
    scale: Vec<f64>,
    coef: Vec<f64>,
    intercept: f64,
}

/// One row of the design: the features, then their `ln(1 + |x|)`.
#[inline]
pub fn design(x: &FeatureVector) -> [f64; LINEAR_WIDTH] {
    let mut d = [0.0; LINEAR_WIDTH];
    d[..N_FEATURES].copy_from_slice(x);
    for (o, v) in d[N_FEATURES..].iter_mut().zip(x) {
        *o = v.abs().ln_1p();
    }
    d
}

impl Linear {
    #[inline]
    pub fn predict(&self, x: &FeatureVector) -> f64 {
        let d = design(x);
        let mut s = self.intercept;
        for (((v, c), m), k) in d.iter().zip(&self.coef).zip(&self.mean).zip(&self.scale) {
            s += c * (v - m) * k;
        }
        s
    }

    /// Fits on standardised inputs; constant columns get a zero coefficient. `None` with fewer
    /// than two rows or when the data are not finite.
    pub fn fit(x: &[FeatureVector], y: &[f64], penalty: f64) -> Option<Self> {
        let n = x.len().min(y.len());
        if n < 2 {
            return None;
        }
        let rows: Vec<[f64; LINEAR_WIDTH]> = x[..n].iter().map(design).collect();
        let nf = n as f64;
        let mut mean = vec![0.0; LINEAR_WIDTH];
        for r in &rows {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / nf;
            }
        }
        let mut scale = vec![0.0; LINEAR_WIDTH];
        for r in &rows {
            for ((s, v), m) in scale.iter_mut().zip(r).zip(&mean) {
                *s += (v - m).powi(2) / nf;
            }
        }
        for s in scale.iter_mut() {
            let sd = s.sqrt();
            *s = if sd > 1e-12 { 1.0 / sd } else { 0.0 };
        }
        let y_mean = y[..n].iter().sum::<f64>() / nf;
        let sums = GramSums::of(
            rows.iter().zip(&y[..n]).map(|(r, &t)| {
                let mut z = [0.0; LINEAR_WIDTH];
                for (j, v) in z.iter_mut().enumerate() {
                    *v = (r[j] - mean[j]) * scale[j];
                }
                (z, t - y_mean)
            }),
            n,
        );
        let coef = sums.elastic_net(penalty, L1_RATIO, TOLERANCE, MAX_SWEEPS);
        if !y_mean.is_finite() || coef.iter().any(|c| !c.is_finite()) {
            return None;
        }
        Some(Self {
            mean,
            scale,
            coef,
            intercept: y_mean,
        })
    }
}

/// What coordinate descent needs of the (standardised, centred) data: `XᵀX`, `Xᵀy`, `yᵀy` and
/// the row count.
struct GramSums {
    /// Row-major `LINEAR_WIDTH × LINEAR_WIDTH`, symmetric.
    gram: Vec<f64>,
    xty: [f64; LINEAR_WIDTH],
    yty: f64,
    rows: f64,
}

impl GramSums {
    /// One pass over the rows: the upper triangle, mirrored at the end.
    fn of(rows: impl Iterator<Item = ([f64; LINEAR_WIDTH], f64)>, n: usize) -> Self {
        const P: usize = LINEAR_WIDTH;
        let mut gram = vec![0.0; P * P];
        let mut xty = [0.0; P];
        let mut yty = 0.0;
        for (z, t) in rows {
            for i in 0..P {
                let zi = z[i];
                if zi == 0.0 {
                    continue;
                }
                xty[i] += zi * t;
                let row = &mut gram[i * P..(i + 1) * P];
                for (g, zj) in row[i..].iter_mut().zip(&z[i..]) {
                    *g += zi * zj;
                }
            }
            yty += t * t;
        }
        for i in 0..P {
            for j in 0..i {
                gram[i * P + j] = gram[j * P + i];
            }
        }
        Self {
            gram,
            xty,
            yty,
            rows: n as f64,
        }
    }

    /// Minimises `‖y − Xw‖² / (2n) + penalty · (l1_ratio · ‖w‖₁ + (1 − l1_ratio) / 2 · ‖w‖²)`
    /// by cyclic coordinate descent, keeping `q = XᵀX w` up to date instead of the residual.
    fn elastic_net(
        &self,
        penalty: f64,
        l1_ratio: f64,
        tolerance: f64,
        max_sweeps: u32,
    ) -> Vec<f64> {
        const P: usize = LINEAR_WIDTH;
        let l1 = self.rows * l1_ratio * penalty;
        let l2 = self.rows * (1.0 - l1_ratio) * penalty;
        let gap_tolerance = tolerance * self.yty;
        let mut w = vec![0.0; P];
        let mut q = vec![0.0; P];
        let mut sweeps = 0;
        while sweeps < max_sweeps {
            let mut w_max: f64 = 0.0;
            let mut step_max: f64 = 0.0;
            for j in 0..P {
                let g_jj = self.gram[j * P + j];
                if g_jj.abs() <= f64::EPSILON {
                    continue;
                }
                let old = w[j];
                // `x_jᵀ` times the residual without coordinate j's own part.
                let rho = self.xty[j] - q[j] + g_jj * old;
                let new = rho.signum() * (rho.abs() - l1).max(0.0) / (g_jj + l2);
                if new != old {
                    let delta = new - old;
                    for (qk, g) in q.iter_mut().zip(&self.gram[j * P..(j + 1) * P]) {
                        *qk += delta * g;
                    }
                    w[j] = new;
                }
                step_max = step_max.max((new - old).abs());
                w_max = w_max.max(new.abs());
            }
            sweeps += 1;
            let settled = w_max == 0.0 || step_max / w_max < tolerance;
            if (sweeps == max_sweeps.saturating_sub(1) || settled)
                && self.duality_gap(&w, &q, l1, l2) < gap_tolerance
            {
                break;
            }
        }
        w
    }

    /// The elastic net's duality gap at `w` (`q = XᵀX w`), from the sums alone: the residual
    /// `r = y − Xw` enters only as `Xᵀr = Xᵀy − q`, `rᵀr = yᵀy − 2wᵀXᵀy + wᵀq` and
    /// `rᵀy = yᵀy − wᵀXᵀy`.
    fn duality_gap(&self, w: &[f64], q: &[f64], l1: f64, l2: f64) -> f64 {
        let mut dual_norm: f64 = 0.0;
        let (mut w_xty, mut w_q, mut w_norm2, mut w_l1) = (0.0, 0.0, 0.0, 0.0);
        for j in 0..LINEAR_WIDTH {
            dual_norm = dual_norm.max((self.xty[j] - q[j] - l2 * w[j]).abs());
            w_xty += w[j] * self.xty[j];
            w_q += w[j] * q[j];
            w_norm2 += w[j] * w[j];
            w_l1 += w[j].abs();
        }
        let r_norm2 = (self.yty - 2.0 * w_xty + w_q).max(0.0);
        let r_y = self.yty - w_xty;
        let (k, mut gap) = if dual_norm > l1 {
            let k = l1 / dual_norm;
            (k, 0.5 * r_norm2 * (1.0 + k * k))
        } else {
            (1.0, r_norm2)
        };
        gap += l1 * w_l1 - k * r_y + 0.5 * l2 * (1.0 + k * k) * w_norm2;
        gap
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use linfa::prelude::*;
    use linfa_elasticnet::ElasticNet;
    use ndarray::{Array1, Array2};
    use proptest::prelude::*;

    use super::*;

    /// The same model fitted the way this module did before: linfa-elasticnet on the
    /// standardised design, row by row.
    fn fit_with_linfa(x: &[FeatureVector], y: &[f64], penalty: f64) -> Linear {
        let n = x.len();
        let rows: Vec<[f64; LINEAR_WIDTH]> = x.iter().map(design).collect();
        let mut mean = vec![0.0; LINEAR_WIDTH];
        let mut scale = vec![0.0; LINEAR_WIDTH];
        for r in &rows {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n as f64;
            }
        }
        for r in &rows {
            for ((s, v), m) in scale.iter_mut().zip(r).zip(&mean) {
                *s += (v - m).powi(2) / n as f64;
            }
        }
        for s in scale.iter_mut() {
            let sd = s.sqrt();
            *s = if sd > 1e-12 { 1.0 / sd } else { 0.0 };
        }
        let mut data = Array2::<f64>::zeros((n, LINEAR_WIDTH));
        for (i, r) in rows.iter().enumerate() {
            for j in 0..LINEAR_WIDTH {
                data[[i, j]] = (r[j] - mean[j]) * scale[j];
            }
        }
        let ds = Dataset::new(data, Array1::from_iter(y.iter().copied()));
        let model = ElasticNet::params()
            .penalty(penalty)
            .l1_ratio(L1_RATIO)
            .max_iterations(MAX_SWEEPS)
            .tolerance(TOLERANCE)
            .fit(&ds)
            .unwrap();
        Linear {
            mean,
            scale,
            coef: model.hyperplane().to_vec(),
            intercept: model.intercept(),
        }
    }

    /// Rows shaped like the predictor's: a few informative features over wide ranges, a
    /// constant one, and a latency that grows with them, with noise.
    fn rows(seed: u64, n: usize) -> (Vec<FeatureVector>, Vec<f64>) {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut x = Vec::with_capacity(n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let mut f = [0.0; N_FEATURES];
            f[0] = next();
            f[1] = (next() * 8000.0).floor();
            f[2] = (next() * 8.0).floor();
            f[3] = (next() * 64.0).floor();
            f[4] = 7.0;
            f[5] = f[1] * (1.0 - f[0]);
            f[6] = next() * 300.0;
            let latency = 5.0 + 0.02 * f[5] + 0.3 * f[3] * (1.0 + f[2]) + 0.05 * f[6];
            x.push(f);
            y.push((latency * (0.9 + 0.2 * next())).ln());
        }
        (x, y)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn fits_what_linfa_fits() {
        for (seed, n, penalty) in [
            (1, 500, 1e-4),
            (2, 3000, 1e-4),
            (3, 200, 0.05),
            (4, 50, 1.0),
        ] {
            let (x, y) = rows(seed, n);
            let ours = Linear::fit(&x, &y, penalty).unwrap();
            let reference = fit_with_linfa(&x, &y, penalty);
            for (a, b) in ours.coef.iter().zip(&reference.coef) {
                assert!(
                    close(*a, *b),
                    "seed {seed}: coefficient {a} against linfa's {b}"
                );
            }
            assert!(close(ours.intercept, reference.intercept));
            for f in &x {
                assert!(close(ours.predict(f), reference.predict(f)));
            }
        }
    }

    #[test]
    fn a_constant_column_gets_no_weight_and_a_strong_penalty_leaves_the_mean() {
        let (x, y) = rows(7, 400);
        let m = Linear::fit(&x, &y, 1e-4).unwrap();
        assert_eq!(m.coef[4], 0.0, "feature 4 is constant");
        assert_eq!(m.coef[N_FEATURES + 4], 0.0, "so is its log");
        let flat = Linear::fit(&x, &y, 1e6).unwrap();
        assert!(flat.coef.iter().all(|c| *c == 0.0));
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        assert!(close(flat.predict(&x[0]), mean));
    }

    #[test]
    fn too_few_or_unusable_rows_fit_nothing() {
        let (x, mut y) = rows(8, 100);
        assert!(Linear::fit(&x[..1], &y[..1], 1e-4).is_none());
        y[3] = f64::NAN;
        assert!(Linear::fit(&x, &y, 1e-4).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn agrees_with_linfa_on_random_data(seed in 0u64..10_000, n in 2usize..400,
                                            log_penalty in -5.0f64..1.0) {
            let (x, y) = rows(seed, n);
            let penalty = 10f64.powf(log_penalty);
            let ours = Linear::fit(&x, &y, penalty).unwrap();
            let reference = fit_with_linfa(&x, &y, penalty);
            for f in &x {
                let (a, b) = (ours.predict(f), reference.predict(f));
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} against {b}");
            }
        }
    }
}
