//! Hand-made workloads for the simulator tests: requests at given instants, all of one shape.

#![allow(dead_code)] // each test binary uses its own part

use goodput_sim::workload::{RequestSpec, Workload};

/// One request at each of `arrivals` (seconds, ascending), every one `input` prompt tokens and
/// `output` generated tokens, no shared prefixes.
pub fn at_instants(name: &str, arrivals: Vec<f64>, input: u32, output: u32) -> Workload {
    Workload {
        name: name.into(),
        hash_block_tokens: 16,
        requests: arrivals
            .into_iter()
            .enumerate()
            .map(|(id, arrival_s)| RequestSpec {
                id: id as u64,
                arrival_s,
                input_tokens: input,
                output_tokens: output,
                hash_ids: Vec::new(),
            })
            .collect(),
    }
}
