//! goodput-predictor: learns from observed requests how TTFT and time per output token depend on
//! an endpoint's state and the request, and how a variant's latency grows with load.
//!
//! Data flow:
//! - [`features`]: llm-d's predictor row ([`Features`]) and the engineered vector every model
//!   sees, built in one place for training and prediction.
//! - [`physics`]: a variant's engine physics turned into prior TTFT/TPOT features (the models
//!   learn the log-ratio actual/prior).
//! - [`window`]: the stratified training window with ageing and a held-out slice.
//! - [`gbdt`], [`linear`], [`model`]: the model families (gradient-boosted trees with Huber
//!   loss, elastic-net linear), selection per target by held-out MAPE, conformal quantiles, accuracy,
//!   and the training box outside which the physics prior answers alone.
//! - [`predictor`]: the online [`Predictor`]: versioned models swapped atomically, background
//!   retraining on a cadence and on drift; predictions never wait for training.
//! - [`online`]: each version's calibration from the labels that arrive after it was fitted
//!   (a median bias of the point, quantiles tracked to their coverage), until the next
//!   retraining.
//! - [`perf`]: the per-variant performance model for scaling (roofline prior from
//!   `goodput_core::perf`, corrected online from aggregate observations).
//! - [`metrics`]: the crate's own Prometheus metrics.
//! - `server` (cargo feature `server`): the HTTP API of llm-d's training and prediction servers.
//!
//! Everything but `server` and the trainer thread is pure: values in, values out.

pub mod features;
pub mod gbdt;
pub mod linear;
pub mod metrics;
pub mod model;
pub mod online;
pub mod perf;
pub mod physics;
pub mod predictor;
pub mod window;

pub use features::{Features, FieldError, PodType, Sample, Target};
pub use model::{Accuracy, Family, FitParams, Quantiles};
pub use online::{LiveAccuracy, OnlineConfig};
pub use physics::VariantPhysics;
pub use predictor::{
    ModelSet, Prediction, Predictor, PredictorConfig, RetrainReason, Served, Trainer,
};

#[cfg(feature = "server")]
pub mod server;
