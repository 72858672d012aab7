//! Live vLLM-compatible servers driven by the engine model in real time, and an open-loop load
//! generator to measure them (cargo feature `live`; the simulator builds without it).
//!
//! Data flow: [`server::LiveServers`] starts one HTTP server per replica; each request is parsed
//! and validated by [`protocol`], handed to the replica's [`driver`] task which runs an
//! [`crate::engine::Engine`] step by step against the wall clock (simulated time = wall time x
//! time scale), and its tokens stream back as vLLM-shaped SSE chunks. `/metrics` renders the
//! engine's counters through [`metrics`] under vLLM's names, types and buckets. [`load`] replays
//! a trace or a generated workload against one or more servers and reports what the client
//! saw (TTFT, ITL, end-to-end latency, errors, SLO attainment).
//!
//! The protocol, the P/D steps and the fault flags are described in `docs/live-servers.md`.

pub mod driver;
pub mod load;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use load::{LoadConfig, LoadReport, RequestSample, run_load};
pub use server::{FaultConfig, LiveServers, ServerConfig};

use std::net::SocketAddr;

/// Errors of the live servers and the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Catalog(#[from] goodput_core::CatalogError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Trace(#[from] crate::workload::trace::TraceError),
    #[error(transparent)]
    Generate(#[from] crate::workload::generate::GenerateError),
}

/// A 64-bit mixer (splitmix64's finaliser): ids, seeds and hashes that must not depend on the
/// process's random hasher state.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
