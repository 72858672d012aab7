//! goodput-core: the vocabulary every goodput crate shares, with no I/O.
//!
//! - [`catalog`]: accelerators and models (built in, extensible from YAML), the facts the
//!   physics is computed from.
//! - [`perf`]: the roofline step-time model of one vLLM engine step on one variant, calibrated
//!   against measured vLLM step times; used by the simulator's engine and as the prior of the
//!   predictor's per-variant performance model.
//! - [`slo`]: latency objectives and the variant/role vocabulary.
//! - [`vllm`]: vLLM's metric conventions (histogram bucket boundaries) and a cumulative histogram
//!   with those boundaries, shared by the simulator's Prometheus view and the live servers.

pub mod catalog;
pub mod load;
pub mod perf;
pub mod slo;
pub mod vllm;

pub use catalog::{Accelerator, Catalog, CatalogError, EngineLimits, Model};
pub use load::VariantLoad;
pub use perf::{StackOverheads, StepCost, StepWork};
pub use slo::{Role, Slo};
