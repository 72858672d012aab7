//! goodput-sim: a discrete-event simulator of a heterogeneous vLLM fleet, with goodput's real
//! policies in the loop.
//!
//! Data flow: a [`workload::Workload`] feeds arrivals into the cluster; a router hook picks a
//! replica for each; each replica runs the vLLM engine model (continuous batching, chunked
//! prefill, paged KV cache with prefix caching and preemption) whose step times come from
//! `goodput_core::perf`; a Prometheus-like view of the replicas' metrics feeds the autoscaler
//! hook, whose decisions start and drain replicas; everything observed lands in a
//! [`report::RunReport`].

pub mod report;
pub mod workload;
