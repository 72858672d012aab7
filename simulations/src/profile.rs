//! `goodput sim profile`: the engine model's step times for one batch shape, the numbers a
//! person checks against a benchmark of a real server.
//!
//! Prefill time is what vLLM's scheduler would take to prefill `batch` prompts of `prompt`
//! tokens arriving together: chunks of at most `max_num_batched_tokens` per step, requests in
//! order, each step timed by the roofline model (KV capacity is not the limit here). Decode time
//! is one step of `batch` sequences each at `context` tokens.

use goodput_core::catalog::EngineLimits;
use goodput_core::perf::{StackOverheads, kv_capacity_tokens};
use goodput_core::{Catalog, CatalogError, StepCost, StepWork};
use serde::Serialize;

/// The result of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    /// Milliseconds to prefill the whole batch.
    pub prefill_ms: f64,
    /// Milliseconds of one decode iteration of the batch.
    pub decode_ms: f64,
    /// Engine steps the prefill took.
    pub prefill_steps: u32,
    /// KV-cache capacity of one replica, tokens (0 when the weights do not fit).
    pub kv_capacity_tokens: u64,
}

/// Errors of a profile request.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--tp must be a power of two, got {0}")]
    Tp(u32),
}

/// Profiles `model` on `tp` x `accelerator` with vLLM's default engine limits for the device.
pub fn profile(
    catalog: &Catalog,
    model: &str,
    accelerator: &str,
    tp: u32,
    prompt: u32,
    batch: u32,
    context: Option<u32>,
) -> Result<Profile, ProfileError> {
    if prompt == 0 {
        return Err(ProfileError::Zero("--prompt"));
    }
    if batch == 0 {
        return Err(ProfileError::Zero("--batch"));
    }
    if tp == 0 || !tp.is_power_of_two() {
        return Err(ProfileError::Tp(tp));
    }
    let m = catalog.model(model)?;
    let acc = catalog.accelerator(accelerator)?;
    let limits = EngineLimits::vllm_defaults(acc);
    let cost = StepCost::new(m, acc, tp, &StackOverheads::default());
    let budget = limits.max_num_batched_tokens as u64;
    let mut done = vec![0u64; batch as usize];
    let total = prompt as u64;
    let mut prefill = 0.0;
    let mut steps = 0;
    while done.iter().any(|&d| d < total) {
        let mut left = budget;
        let mut work = StepWork::default();
        for d in done.iter_mut() {
            if left == 0 {
                break;
            }
            if *d < total {
                let s = (total - *d).min(left);
                work.add(s, *d, true);
                *d += s;
                left -= s;
            }
        }
        prefill += cost.step_time(&work);
        steps += 1;
    }
    let ctx = context.unwrap_or(prompt) as u64;
    let mut decode = StepWork::default();
    for _ in 0..batch {
        decode.add(1, ctx, false);
    }
    Ok(Profile {
        prefill_ms: prefill * 1e3,
        decode_ms: cost.step_time(&decode) * 1e3,
        prefill_steps: steps,
        kv_capacity_tokens: kv_capacity_tokens(m, acc, tp, &limits),
    })
}
