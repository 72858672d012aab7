//! goodput-autoscaler: decides how many replicas of each variant a model needs.
//!
//! Data flow: [`metrics`] reads vLLM's metrics from Prometheus (every PromQL query goodput uses
//! lives there) into typed per-variant observations (`goodput_core::VariantLoad`); the decision
//! engine (forecasting and the optimiser) turns those into replica targets; actuation exports
//! them for HPA/KEDA or patches `/scale`.

pub mod metrics;
