//! Metrics collection: PromQL over vLLM's metrics, into typed observations.
//!
//! - [`queries`] builds every PromQL expression goodput sends (one function per quantity, for a
//!   [`queries::Scope`]: which model, which label names the variant, which window).
//! - [`client`] is the small trait through which queries reach Prometheus, with the HTTP
//!   implementation on `prometheus-http-query`; tests substitute their own.
//! - [`collect`] runs the queries and assembles one `VariantLoad` per variant (or per pod), with
//!   the age of the newest sample so that stale data is detected rather than trusted; and the
//!   gateway's demand for lack of an endpoint (goodput's scheduler's series), which wakes a
//!   fleet at zero.

pub mod client;
pub mod collect;
pub mod queries;

pub use client::{MetricsError, PromHttp, PromQuery, Series};
pub use collect::{Grouping, Observation, collect, collect_gateway};
pub use queries::{Scope, ScopeError};
