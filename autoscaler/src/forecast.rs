//! Load estimation and forecasting.
//!
//! [`estimate`] folds the per-variant observations (`VariantLoad`, what PromQL over vLLM's
//! metrics shows) into one model-wide [`LoadEstimate`]: the arrival rate (finished requests per
//! second plus the backlog to drain), rate-weighted mean and p90 prompt/output lengths and prefix
//! hit rate, and whether the data is fresh. [`Forecaster`] keeps a Holt linear trend over those
//! estimates and predicts the rate one horizon ahead (the replica start-up time plus a decision
//! interval), learning the trend only after the first few observations, whose metric windows
//! are still filling, and counting it only where it moves the forecast by more than a deadband
//! (minute-scale swings are not a ramp); it remembers each forecast and, when its target time
//! comes, compares it with what was observed, tracking the relative error. The burst margin
//! added on top of the forecast is that error's RMS times `z`, bounded below by a floor.

use std::collections::VecDeque;

use crate::capacity::LoadShape;
use goodput_core::{Role, VariantLoad};

/// The model-wide load seen at one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadEstimate {
    /// Requests per second arriving (completions plus backlog drained over `backlog_drain_s`).
    pub rate: f64,
    pub shape: LoadShape,
    pub p90_input_tokens: Option<f64>,
    pub p90_output_tokens: Option<f64>,
    /// False when a variant with ready replicas has no data or stale data.
    pub fresh: bool,
}

/// Seconds over which a waiting backlog should be drained; it is counted as extra arrivals.
pub const BACKLOG_DRAIN_S: f64 = 60.0;

/// Folds per-variant loads (`None`: no data) with their ready replica counts into one estimate,
/// every variant serving whole requests. Data older than `stale_after_s` makes the estimate
/// not fresh.
pub fn estimate(loads: &[(Option<&VariantLoad>, u32)], stale_after_s: f64) -> LoadEstimate {
    let with_roles: Vec<_> = loads.iter().map(|&(l, r)| (l, r, Role::Unified)).collect();
    estimate_by_role(&with_roles, stale_after_s)
}

/// [`estimate`] where variants may serve one stage of disaggregated serving. Every request
/// passes a unified or a prefill variant once, so arrivals, the waiting backlog, prompt lengths
/// and prefix hits come from those; a prefill replica reports one output token per request,
/// so output lengths come from unified and decode variants. (Counting the decode stage's
/// finished requests too would see every disaggregated request twice.)
pub fn estimate_by_role(
    loads: &[(Option<&VariantLoad>, u32, Role)],
    stale_after_s: f64,
) -> LoadEstimate {
    let mut rate = 0.0;
    let mut waiting = 0.0;
    let (mut wi, mut wh, mut w) = (0.0, 0.0, 0.0);
    let (mut wo, mut w_out) = (0.0, 0.0);
    let (mut p90i, mut p90o): (Option<f64>, Option<f64>) = (None, None);
    let mut fresh = true;
    for (load, ready, role) in loads {
        let entry = *role != Role::Decode;
        let emits_output = *role != Role::Prefill;
        match load {
            None => {
                if *ready > 0 {
                    fresh = false;
                }
            }
            Some(l) => {
                if l.age_s > stale_after_s && *ready > 0 {
                    fresh = false;
                }
                let r = l.request_rate.max(0.0);
                if entry {
                    rate += r;
                    waiting += l.waiting.max(0.0);
                    if r > 0.0 && l.mean_prompt_tokens > 0.0 {
                        wi += r * l.mean_prompt_tokens;
                        wh += r * l.prefix_hit_rate.clamp(0.0, 1.0);
                        w += r;
                    }
                    if let Some(p) = l.p90_prompt_tokens {
                        p90i = Some(p90i.map_or(p, |q| q.max(p)));
                    }
                }
                if emits_output {
                    if r > 0.0 && l.mean_prompt_tokens > 0.0 {
                        wo += r * l.mean_output_tokens.max(1.0);
                        w_out += r;
                    }
                    if let Some(p) = l.p90_output_tokens {
                        p90o = Some(p90o.map_or(p, |q| q.max(p)));
                    }
                }
            }
        }
    }
    let shape = if w > 0.0 {
        LoadShape {
            mean_input_tokens: wi / w,
            mean_output_tokens: if w_out > 0.0 { wo / w_out } else { 0.0 },
            prefix_hit_rate: wh / w,
        }
    } else {
        LoadShape {
            mean_input_tokens: 0.0,
            mean_output_tokens: 0.0,
            prefix_hit_rate: 0.0,
        }
    };
    LoadEstimate {
        rate: rate + waiting / BACKLOG_DRAIN_S,
        shape,
        p90_input_tokens: p90i,
        p90_output_tokens: p90o,
        fresh,
    }
}

/// Tuning of the forecaster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastConfig {
    /// Holt smoothing of the level and of the trend (per observation).
    pub alpha: f64,
    pub beta: f64,
    /// Margin = max(floor, z x RMS relative forecast error).
    pub z: f64,
    pub margin_floor: f64,
    pub margin_cap: f64,
    /// Smallest change over the horizon, as a share of the level, for which the trend counts;
    /// a smaller trend is left out of the forecast. A slope fitted to the minute-scale swings
    /// of smooth traffic (azure-conv) predicts changes of 10-25 % that do not come, and each
    /// sets the fleet for a whole stabilisation window; a rise out of a lull or a fast climb of
    /// code traffic predicts more and keeps its whole trend. (Holt's trend lags a steady ramp,
    /// so a daily envelope's slow ramp is left to the level and to the margin.)
    pub trend_deadband: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            beta: 0.1,
            z: 1.0,
            margin_floor: 0.1,
            margin_cap: 1.0,
            trend_deadband: 0.3,
        }
    }
}

/// One forecast: the rate to provision for at the horizon, and the parts it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Trend forecast at the horizon, requests per second.
    pub rate: f64,
    /// Relative burst margin applied on top.
    pub margin: f64,
    /// `rate * (1 + margin)`, never below the current level.
    pub provision_rate: f64,
}

/// Holt linear trend over the observed rate, with its own forecast error tracking.
#[derive(Debug, Clone)]
pub struct Forecaster {
    cfg: ForecastConfig,
    level: Option<f64>,
    /// Requests per second per second.
    trend: f64,
    last_t: f64,
    /// Forecasts waiting for their target time: (target time, predicted rate).
    pending: VecDeque<(f64, f64)>,
    /// Exponentially weighted mean squared relative error.
    mse: f64,
    scored: u32,
    seen: u32,
    /// Rates observed so far.
    observations: u32,
}

/// Forecasts not scored at the start (the level starts from one observation).
const WARMUP_FORECASTS: u32 = 5;

/// Observations before the trend is learned. The first rates come from metric windows that
/// are still filling (a fleet that just started, a controller that just came up), so they rise
/// whatever the load does; a trend learned from them would scale up for a ramp that is not
/// there.
const TREND_WARMUP: u32 = 3;

impl Forecaster {
    pub fn new(cfg: ForecastConfig) -> Self {
        Self {
            cfg,
            level: None,
            trend: 0.0,
            last_t: 0.0,
            pending: VecDeque::new(),
            mse: 0.0,
            scored: 0,
            seen: 0,
            observations: 0,
        }
    }

    /// RMS relative error of past forecasts (0 before any was scored).
    pub fn rms_error(&self) -> f64 {
        self.mse.sqrt()
    }

    /// Forecasts scored so far.
    pub fn scored(&self) -> u32 {
        self.scored
    }

    /// Feeds the rate observed at `now_s` and forecasts `horizon_s` ahead.
    pub fn observe(&mut self, now_s: f64, rate: f64, horizon_s: f64) -> Forecast {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        // Score forecasts whose time has come.
        while let Some(&(t, predicted)) = self.pending.front() {
            if t > now_s {
                break;
            }
            self.pending.pop_front();
            let denom = rate.max(predicted).max(0.1);
            let e = (rate - predicted) / denom;
            self.seen += 1;
            if self.seen <= WARMUP_FORECASTS {
                // Forecasts made while the level was still settling say little about its error.
                continue;
            }
            self.mse = if self.scored == 0 {
                e * e
            } else {
                0.9 * self.mse + 0.1 * e * e
            };
            self.scored += 1;
        }
        self.observations = self.observations.saturating_add(1);
        match self.level {
            None => {
                self.level = Some(rate);
                self.trend = 0.0;
            }
            Some(level) => {
                let dt = (now_s - self.last_t).max(1e-6);
                let predicted = level + self.trend * dt;
                let new_level = self.cfg.alpha * rate + (1.0 - self.cfg.alpha) * predicted;
                let slope = (new_level - level) / dt;
                if self.observations > TREND_WARMUP {
                    self.trend = self.cfg.beta * slope + (1.0 - self.cfg.beta) * self.trend;
                }
                self.level = Some(new_level.max(0.0));
            }
        }
        self.last_t = now_s;
        let level = self.level.unwrap_or(rate);
        let change = self.trend * horizon_s;
        let change = if change.abs() < self.cfg.trend_deadband * level {
            0.0
        } else {
            change
        };
        // The trend may move the level by at most half of it over one horizon.
        let ahead = (level + change).max(0.5 * level).min(1.5 * level);
        self.pending.push_back((now_s + horizon_s, ahead));
        let margin =
            (self.cfg.z * self.rms_error()).clamp(self.cfg.margin_floor, self.cfg.margin_cap);
        Forecast {
            rate: ahead,
            margin,
            provision_rate: (ahead * (1.0 + margin)).max(rate).max(level),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_extrapolates_a_ramp_and_scores_errors() {
        // Holt's trend alone, without the deadband.
        let mut f = Forecaster::new(ForecastConfig {
            trend_deadband: 0.0,
            ..ForecastConfig::default()
        });
        let mut last = None;
        let rate = |t: f64| 1.0 + 0.01 * t;
        for i in 0..40 {
            let t = i as f64 * 30.0;
            last = Some(f.observe(t, rate(t), 270.0));
        }
        let Some(fc) = last else {
            panic!("no forecast")
        };
        // At t = 1170 the rate is 12.7; 270 s later it will be 15.4.
        assert!(fc.rate > 14.0 && fc.rate < 16.5, "{fc:?}");
        assert!(f.scored() > 15);
        assert!(f.rms_error() < 0.2, "{}", f.rms_error());
    }

    #[test]
    fn a_sharp_rise_keeps_its_trend() {
        // Quiet at 2 req/s, then traffic returns at 4 req/s more every 30 s.
        let mut f = Forecaster::new(ForecastConfig::default());
        let mut fc = f.observe(0.0, 2.0, 270.0);
        for i in 1..20 {
            fc = f.observe(i as f64 * 30.0, 2.0, 270.0);
        }
        assert!((fc.rate - 2.0).abs() < 1e-6, "{fc:?}");
        for (i, rate) in [6.0, 10.0, 14.0].into_iter().enumerate() {
            fc = f.observe(600.0 + 30.0 * i as f64, rate, 270.0);
        }
        // The level lags the rise; the trend carries the forecast past the rate seen now.
        assert!(fc.rate > 14.0, "{fc:?}");
    }

    #[test]
    fn minute_scale_swings_are_not_extrapolated() {
        // Smooth traffic at 30 req/s swinging by 15 % over five minutes: a slope fitted to
        // each swing predicts a change that does not come.
        let rate = |t: f64| 30.0 * (1.0 + 0.15 * (t * std::f64::consts::TAU / 300.0).sin());
        let mean_deviation = |cfg: ForecastConfig| {
            let mut f = Forecaster::new(cfg);
            let mut sum = 0.0;
            for i in 0..200 {
                let t = i as f64 * 30.0;
                let fc = f.observe(t, rate(t), 270.0);
                if i >= 20 {
                    sum += (fc.rate - 30.0).abs() / 30.0;
                }
            }
            sum / 180.0
        };
        let with_deadband = mean_deviation(ForecastConfig::default());
        let without = mean_deviation(ForecastConfig {
            trend_deadband: 0.0,
            ..ForecastConfig::default()
        });
        // The level alone follows the swing (7 % off the mean on average); the extrapolated
        // slope doubles that.
        assert!(with_deadband < 0.1, "{with_deadband}");
        assert!(
            without > with_deadband * 1.5,
            "{without} vs {with_deadband}"
        );
    }

    #[test]
    fn the_rise_of_filling_metric_windows_is_not_a_trend() {
        // A 60 s rate window sampled every 30 s as the fleet comes up: half full, then full,
        // then the steady 30 req/s.
        let mut f = Forecaster::new(ForecastConfig::default());
        let mut fc = f.observe(30.0, 15.0, 270.0);
        for (i, rate) in [30.0, 30.0, 30.0].into_iter().enumerate() {
            fc = f.observe(60.0 + 30.0 * i as f64, rate, 270.0);
        }
        // Without the warm-up the 15 -> 30 step would be a trend of +0.1 req/s per second,
        // forecasting about 45 req/s at the horizon.
        assert!(fc.rate < 31.0, "{fc:?}");
    }

    #[test]
    fn stale_or_missing_data_is_not_fresh() {
        let l = VariantLoad {
            request_rate: 2.0,
            mean_prompt_tokens: 100.0,
            mean_output_tokens: 10.0,
            waiting: 6.0,
            age_s: 10.0,
            ..Default::default()
        };
        let e = estimate(&[(Some(&l), 1)], 120.0);
        assert!(e.fresh);
        assert!((e.rate - 2.1).abs() < 1e-9);
        assert!(!estimate(&[(Some(&l), 1), (None, 2)], 120.0).fresh);
        let old = VariantLoad { age_s: 500.0, ..l };
        assert!(!estimate(&[(Some(&old), 1)], 120.0).fresh);
    }

    #[test]
    fn disaggregated_requests_count_once_with_the_decode_stage_lengths() {
        // 4 req/s pass the prefill stage (one output token each, 6 waiting) and then the
        // decode stage (the real answers; its waiting requests were already counted).
        let prefill = VariantLoad {
            request_rate: 4.0,
            mean_prompt_tokens: 3000.0,
            mean_output_tokens: 1.0,
            prefix_hit_rate: 0.2,
            waiting: 6.0,
            ..Default::default()
        };
        let decode = VariantLoad {
            request_rate: 4.0,
            mean_prompt_tokens: 3000.0,
            mean_output_tokens: 500.0,
            waiting: 30.0,
            ..Default::default()
        };
        let e = estimate_by_role(
            &[
                (Some(&prefill), 2, Role::Prefill),
                (Some(&decode), 3, Role::Decode),
            ],
            120.0,
        );
        assert!((e.rate - 4.1).abs() < 1e-9, "{}", e.rate);
        assert_eq!(e.shape.mean_input_tokens, 3000.0);
        assert_eq!(e.shape.mean_output_tokens, 500.0);
        assert!((e.shape.prefix_hit_rate - 0.2).abs() < 1e-9);
        // Unified variants beside them add their own requests and lengths.
        let unified = VariantLoad {
            request_rate: 1.0,
            mean_prompt_tokens: 1000.0,
            mean_output_tokens: 100.0,
            ..Default::default()
        };
        let e = estimate_by_role(
            &[
                (Some(&prefill), 2, Role::Prefill),
                (Some(&decode), 3, Role::Decode),
                (Some(&unified), 1, Role::Unified),
            ],
            120.0,
        );
        assert!((e.rate - 5.1).abs() < 1e-9);
        assert!((e.shape.mean_input_tokens - 2600.0).abs() < 1e-9);
        assert!((e.shape.mean_output_tokens - 420.0).abs() < 1e-9);
    }
}
