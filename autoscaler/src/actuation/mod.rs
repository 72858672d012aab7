//! How desired replicas reach the workloads, per ModelAutoscaler (`spec.policy.actuation`):
//!
//! - `metrics` (default): nothing here; `crate::export` publishes `goodput_desired_replicas`
//!   (and optionally WVA's `wva_desired_replicas`) for HPA or KEDA's prometheus trigger.
//! - `keda`: [`keda`] serves KEDA's external scaler gRPC protocol from a [`DesiredStore`] the
//!   controller fills after each reconcile.
//! - `scale`: [`scale`] patches the target's `/scale` subresource.

pub mod keda;
pub mod scale;
pub mod store;

pub use store::{DesiredKey, DesiredStore};
