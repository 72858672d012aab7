//! The training window: what the predictor remembers of the requests it observed.
//!
//! Data flow: every [`Sample`] is routed, per target it carries, either to the held-out slice
//! (a deterministic share, decided by a hash of the sample's sequence number so that the split
//! does not depend on the values) or to the stratified training window. The window keeps rows
//! in buckets over the state space (queue depth × KV usage × prefix score × prompt length) with
//! a cap per bucket, evicting oldest first inside a bucket, so a burst of one regime cannot push
//! out the rare regimes the scheduler still needs to predict. Unlike llm-d's window it also
//! ages rows out: past `max_age_s` a row is dropped unless it is among the newest
//! `keep_per_bucket` of its bucket, which keeps coverage while letting stale regimes go.
//! The held-out slice is split again into a calibration half and an evaluation half.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::features::{FeatureVector, Sample, Target};
use crate::physics::VariantPhysics;

/// Window sizes and the held-out share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Rows per bucket per target.
    pub per_bucket: usize,
    /// Percent of samples held out from training (calibration + evaluation).
    pub held_out_percent: u64,
    /// Held-out rows kept per target (newest).
    pub held_out_cap: usize,
    /// Rows older than this (seconds of the caller's clock) are evicted ...
    pub max_age_s: f64,
    /// ... unless among the newest this many of their bucket.
    pub keep_per_bucket: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            per_bucket: 200,
            held_out_percent: 20,
            held_out_cap: 4000,
            max_age_s: 3600.0,
            keep_per_bucket: 20,
        }
    }
}

/// Bucket of a row: (queue 0..5, KV 0..20, prefix 0..4, prompt length 0..4).
pub type BucketKey = (u8, u8, u8, u8);

/// The bucket of a sample's features.
pub fn bucket_of(s: &Sample) -> BucketKey {
    let f = &s.features;
    let q = match f.num_request_waiting {
        0 => 0,
        1..=2 => 1,
        3..=5 => 2,
        6..=10 => 3,
        _ => 4,
    };
    let kv = ((f.kv_cache_percentage.clamp(0.0, 1.0) * 20.0) as u8).min(19);
    let prefix = ((f.prefix_cache_score.clamp(0.0, 1.0) * 4.0) as u8).min(3);
    let len = match f.input_token_length {
        0..=255 => 0,
        256..=1023 => 1,
        1024..=4095 => 2,
        _ => 3,
    };
    (q, kv, prefix, len)
}

/// A row as stored: features, target value (ms), and when it was added.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub x: FeatureVector,
    pub y: f64,
    pub at_s: f64,
}

#[derive(Debug, Default, Clone)]
struct TargetWindow {
    buckets: HashMap<BucketKey, VecDeque<Row>>,
    calibration: VecDeque<Row>,
    evaluation: VecDeque<Row>,
    train_rows: usize,
}

/// The rows of one target ready for fitting.
#[derive(Debug, Clone, Default)]
pub struct TargetData {
    pub train: Vec<(FeatureVector, f64)>,
    pub calibration: Vec<(FeatureVector, f64)>,
    pub evaluation: Vec<(FeatureVector, f64)>,
}

/// Training data for both targets, a value the trainer owns while it fits.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ttft: TargetData,
    pub tpot: TargetData,
}

/// Where an added sample went, per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Train,
    Calibration,
    Evaluation,
}

/// The stratified window of both targets.
#[derive(Debug, Clone)]
pub struct Window {
    config: WindowConfig,
    seq: u64,
    ttft: TargetWindow,
    tpot: TargetWindow,
    physics: Option<VariantPhysics>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Window {
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            seq: 0,
            ttft: TargetWindow::default(),
            tpot: TargetWindow::default(),
            physics: None,
        }
    }

    /// The same window encoding rows with `physics`'s priors (see [`crate::Features::vector_with`]).
    pub fn with_physics(mut self, physics: Option<VariantPhysics>) -> Self {
        self.physics = physics;
        self
    }

    fn target_mut(&mut self, t: Target) -> &mut TargetWindow {
        match t {
            Target::Ttft => &mut self.ttft,
            Target::Tpot => &mut self.tpot,
        }
    }

    fn target(&self, t: Target) -> &TargetWindow {
        match t {
            Target::Ttft => &self.ttft,
            Target::Tpot => &self.tpot,
        }
    }

    /// Adds one sample at time `now_s`; returns where each of its targets went.
    pub fn add(&mut self, s: &Sample, now_s: f64) -> [Option<Placement>; 2] {
        self.seq += 1;
        let h = splitmix(self.seq);
        let held = h % 100 < self.config.held_out_percent;
        let placement = if !held {
            Placement::Train
        } else if (h >> 32) & 1 == 0 {
            Placement::Calibration
        } else {
            Placement::Evaluation
        };
        let key = bucket_of(s);
        let x = s.features.vector_with(self.physics.as_ref());
        let cfg = self.config;
        let mut out = [None, None];
        for (i, t) in Target::ALL.into_iter().enumerate() {
            let Some(y) = s.target(t) else { continue };
            let row = Row { x, y, at_s: now_s };
            let w = self.target_mut(t);
            match placement {
                Placement::Train => {
                    let b = w.buckets.entry(key).or_default();
                    b.push_back(row);
                    w.train_rows += 1;
                    if b.len() > cfg.per_bucket.max(1) {
                        b.pop_front();
                        w.train_rows -= 1;
                    }
                }
                Placement::Calibration | Placement::Evaluation => {
                    let q = if placement == Placement::Calibration {
                        &mut w.calibration
                    } else {
                        &mut w.evaluation
                    };
                    q.push_back(row);
                    if q.len() > cfg.held_out_cap.max(2) / 2 {
                        q.pop_front();
                    }
                }
            }
            out[i] = Some(placement);
        }
        out
    }

    /// Drops rows past `max_age_s`, keeping each bucket's newest `keep_per_bucket`.
    pub fn evict_stale(&mut self, now_s: f64) {
        let cfg = self.config;
        for t in Target::ALL {
            let w = self.target_mut(t);
            let mut removed = 0;
            for b in w.buckets.values_mut() {
                while b.len() > cfg.keep_per_bucket
                    && b.front().is_some_and(|r| now_s - r.at_s > cfg.max_age_s)
                {
                    b.pop_front();
                    removed += 1;
                }
            }
            w.buckets.retain(|_, b| !b.is_empty());
            w.train_rows -= removed;
        }
    }

    /// Training rows of a target.
    pub fn train_rows(&self, t: Target) -> usize {
        self.target(t).train_rows
    }

    /// Held-out rows of a target.
    pub fn held_out_rows(&self, t: Target) -> usize {
        let w = self.target(t);
        w.calibration.len() + w.evaluation.len()
    }

    /// Rows per bucket of a target (for /status and metrics).
    pub fn bucket_counts(&self, t: Target) -> Vec<(BucketKey, usize)> {
        let mut v: Vec<_> = self
            .target(t)
            .buckets
            .iter()
            .map(|(k, b)| (*k, b.len()))
            .collect();
        v.sort();
        v
    }

    /// Copies the rows out for fitting.
    pub fn snapshot(&self) -> Snapshot {
        let take = |w: &TargetWindow| {
            let mut train: Vec<(FeatureVector, f64)> = Vec::with_capacity(w.train_rows);
            // Deterministic order regardless of hash-map iteration.
            let mut keys: Vec<&BucketKey> = w.buckets.keys().collect();
            keys.sort();
            for k in keys {
                if let Some(b) = w.buckets.get(k) {
                    train.extend(b.iter().map(|r| (r.x, r.y)));
                }
            }
            TargetData {
                train,
                calibration: w.calibration.iter().map(|r| (r.x, r.y)).collect(),
                evaluation: w.evaluation.iter().map(|r| (r.x, r.y)).collect(),
            }
        };
        Snapshot {
            ttft: take(&self.ttft),
            tpot: take(&self.tpot),
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.ttft = TargetWindow::default();
        self.tpot = TargetWindow::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;

    fn sample(waiting: u32, kv: f64, ttft: f64) -> Sample {
        Sample {
            features: Features {
                num_request_waiting: waiting,
                kv_cache_percentage: kv,
                input_token_length: 100,
                ..Default::default()
            },
            ttft_ms: Some(ttft),
            tpot_ms: None,
        }
    }

    #[test]
    fn a_flood_of_one_regime_does_not_evict_another() {
        let mut w = Window::new(WindowConfig {
            per_bucket: 50,
            held_out_percent: 0,
            ..Default::default()
        });
        for _ in 0..30 {
            w.add(&sample(20, 0.9, 500.0), 0.0);
        }
        for _ in 0..10_000 {
            w.add(&sample(0, 0.1, 20.0), 1.0);
        }
        let counts = w.bucket_counts(Target::Ttft);
        assert_eq!(counts.len(), 2);
        assert!(counts.iter().any(|(k, n)| k.0 == 4 && *n == 30));
        assert_eq!(w.train_rows(Target::Ttft), 80);
        assert_eq!(w.train_rows(Target::Tpot), 0);
    }

    #[test]
    fn held_out_share_is_close_to_the_configured_percent() {
        let mut w = Window::new(WindowConfig {
            per_bucket: 100_000,
            held_out_cap: 100_000,
            ..Default::default()
        });
        for i in 0..10_000 {
            w.add(&sample(0, (i % 10) as f64 / 10.0, 10.0), 0.0);
        }
        let held = w.held_out_rows(Target::Ttft);
        assert!((1700..2300).contains(&held), "{held}");
        let snap = w.snapshot();
        assert_eq!(snap.ttft.train.len() + held, 10_000);
        assert!(snap.ttft.calibration.len() > 700 && snap.ttft.evaluation.len() > 700);
    }

    #[test]
    fn stale_rows_age_out_but_each_bucket_keeps_its_newest() {
        let mut w = Window::new(WindowConfig {
            per_bucket: 100,
            held_out_percent: 0,
            max_age_s: 10.0,
            keep_per_bucket: 5,
            ..Default::default()
        });
        for i in 0..50 {
            w.add(&sample(0, 0.1, 10.0), i as f64 * 0.1);
        }
        w.evict_stale(100.0);
        assert_eq!(w.train_rows(Target::Ttft), 5);
    }
}
