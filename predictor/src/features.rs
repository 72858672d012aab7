//! What the predictor knows about an endpoint and a request at the moment of a pick, in llm-d's
//! vocabulary, and the engineered feature vector the models see.
//!
//! Data flow: a caller (the in-process scheduler, or the HTTP layer after validation) builds a
//! [`Features`] snapshot at dispatch; [`Features::vector`] turns it into a fixed-size
//! [`FeatureVector`] used for both training and prediction, so the two can never disagree on
//! encoding (one of the train/serve skews of llm-d's Python servers, which encode in two places).
//!
//! Skews fixed here, by construction:
//! - `num_tokens_generated` is 1 at prediction and 0 in training upstream: it is not a model input.
//! - `is_queued` duplicates `num_request_waiting`; it is kept only as a split hint for the trees.
//! - Token-in-flight inputs are used on every path (upstream `/predict` zero-fills them).
//! - Unknown `pod_type` labels get their own category instead of silently becoming "missing".

use serde::{Deserialize, Serialize};

use crate::physics::{VariantPhysics, known_ms};

/// The role label of an endpoint (`pod_type` in llm-d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PodType {
    /// `""`: prefill and decode on one pod.
    #[default]
    Monolithic,
    Prefill,
    Decode,
    /// Any other label value.
    Other,
}

impl PodType {
    /// Parses llm-d's label value; `None` and `""` mean monolithic.
    pub fn from_label(label: Option<&str>) -> Self {
        match label {
            None | Some("") => PodType::Monolithic,
            Some("prefill") => PodType::Prefill,
            Some("decode") => PodType::Decode,
            Some(_) => PodType::Other,
        }
    }

    /// Stable small code used as a (categorical) model input.
    pub fn code(self) -> u8 {
        match self {
            PodType::Monolithic => 0,
            PodType::Prefill => 1,
            PodType::Decode => 2,
            PodType::Other => 3,
        }
    }
}

/// One endpoint's state plus the request, as llm-d's predictor defines the row.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Features {
    /// KV-cache usage, a fraction 0..=1.
    pub kv_cache_percentage: f64,
    /// Prompt tokens of the request.
    pub input_token_length: u32,
    /// Requests waiting in the engine's queue.
    pub num_request_waiting: u32,
    /// Requests running on the engine.
    pub num_request_running: u32,
    /// Tokens already generated (accepted for compatibility; not a model input, see module docs).
    pub num_tokens_generated: u32,
    /// Fraction of the prompt expected to hit the prefix cache, 0..=1.
    pub prefix_cache_score: f64,
    pub pod_type: PodType,
    /// Uncached prompt tokens dispatched to the endpoint and not yet prefilled.
    pub prefill_tokens_in_flight: u64,
    /// Decode tokens in flight on the endpoint (0 when the caller does not know).
    pub decode_tokens_in_flight: u64,
    /// Milliseconds since the endpoint last streamed a token (any request's), as the gateway
    /// that carries the responses sees it; None when unknown. With requests running, the
    /// engine's steps run back to back, so this says how far the step in progress is: a new
    /// prompt waits for that step's end before its own prefill starts.
    #[serde(default)]
    pub ms_since_last_token: Option<f64>,
    /// Milliseconds since the oldest request dispatched to the endpoint and still waiting for
    /// its first token was dispatched; None when unknown or when there is none. After an idle
    /// spell the engine starts prefilling a prompt when it arrives, not when it last streamed a
    /// token: this says how far that prefill is.
    #[serde(default)]
    pub ms_since_oldest_prefill: Option<f64>,
}

/// Number of engineered features.
pub const N_FEATURES: usize = 19;

/// Names of the engineered features, in vector order (for metrics and docs).
pub const FEATURE_NAMES: [&str; N_FEATURES] = [
    "kv_cache_percentage",
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "prefix_cache_score",
    "effective_input_tokens",
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "pod_type",
    "is_queued",
    "prefill_work_ahead",
    "effective_input_x_running",
    "effective_input_squared_k",
    "kv_x_running",
    "prior_ttft_ms",
    "prior_tpot_ms",
    "prior_mixed_step_ms",
    "ms_since_last_token",
    "step_remaining_ms",
];

/// Indices of the step-phase features (`ms_since_last_token`, `step_remaining_ms`).
const STEP_PHASE_FEATURES: (usize, usize) = (17, 18);

/// Features a target's model does not see (held at 0 in training and prediction alike). The
/// step-phase features say when a new prompt's prefill can start, which is TTFT's business; to
/// a TPOT model they were one more proxy of load, learned from the training workloads' load
/// mix (unseen azure-conv TPOT MAPE 11.4 % with them, 10.5 % without).
pub const fn ignored_features(t: Target) -> &'static [usize] {
    match t {
        Target::Ttft => &[],
        Target::Tpot => &[STEP_PHASE_FEATURES.0, STEP_PHASE_FEATURES.1],
    }
}

/// Index of the physics prior of each target in the vector (0 there when no physics is known).
pub const fn prior_index(t: Target) -> usize {
    match t {
        Target::Ttft => 14,
        Target::Tpot => 15,
    }
}

/// The model inputs: raw features plus engineered ones.
pub type FeatureVector = [f64; N_FEATURES];

impl Features {
    /// The engineered feature vector (identical at training and prediction).
    ///
    /// Engineered terms follow the physics of a vLLM step: prefill cost grows with the uncached
    /// prompt (`effective_input_tokens`) and quadratically with it through attention; a new
    /// prompt waits behind the prefill work already queued (`prefill_work_ahead`); and it shares
    /// steps with the running decodes, whose cost grows with their count and KV footprint.
    ///
    /// Without the variant's physics the prior features are 0; see [`Features::vector_with`].
    #[inline]
    pub fn vector(&self) -> FeatureVector {
        self.vector_with(None)
    }

    /// The engineered vector with the physics priors of `physics` (when known) as the last
    /// three features: prior TTFT, prior TPOT and a mixed prefill+decode step, ms.
    #[inline]
    pub fn vector_with(&self, physics: Option<&VariantPhysics>) -> FeatureVector {
        let prior = physics.map(|p| p.prior(self)).unwrap_or_default();
        let kv = self.kv_cache_percentage;
        let input = self.input_token_length as f64;
        let waiting = self.num_request_waiting as f64;
        let running = self.num_request_running as f64;
        let prefix = self.prefix_cache_score.clamp(0.0, 1.0);
        let effective = (1.0 - prefix) * input;
        let in_flight = self.prefill_tokens_in_flight as f64;
        // Unknown is -1 (the trees split it off; never a real elapsed time).
        let since = known_ms(self.ms_since_last_token).unwrap_or(-1.0);
        // What is left of the step in progress, as the TTFT prior takes it.
        let remaining = prior.step_left_ms;
        [
            kv,
            input,
            waiting,
            running,
            prefix,
            effective,
            in_flight,
            self.decode_tokens_in_flight as f64,
            self.pod_type.code() as f64,
            if self.num_request_waiting > 0 {
                1.0
            } else {
                0.0
            },
            in_flight + effective,
            effective * (running + 1.0),
            effective * effective / 1e3,
            kv * running,
            prior.ttft_ms,
            prior.tpot_ms,
            prior.mixed_step_ms,
            since,
            remaining,
        ]
    }

    /// Checks ranges; the error names the offending field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let frac = |name: &'static str, x: f64| {
            if x.is_finite() && (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(FieldError::new(name, "must be a number between 0 and 1"))
            }
        };
        frac("kv_cache_percentage", self.kv_cache_percentage)?;
        frac("prefix_cache_score", self.prefix_cache_score)
    }
}

/// A field that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field, e.g. `requests[3].kv_cache_percentage`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error under a parent path (`requests[3]` + `.` + field).
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: self.message,
        }
    }
}

/// One observed request: the features at dispatch and the latencies that followed. A target of
/// `None` (or 0, as llm-d sends for "not measured") is not training data for that target.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    pub features: Features,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

impl Sample {
    /// A target value usable for training: finite and positive.
    pub fn target(&self, target: Target) -> Option<f64> {
        let v = match target {
            Target::Ttft => self.ttft_ms,
            Target::Tpot => self.tpot_ms,
        }?;
        (v.is_finite() && v > 0.0).then_some(v)
    }
}

/// The two latencies the predictor learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Time to first token.
    Ttft,
    /// Time per output token (mean inter-token latency).
    Tpot,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Ttft, Target::Tpot];

    /// Position in [`Target::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Target::Ttft => 0,
            Target::Tpot => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Ttft => "ttft",
            Target::Tpot => "tpot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_type_labels_map_to_categories() {
        assert_eq!(PodType::from_label(None), PodType::Monolithic);
        assert_eq!(PodType::from_label(Some("")), PodType::Monolithic);
        assert_eq!(PodType::from_label(Some("prefill")), PodType::Prefill);
        assert_eq!(PodType::from_label(Some("decode")), PodType::Decode);
        assert_eq!(PodType::from_label(Some("encode")), PodType::Other);
    }

    #[test]
    fn effective_input_discounts_the_cached_prefix() {
        let f = Features {
            input_token_length: 1000,
            prefix_cache_score: 0.75,
            prefill_tokens_in_flight: 500,
            ..Default::default()
        };
        let v = f.vector();
        assert_eq!(v[5], 250.0);
        assert_eq!(v[10], 750.0);
    }

    #[test]
    fn the_tpot_model_ignores_exactly_the_step_phase_features() {
        let names: Vec<&str> = ignored_features(Target::Tpot)
            .iter()
            .map(|&i| FEATURE_NAMES[i])
            .collect();
        assert_eq!(names, ["ms_since_last_token", "step_remaining_ms"]);
        assert!(ignored_features(Target::Ttft).is_empty());
        // Unknown is -1, and nothing remains of a step with no request running.
        let v = Features {
            num_request_running: 0,
            ms_since_last_token: Some(3.0),
            ..Default::default()
        }
        .vector();
        assert_eq!((v[17], v[18]), (3.0, 0.0));
        assert_eq!(Features::default().vector()[17], -1.0);
    }

    #[test]
    fn zero_and_missing_targets_are_not_training_data() {
        let s = Sample {
            ttft_ms: Some(0.0),
            tpot_ms: None,
            ..Default::default()
        };
        assert_eq!(s.target(Target::Ttft), None);
        assert_eq!(s.target(Target::Tpot), None);
        let s = Sample {
            ttft_ms: Some(12.5),
            ..s
        };
        assert_eq!(s.target(Target::Ttft), Some(12.5));
    }

    #[test]
    fn out_of_range_fractions_name_the_field() {
        let f = Features {
            kv_cache_percentage: 1.5,
            ..Default::default()
        };
        assert_eq!(f.validate().unwrap_err().field, "kv_cache_percentage");
        let f = Features {
            prefix_cache_score: f64::NAN,
            ..Default::default()
        };
        assert_eq!(f.validate().unwrap_err().field, "prefix_cache_score");
    }
}
