//! goodput-autoscaler: decides how many replicas of each variant a model needs.
//!
//! Data flow: [`metrics`] reads vLLM's metrics from Prometheus (every PromQL query goodput uses
//! lives there) into typed per-variant observations (`goodput_core::VariantLoad`); the decision
//! engine turns those into replica targets: [`forecast`] estimates and forecasts the load,
//! [`capacity`] says what one replica sustains within the SLOs, [`optimizer`] picks the cheapest
//! mix, [`goodput`] adds the stability rules; [`baselines`] are the peers' policies, [`adapter`]
//! plugs all of them into the simulator, and [`compare`] runs them side by side. Actuation
//! exports the targets for HPA/KEDA or patches `/scale`.
//!
//! Behind the feature `controller` (kube, tonic, axum): `crd` (the custom resources and their
//! conversion to the engine's inputs), `controller` (the pure reconcile and the kube-runtime
//! Controller around it), `actuation` (KEDA external scaler, `/scale`), `export` (the goodput_*
//! metrics) and `advise` (the same decision from a real Prometheus, without a cluster).

#[cfg(feature = "controller")]
pub mod actuation;
pub mod adapter;
#[cfg(feature = "controller")]
pub mod advise;
pub mod baselines;
pub mod capacity;
pub mod compare;
#[cfg(feature = "controller")]
pub mod controller;
#[cfg(feature = "controller")]
pub mod crd;
#[cfg(feature = "controller")]
pub mod export;
pub mod forecast;
pub mod goodput;
pub mod metrics;
pub mod optimizer;
