//! Workload transforms: reshaping a trace or generated workload before replay.
//!
//! * [`compress_time`] changes the rate by squeezing (or stretching) the time axis: every
//!   arrival time is divided by the factor, so the same requests arrive `factor` times faster
//!   over a span `factor` times shorter. Burst structure is kept, just faster.
//! * [`thin_or_replicate`] changes the rate without changing the span: each request is kept
//!   `floor(factor)` times plus once more with probability `frac(factor)`, extra copies landing
//!   at random times before the next arrival.
//! * [`apply_envelope`] thins a trace so its rate follows an [`Envelope`]: this is how a flat
//!   one-hour trace is replayed "under a daily envelope" (e.g. a 10:1 day compressed into the
//!   hour with `period_s: 3600`).
//! * [`repeat`] plays a workload several times in a row (each copy a new set of users: its own
//!   hash ids), so that a one-hour trace can fill a whole day under a daily envelope with a
//!   24-hour period instead of a day squeezed into the hour.
//! * [`truncate`] and [`window`] cut a time range out.
//!
//! Every transform returns requests sorted by arrival with ids renumbered `0..n`, and is
//! deterministic given its seed.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::generate::{Envelope, GenerateError};
use super::{RequestSpec, Workload};

/// A transform argument that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// A scale factor is not finite and positive.
    #[error("{what} factor must be finite and > 0, got {value}")]
    InvalidFactor {
        /// Which factor (`compress_time`, `thin_or_replicate`).
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A time bound is unusable.
    #[error("{what}: {reason}")]
    InvalidTime {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The envelope is invalid.
    #[error(transparent)]
    Envelope(#[from] GenerateError),
    /// The result would hold more requests than the generator limit allows.
    #[error("result would hold about {expected:.0} requests, more than the limit of {limit}")]
    TooManyRequests {
        /// Expected number of requests.
        expected: f64,
        /// The limit ([`super::generate::MAX_GENERATED_REQUESTS`]).
        limit: u64,
    },
}

fn check_factor(what: &'static str, value: f64) -> Result<(), TransformError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(TransformError::InvalidFactor { what, value })
    }
}

/// Stable-sorts by arrival and renumbers ids `0..n`.
fn finish(mut requests: Vec<RequestSpec>, name: String, hash_block_tokens: u32) -> Workload {
    requests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    for (r, id) in requests.iter_mut().zip(0u64..) {
        r.id = id;
    }
    Workload {
        name,
        hash_block_tokens,
        requests,
    }
}

/// Multiplies the arrival rate by `factor` by compressing time: arrival times are divided by
/// `factor` (`factor > 1` speeds the workload up, `< 1` slows it down). Lengths and order are
/// unchanged.
pub fn compress_time(workload: Workload, factor: f64) -> Result<Workload, TransformError> {
    check_factor("compress_time", factor)?;
    let Workload {
        name,
        hash_block_tokens,
        mut requests,
    } = workload;
    for r in &mut requests {
        r.arrival_s /= factor;
    }
    Ok(finish(
        requests,
        format!("{name} | time compressed x{factor}"),
        hash_block_tokens,
    ))
}

/// SplitMix64 finaliser: derives fresh hash ids for replicated requests.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Gives a copied request's prompt blocks fresh hash ids under `salt`, so that the copy is
/// another user's request (no prefix-cache hits on the original's blocks), while blocks the
/// original shared with other requests stay shared among copies of the same salt.
fn as_other_users(hash_ids: &mut [u64], salt: u64) {
    for h in hash_ids {
        *h = mix(*h ^ salt);
    }
}

/// Multiplies the arrival rate by `factor` while keeping the time span: each request appears
/// `floor(factor)` times, plus once more with probability `factor - floor(factor)` (so
/// `factor < 1` thins at random). The first copy keeps the original arrival time; further
/// copies are placed uniformly between it and the next original arrival (the mean gap after
/// the last one), which keeps the rate's shape over time without stacking exact duplicates.
///
/// Extra copies model additional users of the same service: their hash ids are remapped into a
/// separate id space per copy (keeping the sharing pattern within each copy, not across copies),
/// so replication does not inflate prefix-cache hit rates.
pub fn thin_or_replicate(
    workload: Workload,
    factor: f64,
    seed: u64,
) -> Result<Workload, TransformError> {
    check_factor("thin_or_replicate", factor)?;
    let expected = factor * workload.requests.len() as f64;
    let limit = super::generate::MAX_GENERATED_REQUESTS;
    if expected > limit as f64 {
        return Err(TransformError::TooManyRequests { expected, limit });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let whole = factor.floor();
    let frac = factor - whole;
    let whole = whole as u64;
    let n = workload.requests.len();
    let mean_gap = if n > 0 {
        workload.duration_s() / n as f64
    } else {
        0.0
    };
    let mut out = Vec::with_capacity(expected.ceil() as usize + 1);
    for (i, r) in workload.requests.iter().enumerate() {
        let copies = whole + u64::from(frac > 0.0 && rng.random::<f64>() < frac);
        let next = workload
            .requests
            .get(i + 1)
            .map_or(r.arrival_s + mean_gap, |n| n.arrival_s);
        for c in 0..copies {
            let mut copy = r.clone();
            if c > 0 {
                copy.arrival_s = r.arrival_s + rng.random::<f64>() * (next - r.arrival_s);
                as_other_users(&mut copy.hash_ids, mix(c));
            }
            out.push(copy);
        }
    }
    Ok(finish(
        out,
        format!("{} | rate x{factor} (seed {seed})", workload.name),
        workload.hash_block_tokens,
    ))
}

/// Thins a workload so its rate follows `envelope`: a request at time `t` is kept with
/// probability `m(t) / max m`. The result's rate is the original's times `m(t)/max m`, so its
/// peak matches the original rate (a daily envelope with ratio `r` keeps on average a fraction
/// `(r+1)/(2r)` of a flat trace over whole periods). Follow with [`thin_or_replicate`] to restore
/// a chosen mean rate.
pub fn apply_envelope(
    workload: Workload,
    envelope: &Envelope,
    seed: u64,
) -> Result<Workload, TransformError> {
    envelope.validate()?;
    let max = envelope.max_multiplier();
    if !(max.is_finite() && max > 0.0) {
        return Err(TransformError::InvalidTime {
            what: "apply_envelope",
            reason: format!("envelope's largest multiplier must be > 0, got {max}"),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let Workload {
        name,
        hash_block_tokens,
        requests,
    } = workload;
    let kept: Vec<RequestSpec> = requests
        .into_iter()
        .filter(|r| rng.random::<f64>() * max < envelope.multiplier(r.arrival_s))
        .collect();
    Ok(finish(
        kept,
        format!("{name} | envelope {envelope} (seed {seed})"),
        hash_block_tokens,
    ))
}

/// Plays `workload` `times` times in a row: copy `c` arrives `c` spans later, where the span is
/// the workload's duration plus its mean gap between arrivals (so the seam looks like any other
/// gap). Copies after the first get fresh hash ids, as [`thin_or_replicate`]'s extra copies do:
/// the same traffic pattern from other users, so repetition does not inflate prefix-cache hits.
pub fn repeat(workload: Workload, times: u32) -> Result<Workload, TransformError> {
    if times == 0 {
        return Err(TransformError::InvalidFactor {
            what: "repeat",
            value: 0.0,
        });
    }
    let expected = f64::from(times) * workload.requests.len() as f64;
    let limit = super::generate::MAX_GENERATED_REQUESTS;
    if expected > limit as f64 {
        return Err(TransformError::TooManyRequests { expected, limit });
    }
    let n = workload.requests.len();
    let span = if n > 0 {
        workload.duration_s() * (1.0 + 1.0 / n as f64)
    } else {
        0.0
    };
    if times > 1 && n > 0 && span <= 0.0 {
        return Err(TransformError::InvalidTime {
            what: "repeat",
            reason: "every request arrives at 0 s: the copies would all arrive at once".into(),
        });
    }
    let mut out = Vec::with_capacity(expected as usize);
    for c in 0..u64::from(times) {
        let salt = mix(c.wrapping_add(0x5eed_0000_0000));
        for r in &workload.requests {
            let mut copy = r.clone();
            if c > 0 {
                copy.arrival_s += c as f64 * span;
                as_other_users(&mut copy.hash_ids, salt);
            }
            out.push(copy);
        }
    }
    Ok(finish(
        out,
        format!("{} | repeated x{times}", workload.name),
        workload.hash_block_tokens,
    ))
}

/// Keeps the requests arriving before `max_duration_s`.
pub fn truncate(workload: Workload, max_duration_s: f64) -> Result<Workload, TransformError> {
    if !(max_duration_s.is_finite() && max_duration_s > 0.0) {
        return Err(TransformError::InvalidTime {
            what: "truncate max_duration_s",
            reason: format!("must be finite and > 0, got {max_duration_s}"),
        });
    }
    let Workload {
        name,
        hash_block_tokens,
        mut requests,
    } = workload;
    requests.retain(|r| r.arrival_s < max_duration_s);
    Ok(finish(
        requests,
        format!("{name} | first {max_duration_s} s"),
        hash_block_tokens,
    ))
}

/// Keeps the requests arriving in `[start_s, end_s)` and shifts them so `start_s` becomes 0.
pub fn window(workload: Workload, start_s: f64, end_s: f64) -> Result<Workload, TransformError> {
    if !(start_s.is_finite() && start_s >= 0.0) {
        return Err(TransformError::InvalidTime {
            what: "window start_s",
            reason: format!("must be finite and >= 0, got {start_s}"),
        });
    }
    if !(end_s.is_finite() && end_s > start_s) {
        return Err(TransformError::InvalidTime {
            what: "window end_s",
            reason: format!("must be finite and > start_s ({start_s}), got {end_s}"),
        });
    }
    let Workload {
        name,
        hash_block_tokens,
        mut requests,
    } = workload;
    requests.retain(|r| r.arrival_s >= start_s && r.arrival_s < end_s);
    for r in &mut requests {
        r.arrival_s -= start_s;
    }
    Ok(finish(
        requests,
        format!("{name} | window [{start_s}, {end_s}) s"),
        hash_block_tokens,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::workload::generate::{ArrivalProcess, GeneratorSpec, LengthProfile};

    fn flat(rate: f64, duration_s: f64) -> Workload {
        GeneratorSpec {
            rate,
            duration_s,
            arrival: ArrivalProcess::Poisson,
            envelope: Envelope::Constant,
            lengths: LengthProfile::AzureConv,
            prefix: None,
            seed: 11,
        }
        .generate()
        .unwrap()
    }

    #[test]
    fn repeat_plays_the_trace_again_after_its_span_with_other_users() {
        let w = tiny();
        let span = w.duration_s() * (1.0 + 1.0 / w.requests.len() as f64);
        let r = repeat(w.clone(), 3).unwrap();
        check_order_and_ids(&r);
        assert_eq!(r.requests.len(), 3 * w.requests.len());
        for (c, chunk) in r.requests.chunks(w.requests.len()).enumerate() {
            for (a, b) in chunk.iter().zip(&w.requests) {
                assert!((a.arrival_s - (b.arrival_s + c as f64 * span)).abs() < 1e-9);
                assert_eq!(
                    (a.input_tokens, a.output_tokens),
                    (b.input_tokens, b.output_tokens)
                );
                assert_eq!(a.hash_ids.len(), b.hash_ids.len());
                if c == 0 {
                    assert_eq!(a.hash_ids, b.hash_ids);
                } else if !b.hash_ids.is_empty() {
                    assert_ne!(
                        a.hash_ids, b.hash_ids,
                        "copy {c} shares the first copy's ids"
                    );
                }
            }
        }
        assert!(matches!(
            repeat(w.clone(), 0),
            Err(TransformError::InvalidFactor { what: "repeat", .. })
        ));
        // A workload with no span cannot be laid end to end: refused, not stacked at 0 s.
        let mut at_once = w;
        for r in &mut at_once.requests {
            r.arrival_s = 0.0;
        }
        assert!(matches!(
            repeat(at_once.clone(), 2),
            Err(TransformError::InvalidTime { what: "repeat", .. })
        ));
        assert_eq!(repeat(at_once, 1).unwrap().requests.len(), 10);
    }

    fn check_order_and_ids(w: &Workload) {
        assert!(
            w.requests
                .windows(2)
                .all(|p| p[0].arrival_s <= p[1].arrival_s)
        );
        assert!(w.requests.iter().zip(0u64..).all(|(r, i)| r.id == i));
    }

    fn tiny() -> Workload {
        let requests = (0..10u32)
            .map(|i| RequestSpec {
                id: u64::from(i),
                arrival_s: f64::from(i),
                input_tokens: 100 + i,
                output_tokens: 10,
                hash_ids: vec![0, 1, u64::from(i) + 2],
            })
            .collect();
        Workload {
            name: "tiny".into(),
            hash_block_tokens: 512,
            requests,
        }
    }

    #[test]
    fn compress_time_scales_rate_and_span() {
        let w = flat(5.0, 1000.0);
        let n = w.requests.len();
        let (rate, span) = (w.mean_rate(), w.duration_s());
        let c = compress_time(w.clone(), 4.0).unwrap();
        assert_eq!(c.requests.len(), n);
        assert!((c.duration_s() - span / 4.0).abs() < 1e-9);
        assert!((c.mean_rate() / rate - 4.0).abs() < 1e-9);
        assert_eq!(c.requests[7].input_tokens, w.requests[7].input_tokens);
        check_order_and_ids(&c);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = compress_time(w.clone(), bad).unwrap_err();
            assert!(matches!(e, TransformError::InvalidFactor { .. }), "{bad}");
        }
    }

    #[test]
    fn thin_or_replicate_changes_count_not_span() {
        let w = flat(20.0, 1000.0);
        let n = w.requests.len() as f64;
        for factor in [0.3, 1.0, 2.5] {
            let t = thin_or_replicate(w.clone(), factor, 5).unwrap();
            let got = t.requests.len() as f64 / n;
            assert!((got / factor - 1.0).abs() < 0.03, "{factor}: {got}");
            assert!(t.duration_s() <= w.duration_s() + 1.0);
            assert!(t.duration_s() > 0.95 * w.duration_s());
            check_order_and_ids(&t);
        }
        assert_eq!(
            thin_or_replicate(w.clone(), 1.0, 5).unwrap().requests,
            w.requests
        );
        assert_eq!(
            thin_or_replicate(w.clone(), 1.7, 9).unwrap(),
            thin_or_replicate(w.clone(), 1.7, 9).unwrap()
        );
        assert!(thin_or_replicate(w, -2.0, 0).is_err());
    }

    #[test]
    fn replicas_get_their_own_hash_ids() {
        let t = thin_or_replicate(tiny(), 2.0, 1).unwrap();
        assert_eq!(t.requests.len(), 20);
        let originals: Vec<&RequestSpec> =
            t.requests.iter().filter(|r| r.hash_ids[0] == 0).collect();
        assert_eq!(originals.len(), 10);
        let copies: Vec<&RequestSpec> = t.requests.iter().filter(|r| r.hash_ids[0] != 0).collect();
        // Copies share their common prefix among themselves but not with the originals.
        assert!(
            copies
                .iter()
                .all(|r| r.hash_ids[..2] == copies[0].hash_ids[..2])
        );
        assert!(copies.iter().all(|r| !r.hash_ids.contains(&0)));
    }

    #[test]
    fn envelope_shapes_a_flat_trace() {
        let period = 1000.0;
        let w = flat(20.0, 10.0 * period);
        let n = w.requests.len() as f64;
        let env = Envelope::Daily {
            peak_to_trough: 4.0,
            period_s: period,
            phase: 0.0,
        };
        let e = apply_envelope(w, &env, 3).unwrap();
        check_order_and_ids(&e);
        // Mean kept fraction over whole periods is 1/(1+a) = 1/1.6.
        let kept = e.requests.len() as f64 / n;
        assert!((kept * 1.6 - 1.0).abs() < 0.03, "kept {kept}");
        let mut bins = [0u32; 10];
        for r in &e.requests {
            bins[(((r.arrival_s / period).fract() * 10.0) as usize).min(9)] += 1;
        }
        // Trough at phase 0 (bins 9 and 0), peak half a period later (bins 4 and 5).
        let ratio = f64::from(bins[4] + bins[5]) / f64::from(bins[9] + bins[0]);
        assert!((3.3..4.5).contains(&ratio), "ratio {ratio}, {bins:?}");
        let steps_zero = Envelope::Steps(vec![(0.0, 0.0)]);
        assert!(apply_envelope(tiny(), &steps_zero, 0).is_err());
        let bad = Envelope::Daily {
            peak_to_trough: 0.1,
            period_s: 1.0,
            phase: 0.0,
        };
        assert!(matches!(
            apply_envelope(tiny(), &bad, 0),
            Err(TransformError::Envelope(_))
        ));
    }

    #[test]
    fn truncate_and_window() {
        let t = truncate(tiny(), 4.5).unwrap();
        assert_eq!(t.requests.len(), 5);
        assert_eq!(t.duration_s(), 4.0);
        let w = window(tiny(), 3.0, 7.0).unwrap();
        let times: Vec<f64> = w.requests.iter().map(|r| r.arrival_s).collect();
        assert_eq!(times, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(w.requests[0].input_tokens, 103);
        check_order_and_ids(&w);
        assert!(truncate(tiny(), 0.0).is_err());
        assert!(truncate(tiny(), f64::NAN).is_err());
        assert!(window(tiny(), 5.0, 5.0).is_err());
        assert!(window(tiny(), -1.0, 5.0).is_err());
        assert!(window(tiny(), 1.0, f64::INFINITY).is_err());
        assert!(window(tiny(), 100.0, 200.0).unwrap().requests.is_empty());
    }
}
