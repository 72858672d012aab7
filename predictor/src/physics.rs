//! Engine physics of one variant (a model on an accelerator at a TP degree), used to turn a
//! dispatch-time [`Features`] snapshot into *prior* latencies: what the roofline step-time
//! model (`goodput_core::perf::StepCost`) and vLLM's chunked-prefill scheduler say the request
//! should see, before any learning. The models then learn only the log-ratio actual/prior
//! (plus whatever the prior misses), which is far easier than learning the physics from scratch
//! and carries over to workloads never trained on.
//!
//! Pure: values in, values out. A predictor without physics (an HTTP server not told its
//! variant) gets zeros for these features and behaves as before.

use goodput_core::catalog::{Accelerator, EngineLimits, Model};
use goodput_core::perf::kv_capacity_tokens;
use goodput_core::{StepCost, StepWork};

use crate::features::Features;

/// What the predictor knows about one variant's engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariantPhysics {
    pub cost: StepCost,
    /// `max_num_batched_tokens`: tokens one step may compute.
    pub token_budget: u32,
    /// KV-cache capacity of one replica, tokens (turns `kv_cache_percentage` into tokens).
    pub kv_capacity_tokens: u64,
    /// Tokens per KV block: the prefix cache hits whole blocks.
    pub block_tokens: u32,
}

/// Longest gap since the step in flight began (the last streamed token, or a prefill's oldest
/// prompt's dispatch), in estimated steps in flight, that still says where that step is. The
/// same count of decode steps of the running batch is the longest silence that is not a
/// prefill of the prompts in flight (with nothing running, any silence with prompts in flight
/// is their prefill). Steps that stream nothing (prefills alone, as on code traffic whose
/// answers are a few tokens) or an idle spell leave gaps of many steps. On the accuracy test's
/// five unseen workloads a bound of 3 lowered TTFT MAPE on four and left the fifth (sharegpt at
/// 36 req/s, where loaded steps outrun the estimate) unchanged; no bound was 0.1-1.4 points
/// worse on four, treating every gap past one step as unknown cost 1.3 points on that fifth
/// (docs/predictor.md).
const PHASE_GAP: f64 = 3.0;

/// Prior latencies of one request on one endpoint, ms.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PriorLatency {
    /// Residual of the step in flight + every prefill chunk ahead of and including the request's.
    pub ttft_ms: f64,
    /// A decode step of the running batch plus this request.
    pub tpot_ms: f64,
    /// A step carrying a full prefill chunk plus that batch's decodes (what a decode step costs
    /// when later prompts are chunked into it).
    pub mixed_step_ms: f64,
    /// The step in flight at dispatch: the running decodes plus the first chunk of the prefill
    /// queued ahead (0 on an idle endpoint).
    pub step_in_flight_ms: f64,
    /// What the TTFT prior takes as left of the step in flight.
    pub step_left_ms: f64,
}

impl VariantPhysics {
    /// The physics of `model` on `tp` devices of `acc` with vLLM's default engine limits.
    pub fn new(model: &Model, acc: &Accelerator, tp: u32) -> Self {
        let limits = EngineLimits::vllm_defaults(acc);
        Self::with_limits(model, acc, tp, &limits)
    }

    /// The same with explicit engine limits.
    pub fn with_limits(model: &Model, acc: &Accelerator, tp: u32, limits: &EngineLimits) -> Self {
        Self::from_engine(
            StepCost::new(model, acc, tp, &Default::default()),
            limits,
            kv_capacity_tokens(model, acc, tp, limits),
        )
    }

    /// The physics of an engine already costed (the simulator's engine parameters).
    pub fn from_engine(cost: StepCost, limits: &EngineLimits, kv_capacity_tokens: u64) -> Self {
        Self {
            cost,
            token_budget: limits.max_num_batched_tokens.max(1),
            kv_capacity_tokens,
            block_tokens: limits.block_size.max(1),
        }
    }

    /// Prior TTFT/TPOT for `f` (see the module docs).
    ///
    /// TTFT: the rest of the step in flight, then the request's own uncached prompt and the
    /// prompts queued before it (`prefill_tokens_in_flight`) in chunks of `budget − running`
    /// tokens, each chunk sharing its step with the running decodes (their mean context from
    /// the KV usage). vLLM schedules waiting prompts at a step's start: with requests waiting,
    /// the prompts ahead wait for the next step with this one; with none waiting, they were
    /// scheduled and the step in flight is prefilling them; so it is, whatever the waiting
    /// count, when no token streamed for several decode steps. The rest of the step in flight
    /// is its length less the time since it began: `ms_since_last_token` (the step began when
    /// the previous one streamed its tokens), or `ms_since_oldest_prefill` for a prefill that
    /// began after an idle spell; half of it when that is unknown (none when the endpoint is
    /// idle). On an endpoint without a queue this is the simulator's TTFT to a tenth of a
    /// millisecond for most requests (docs/predictor.md).
    /// TPOT: a decode step of `running + 1` requests at the KV-implied context plus the
    /// request's prompt.
    #[inline]
    pub fn prior(&self, f: &Features) -> PriorLatency {
        let running = f64::from(f.num_request_running);
        let input = f64::from(f.input_token_length);
        // The cache hits whole blocks, and never the prompt's last token: vLLM computes at
        // least that one to sample the first token. A prompt cached but for that token is
        // prefilled in a one-token step, which runs as a decode step does (CUDA graphs).
        let block = f64::from(self.block_tokens);
        // Rounded to whole tokens first: a score of k blocks over the prompt times the prompt
        // is k blocks only up to a rounding error, which the floor below would turn into a
        // block less. A score that is not a number counts as no hit.
        let score = if f.prefix_cache_score.is_finite() {
            f.prefix_cache_score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let hit = (score * input).round();
        let cached =
            ((hit / block).floor() * block).min(((input - 1.0) / block).floor().max(0.0) * block);
        let own = input - cached;
        let ahead = f.prefill_tokens_in_flight as f64;
        let kv_tokens = f.kv_cache_percentage.clamp(0.0, 1.0) * self.kv_capacity_tokens as f64;
        let budget = f64::from(self.token_budget);
        let room = (budget - running).max(1.0);
        // One step: `chunk` prefill tokens (at `prefix` cached tokens before them) + the decodes.
        let step = |chunk: f64, prefix: f64, decodes: f64, context: f64| {
            let mut w = StepWork {
                tokens: chunk + decodes,
                attention_pairs: chunk * prefix + chunk * (chunk + 1.0) / 2.0 + context + decodes,
                kv_tokens: prefix + chunk + context + decodes,
                requests: decodes,
                has_prefill: chunk > 1.0,
            };
            if chunk > 0.0 {
                w.requests += 1.0;
            }
            self.cost.step_time(&w)
        };
        let since_s = known_ms(f.ms_since_last_token).map(|ms| ms / 1e3);
        let decode_step = if running > 0.0 {
            step(0.0, 0.0, running, kv_tokens)
        } else {
            0.0
        };
        // A gap without tokens longer than `PHASE_GAP` decode steps says the engine is in a long
        // step. With prompts ahead, that step is prefilling them: only a prefill streams nothing
        // for so long (their own first tokens would end the gap). A waiting count then no longer
        // says they wait: it may come from a scrape older than the step, or count prompts that
        // arrived during it (on code traffic those are mostly cache hits; unseen azure-code TTFT
        // MAPE 10.1 % before this rule, 9.9 % with it, 7.3 % with the dispatch age below).
        let long_gap = since_s.is_some_and(|since| since > PHASE_GAP * decode_step);
        // Where the prompts ahead are: with requests waiting, the queue waits for the next step
        // (the new prompt is prefilled with it); with none waiting, the prompts ahead were
        // scheduled and the step in flight is prefilling them (up to one budget), so the new
        // prompt only waits for that step and whatever did not fit.
        let (in_step, queued) = if f.num_request_waiting > 0 && !(long_gap && ahead > 0.0) {
            (0.0, ahead)
        } else {
            (ahead.min(room), (ahead - room).max(0.0))
        };
        let total = queued + own.max(1.0);
        let full = (total / room).floor();
        let rem = total - full * room;
        let in_flight = if in_step > 0.0 {
            step(in_step, 0.0, running, kv_tokens)
        } else {
            decode_step
        };
        let chunk_full = if full > 0.0 {
            step(room, cached, running, kv_tokens)
        } else {
            0.0
        };
        // What is left of the step in flight: its estimated length less the time since it
        // began, or half of it when that is unknown. A step began at the last streamed token;
        // a prefill in flight began there too, or, if the engine was idle when its oldest prompt
        // arrived, at that prompt's dispatch: whichever is later. More than `PHASE_GAP` steps
        // since then says the engine did something else meanwhile (prefills of prompts this
        // caller did not send, or an idle spell), not where the step is.
        let oldest_s = known_ms(f.ms_since_oldest_prefill).map(|ms| ms / 1e3);
        let elapsed = match (since_s, oldest_s) {
            (Some(since), Some(oldest)) if in_step > 0.0 => Some(since.min(oldest)),
            (None, Some(oldest)) if in_step > 0.0 => Some(oldest),
            (since, _) => since,
        };
        let left = match elapsed {
            Some(e) if in_flight > 0.0 && e <= PHASE_GAP * in_flight => (in_flight - e).max(0.0),
            _ => 0.5 * in_flight,
        };
        let ttft = left + full * chunk_full + step(rem, cached, running, kv_tokens);
        let tpot = step(0.0, 0.0, running + 1.0, kv_tokens + input);
        let mixed = step(room, 0.0, running + 1.0, kv_tokens + input);
        PriorLatency {
            ttft_ms: ttft * 1e3,
            tpot_ms: tpot * 1e3,
            mixed_step_ms: mixed * 1e3,
            step_in_flight_ms: in_flight * 1e3,
            step_left_ms: left * 1e3,
        }
    }
}

/// An elapsed time that means something: finite and not negative.
pub(crate) fn known_ms(ms: Option<f64>) -> Option<f64> {
    ms.filter(|x| x.is_finite() && *x >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodput_core::Catalog;

    fn physics(acc: &str) -> VariantPhysics {
        let c = Catalog::builtin();
        VariantPhysics::new(
            c.model("llama-3.1-8b").unwrap(),
            c.accelerator(acc).unwrap(),
            1,
        )
    }

    #[test]
    fn priors_grow_with_queue_prompt_and_batch_and_with_a_slower_device() {
        let p = physics("h100");
        let idle = Features {
            input_token_length: 1000,
            ..Default::default()
        };
        let a = p.prior(&idle);
        assert!(a.ttft_ms > 0.0 && a.tpot_ms > 0.0 && a.mixed_step_ms >= a.tpot_ms);
        let queued = p.prior(&Features {
            prefill_tokens_in_flight: 20_000,
            num_request_running: 30,
            kv_cache_percentage: 0.2,
            ..idle
        });
        assert!(queued.ttft_ms > 2.0 * a.ttft_ms);
        assert!(queued.tpot_ms > a.tpot_ms);
        let cached = p.prior(&Features {
            prefix_cache_score: 0.9,
            ..idle
        });
        assert!(cached.ttft_ms < a.ttft_ms);
        let slow = physics("l40s").prior(&idle);
        assert!(slow.ttft_ms > a.ttft_ms && slow.tpot_ms > a.tpot_ms);
    }

    #[test]
    fn the_step_in_flight_and_the_queue_place_a_new_prompt() {
        let p = physics("h100");
        let busy = Features {
            input_token_length: 200,
            num_request_running: 20,
            kv_cache_percentage: 0.05,
            ms_since_last_token: Some(0.0),
            ..Default::default()
        };
        let start = p.prior(&busy);
        assert!(start.step_in_flight_ms > 0.0);
        // Later in the step, less of it is left; past its estimated end, none.
        let later = p.prior(&Features {
            ms_since_last_token: Some(0.5 * start.step_in_flight_ms),
            ..busy
        });
        assert!((start.ttft_ms - later.ttft_ms - 0.5 * start.step_in_flight_ms).abs() < 1e-9);
        let past = p.prior(&Features {
            ms_since_last_token: Some(2.0 * start.step_in_flight_ms),
            ..busy
        });
        assert!((start.ttft_ms - past.ttft_ms - start.step_in_flight_ms).abs() < 1e-9);
        // Unknown phase, or a gap of many steps without a token (prefills alone, or an idle
        // spell): half the step.
        for since in [None, Some(10.0 * start.step_in_flight_ms)] {
            let unknown = p.prior(&Features {
                ms_since_last_token: since,
                ..busy
            });
            assert!((start.ttft_ms - unknown.ttft_ms - 0.5 * start.step_in_flight_ms).abs() < 1e-9);
        }
        // 2000 prompt tokens ahead. Being prefilled (none waiting), they lengthen the step in
        // flight and the new prompt follows alone; waiting, they share its step.
        let scheduled = p.prior(&Features {
            prefill_tokens_in_flight: 2000,
            ..busy
        });
        let waiting = p.prior(&Features {
            prefill_tokens_in_flight: 2000,
            num_request_waiting: 1,
            ..busy
        });
        assert!(scheduled.step_in_flight_ms > start.step_in_flight_ms);
        assert_eq!(waiting.step_in_flight_ms, start.step_in_flight_ms);
        assert!(waiting.ttft_ms > start.ttft_ms && scheduled.ttft_ms > start.ttft_ms);
    }

    #[test]
    fn a_long_silence_with_prompts_ahead_is_their_prefill_timed_from_the_oldest() {
        let p = physics("h100");
        // One request decoding, 5000 prompt tokens dispatched ahead and not yet answered, and
        // (from a scrape) requests waiting.
        let base = Features {
            input_token_length: 300,
            prefix_cache_score: 1.0,
            num_request_running: 1,
            num_request_waiting: 3,
            prefill_tokens_in_flight: 5000,
            kv_cache_percentage: 0.01,
            ..Default::default()
        };
        // Tokens streaming: the prompts ahead wait for the next step with the new one.
        let streaming = p.prior(&Features {
            ms_since_last_token: Some(0.0),
            ..base
        });
        let prefill = streaming.ttft_ms;
        assert!(prefill > 100.0, "{streaming:?}");
        // No token for longer than several decode steps: only a prefill of the prompts ahead
        // streams nothing that long, so it is in flight, begun at the last token; at its
        // estimated end only the new prompt's own short step is left.
        let silent = p.prior(&Features {
            ms_since_last_token: Some(prefill),
            ..base
        });
        assert!(silent.step_in_flight_ms > 100.0, "{silent:?}");
        assert!(
            silent.ttft_ms < 0.2 * prefill,
            "{silent:?} against {prefill}"
        );
        // After an idle spell, that prefill began when its prompt arrived, 10 ms ago.
        let just_begun = p.prior(&Features {
            ms_since_last_token: Some(5000.0),
            ms_since_oldest_prefill: Some(10.0),
            ..base
        });
        assert!(
            (just_begun.step_left_ms - (just_begun.step_in_flight_ms - 10.0)).abs() < 1e-9,
            "{just_begun:?}"
        );
        assert!(just_begun.ttft_ms > silent.ttft_ms + 0.8 * prefill);
        // Dispatched long ago and still unanswered: where that prefill is is unknown.
        let unknown = p.prior(&Features {
            ms_since_last_token: Some(5000.0),
            ms_since_oldest_prefill: Some(5000.0),
            ..base
        });
        assert!((unknown.step_left_ms - 0.5 * unknown.step_in_flight_ms).abs() < 1e-9);
    }

    #[test]
    fn the_cache_hits_whole_blocks_and_never_the_last_token() {
        let p = physics("h100");
        let cached = |input: u32| {
            p.prior(&Features {
                input_token_length: input,
                prefix_cache_score: 1.0,
                ..Default::default()
            })
            .ttft_ms
        };
        // 241 = 15 blocks of 16 + 1: only the last token is computed, a one-token step that
        // runs as a decode step. At 250 the last, partial block is computed: ten tokens, a
        // prefill step with its fixed cost.
        let one_token = cached(241);
        let partial_block = cached(250);
        let decode_step = p.cost.step_time(&StepWork {
            tokens: 1.0,
            attention_pairs: 241.0,
            kv_tokens: 241.0,
            requests: 1.0,
            has_prefill: false,
        });
        assert!(
            (one_token - decode_step * 1e3).abs() < 0.5,
            "{one_token} vs {decode_step}"
        );
        assert!(
            partial_block > one_token + 1.0,
            "{partial_block} vs {one_token}"
        );
        // A prefix score short of a block boundary counts only the whole blocks.
        let most = p.prior(&Features {
            input_token_length: 1000,
            prefix_cache_score: 0.5,
            ..Default::default()
        });
        let whole = p.prior(&Features {
            input_token_length: 1000,
            prefix_cache_score: 496.0 / 1000.0,
            ..Default::default()
        });
        assert!((most.ttft_ms - whole.ttft_ms).abs() < 1e-9);
        // A score of whole blocks, as a prefix index computes it, is those blocks although
        // 2048 / 3007 × 3007 is a hair under 2048 in floating point (a prompt long enough for
        // its prefill to be compute-bound, so that a block more or less shows).
        let blocks = |cached: f64| {
            p.prior(&Features {
                input_token_length: 3007,
                prefix_cache_score: cached / 3007.0,
                ..Default::default()
            })
            .ttft_ms
        };
        assert!(blocks(2048.0) < blocks(2047.0) - 1e-6);
        assert!((blocks(2048.0) - blocks(2050.0)).abs() < 1e-9);
        // Not a number: no hit.
        assert_eq!(blocks(f64::NAN * 3007.0), blocks(0.0));
    }
}
