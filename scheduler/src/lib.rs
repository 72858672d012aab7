//! goodput-scheduler: the SLO-aware endpoint picker goodput puts behind a gateway, in the role
//! of llm-d's endpoint picker (EPP) but with latency predictions made in-process.
//!
//! Data flow:
//! - [`request`]: body + headers -> [`request::RequestFeatures`] (token estimate, SLOs,
//!   sheddable, prompt text).
//! - [`prefix`]: prompt -> block-hash chain; per-endpoint LRU approximating vLLM's prefix cache.
//! - [`endpoint`]: one endpoint's state at the pick (scraped load + dispatched in flight).
//! - [`latency`]: per-variant `goodput_predictor::Predictor` (physics prior until fitted).
//! - [`pick`]: the [`pick::Picker`] interface and the baselines (round-robin,
//!   least-requests, llm-d's prefix+load); [`goodput`]: goodput's SLO-aware picker.
//! - [`sim`]: the same pickers as a `goodput_sim` router.
//! - [`metrics`]: the scheduler's Prometheus metrics.
//! - `server` (cargo feature `server`): Envoy ext_proc gRPC server, endpoint discovery and
//!   scraping, response-stream tracking and training feedback.
//!
//! Everything but `server` is pure: values in, decisions out.

pub mod endpoint;
pub mod goodput;
pub mod latency;
pub mod metrics;
pub mod pick;
pub mod prefix;
pub mod request;
pub mod sim;

#[cfg(feature = "server")]
pub mod server;

pub use endpoint::{EndpointView, Health};
pub use goodput::{GoodputConfig, GoodputPicker};
pub use latency::{LatencyModel, NoPredictions, Predicted, VariantPredictors};
pub use pick::{
    Decision, LeastRequests, Outcome, PickRequest, Picker, PrefixLoad, RoundRobin, Route,
};
pub use prefix::PrefixIndex;
pub use request::{RequestError, RequestFeatures};

/// A picker by name: `goodput`, `round-robin`, `least-requests` or `prefix-load`.
pub fn picker_for(name: &str) -> Option<Box<dyn Picker>> {
    Some(match name {
        "goodput" => Box::new(GoodputPicker::default()),
        "round-robin" => Box::new(RoundRobin::default()),
        "least-requests" => Box::new(LeastRequests::default()),
        "prefix-load" => Box::new(PrefixLoad::default()),
        _ => return None,
    })
}

/// Names [`picker_for`] accepts.
pub const PICKERS: [&str; 4] = ["goodput", "round-robin", "least-requests", "prefix-load"];
