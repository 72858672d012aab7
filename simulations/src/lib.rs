//! goodput-sim: a discrete-event simulator of a heterogeneous vLLM fleet, with goodput's real
//! policies in the loop.
//!
//! Data flow: a [`workload::Workload`] feeds arrivals into the [`cluster`]; a
//! [`policy::Router`] picks a replica for each; each replica runs the vLLM [`engine`] model
//! (continuous batching, chunked prefill, paged KV cache with prefix caching and preemption)
//! whose step times come from `goodput_core::perf`; the [`observe::PromView`] scrapes the
//! replicas' vLLM counters and feeds the [`policy::Autoscaler`], whose decisions start and drain
//! replicas; [`run`] turns it all into a [`report::RunReport`], which [`report`] renders.
//! [`profile`] answers the engine model's step times directly.

pub mod cluster;
pub mod engine;
#[cfg(feature = "live")]
pub mod live;
pub mod observe;
pub mod policy;
pub mod profile;
pub mod report;
pub mod run;
pub mod scenario;
pub mod workload;

pub use indicatif::ProgressBar;

/// A progress bar for long runs (shown by the CLI only when stdout is a terminal).
pub fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} simulating [{bar:40}] {percent:>3}% {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
