//! The Kubernetes controller: watches ModelAutoscalers (and AcceleratorPools), collects each
//! model's metrics through the PromQL module every interval, runs the decision engine, writes
//! status and Events, and actuates.
//!
//! - [`reconcile`]: the decision without I/O (spec + pools + metrics + current replicas ->
//!   status, desired replicas, Events, `/scale` patches), on the existing engine.
//! - [`pool_share`]: what each model holds in the AcceleratorPools it shares with others.
//! - [`shared_capacity`]: one capacity-probe cache for every object in the cluster.
//! - [`latency`]: predicted TTFT/ITL for the status.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`leader`]: leader election on a Lease.
//! - [`run`]: the kube-runtime Controller and the process around it (I/O only).

pub mod http;
pub mod latency;
pub mod leader;
pub mod pool_share;
pub mod reconcile;
pub mod run;
pub mod shared_capacity;
