use std::sync::Arc;

use goodput_core::catalog::EngineLimits;
use goodput_core::perf::{StackOverheads, kv_capacity_tokens};
use goodput_core::{Catalog, Role, StepCost, StepWork};

use super::*;

fn params(mode: StepMode, kv_tokens: Option<u64>) -> EngineParams {
    let c = Catalog::builtin();
    let m = c.model("llama-3.1-8b").unwrap();
    let a = c.accelerator("h100").unwrap();
    let limits = EngineLimits::vllm_defaults(a);
    EngineParams {
        cost: StepCost::new(m, a, 1, &StackOverheads::default()),
        limits,
        kv_capacity_tokens: kv_tokens.unwrap_or_else(|| kv_capacity_tokens(m, a, 1, &limits)),
        role: Role::Unified,
        mode,
        max_model_len: 131072,
    }
}

fn req(id: u64, prompt: u32, output: u32, hash_ids: &[u64]) -> EngineRequest {
    EngineRequest {
        id,
        prompt_tokens: prompt,
        output_tokens: output,
        hash_ids: Arc::from(hash_ids),
        hash_block_tokens: 512,
        kv_transferred: false,
    }
}

/// Drives an engine until idle; returns finished requests.
fn drain(e: &mut Engine, mut now: f64) -> Vec<Finished> {
    let mut out = Vec::new();
    let mut next = e.kick(now);
    while let Some(t) = next {
        now = t;
        out.extend(e.advance(now));
        next = e.next_event();
    }
    out
}

#[test]
fn a_lone_request_takes_one_prefill_step_then_one_decode_step_per_token() {
    let p = params(StepMode::StepByStep, None);
    let cost = p.cost;
    let mut e = Engine::new(p);
    assert!(e.enqueue(0.0, req(1, 1000, 5, &[])).is_none());
    let done = drain(&mut e, 0.0);
    assert_eq!(done.len(), 1);
    let mut w = StepWork::default();
    w.add(1000, 0, true);
    let prefill = cost.step_time(&w);
    let f = &done[0];
    assert!((f.first_token_s.unwrap() - prefill).abs() < 1e-12);
    let mut decode_total = 0.0;
    for ctx in 1000..1004 {
        let mut d = StepWork::default();
        d.add(1, ctx, false);
        decode_total += cost.step_time(&d);
    }
    assert!((f.finish_s - prefill - decode_total).abs() < 1e-9);
    assert_eq!(f.output_tokens, 5);
    assert_eq!(e.counters().generation_tokens, 5);
    assert_eq!(e.counters().itl.count(), 4);
    assert_eq!(e.counters().ttft.count(), 1);
    assert_eq!(e.kv_usage(f.finish_s), 0.0);
}

#[test]
fn long_prompts_are_chunked_by_the_token_budget() {
    let mut p = params(StepMode::StepByStep, None);
    p.limits.max_num_batched_tokens = 512;
    let mut e = Engine::new(p);
    e.enqueue(0.0, req(1, 2000, 1, &[]));
    drain(&mut e, 0.0);
    // ceil(2000 / 512) = 4 prefill steps produce the one token.
    assert_eq!(e.steps(), 4);
}

#[test]
fn running_out_of_kv_preempts_and_every_request_still_finishes() {
    // Room for ~4 requests' worth of blocks; 8 long generations must preempt.
    let mut e = Engine::new(params(StepMode::StepByStep, Some(16 * 300)));
    for i in 0..8 {
        e.enqueue(0.0, req(i, 400, 400, &[]));
    }
    let done = drain(&mut e, 0.0);
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|f| f.output_tokens == 400));
    assert!(e.counters().preemptions > 0);
    assert_eq!(e.kv_usage(1e9), 0.0);
}

#[test]
fn requests_that_can_never_fit_are_refused_not_stuck() {
    let mut e = Engine::new(params(StepMode::StepByStep, Some(16 * 10)));
    let f = e.enqueue(0.0, req(9, 1000, 10, &[])).unwrap();
    assert!(f.rejected);
    assert_eq!(e.counters().requests_rejected, 1);
    assert!(e.kick(0.0).is_none());
}

#[test]
fn shared_prefixes_hit_the_cache_and_shorten_prefill() {
    let mut e = Engine::new(params(StepMode::StepByStep, None));
    e.enqueue(0.0, req(1, 2048, 2, &[1, 2, 3, 4]));
    let first = drain(&mut e, 0.0);
    let t0 = first[0].finish_s;
    e.enqueue(t0, req(2, 2048, 2, &[1, 2, 3, 4]));
    let second = drain(&mut e, t0);
    // Full hit recomputes the last block only: 2032 of 2048 tokens cached.
    assert_eq!(second[0].cached_tokens, 2032);
    let ttft1 = first[0].first_token_s.unwrap();
    let ttft2 = second[0].first_token_s.unwrap() - t0;
    assert!(ttft2 < ttft1 / 3.0, "{ttft2} vs {ttft1}");
    assert_eq!(e.counters().prefix_hits, 2032);
    // A different prefix after the first block hits only that block.
    e.enqueue(1.0, req(3, 2048, 2, &[1, 9, 9, 9]));
    let third = drain(&mut e, 1.0);
    assert_eq!(third[0].cached_tokens, 512);
}

#[test]
fn event_jumping_and_step_by_step_agree_on_a_mixed_batch() {
    let run = |mode| {
        let mut e = Engine::new(params(mode, Some(16 * 4000)));
        for i in 0..40u64 {
            e.enqueue(
                0.0,
                req(
                    i,
                    200 + (i as u32 * 37) % 900,
                    20 + (i as u32 * 53) % 300,
                    &[],
                ),
            );
        }
        // A late arrival lands in the middle of a decode run.
        let mut out = Vec::new();
        let mut now = 0.0;
        let mut next = e.kick(now);
        let mut late = false;
        while let Some(t) = next {
            if !late && t > 3.0 {
                late = true;
                now = 3.0;
                next = e.sync(now, true);
                e.enqueue(now, req(99, 500, 50, &[]));
                continue;
            }
            now = t;
            out.extend(e.advance(now));
            next = e.next_event();
        }
        out.sort_by_key(|f| f.id);
        (out, e.steps(), e.counters().clone())
    };
    let (a, steps_a, ca) = run(StepMode::StepByStep);
    let (b, steps_b, cb) = run(StepMode::EventJumping);
    assert_eq!(a.len(), 41);
    assert_eq!(steps_a, steps_b, "both modes execute the same engine steps");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.id, y.id);
        let rel = |p: f64, q: f64| (p - q).abs() / p.abs().max(1e-9);
        assert!(rel(x.finish_s, y.finish_s) < 1e-9, "{x:?} {y:?}");
        assert!(rel(x.first_token_s.unwrap(), y.first_token_s.unwrap()) < 1e-9);
    }
    assert_eq!(ca.generation_tokens, cb.generation_tokens);
    assert_eq!(ca.itl.count(), cb.itl.count());
    assert!((ca.itl.sum() - cb.itl.sum()).abs() / ca.itl.sum() < 1e-9);
}

#[test]
fn modes_agree_with_prefix_caching_kv_pressure_and_arrivals() {
    let run = |mode| {
        // A small token budget caps admissions' first chunks, the case where evicting a
        // queued request's cached prefix makes it admissible sooner.
        let mut p = params(mode, Some(16 * 800));
        p.limits.max_num_batched_tokens = 1024;
        let mut e = Engine::new(p);
        let mut arrivals: Vec<(f64, EngineRequest)> = (0..120u64)
            .map(|i| {
                let ids: Vec<u64> = (0..6)
                    .map(|b| if b < 2 { i % 5 } else { 1000 + i * 10 + b })
                    .collect();
                (
                    i as f64 * 0.37,
                    req(
                        i,
                        1500 + (i as u32 * 97) % 1400,
                        30 + (i as u32 * 53) % 400,
                        &ids,
                    ),
                )
            })
            .collect();
        arrivals.reverse();
        let mut out = Vec::new();
        let mut next = e.kick(0.0);
        loop {
            let a = arrivals.last().map(|x| x.0);
            match (a, next) {
                (Some(ta), Some(te)) if ta < te => {
                    let (_, r) = arrivals.pop().unwrap();
                    if ta > 17.5 && ta < 18.2 {
                        eprintln!("{:?} arrival {ta} id={}", mode, r.id);
                    }
                    e.sync(ta, true);
                    e.enqueue(ta, r);
                    next = e.kick(ta);
                }
                (Some(ta), None) => {
                    let (_, r) = arrivals.pop().unwrap();
                    e.enqueue(ta, r);
                    next = e.kick(ta);
                }
                (_, Some(te)) => {
                    out.extend(e.advance(te));
                    next = e.next_event();
                }
                (None, None) => break,
            }
        }
        out.sort_by_key(|f| f.id);
        (out, e.steps(), e.counters().clone())
    };
    let (a, steps_a, ca) = run(StepMode::StepByStep);
    let (b, steps_b, cb) = run(StepMode::EventJumping);
    assert_eq!(a.len(), 120);
    assert!(
        ca.preemptions > 0 && ca.prefix_hits > 0,
        "{} {}",
        ca.preemptions,
        ca.prefix_hits
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x.finish_s - y.finish_s).abs() < 1e-6, "{x:?} {y:?}");
    }
    assert_eq!(steps_a, steps_b);
    assert_eq!(ca.preemptions, cb.preemptions);
}

#[test]
fn prompts_count_in_flight_until_their_first_token() {
    let mut p = params(StepMode::StepByStep, None);
    p.limits.max_num_batched_tokens = 512;
    let mut e = Engine::new(p);
    assert_eq!(e.prefill_in_flight(0.0), PrefillInFlight::default());
    e.enqueue(0.0, req(1, 2000, 3, &[]));
    e.enqueue(0.5, req(2, 100, 3, &[]));
    // Both waiting: every prompt token, timed from the older arrival.
    let both = e.prefill_in_flight(0.0);
    assert_eq!(both.tokens, 2100);
    assert_eq!(both.oldest_arrival_s, Some(0.0));
    // Request 1 is scheduled: its chunk in flight still counts until the step ends, and it
    // stays in flight (running, not waiting) until its prompt is done.
    let first_step_end = e.kick(0.5).unwrap();
    assert_eq!(e.num_waiting(), 1);
    assert_eq!(e.prefill_in_flight(0.5), both);
    e.advance(first_step_end);
    let after_one_chunk = e.prefill_in_flight(first_step_end);
    assert_eq!(after_one_chunk.tokens, 2100 - 512);
    assert_eq!(after_one_chunk.oldest_arrival_s, Some(0.0));
    // Once both have their first token, nothing is in flight, though they still decode.
    let mut now = first_step_end;
    while e.prefill_in_flight(now).tokens > 0 {
        now = e.next_event().unwrap();
        e.advance(now);
    }
    assert_eq!(e.prefill_in_flight(now), PrefillInFlight::default());
    assert!(e.num_running() > 0, "still decoding");
}

#[test]
fn a_prompt_answered_inside_a_decode_run_leaves_the_in_flight_count_at_the_first_step() {
    // A one-token prompt is computed in a one-token step, which event jumping folds into a
    // decode run: its first token comes at the run's first step, as in step-by-step mode.
    for mode in [StepMode::EventJumping, StepMode::StepByStep] {
        let mut e = Engine::new(params(mode, None));
        e.enqueue(0.0, req(1, 1, 50, &[]));
        e.kick(0.0);
        let in_flight = e.prefill_in_flight(0.0);
        assert_eq!(in_flight.tokens, 1, "{mode:?}");
        assert_eq!(in_flight.oldest_arrival_s, Some(0.0), "{mode:?}");
        // Well after the first step (about 7 ms on H100), before the request finishes.
        let later = 0.1;
        if mode == StepMode::StepByStep {
            let mut now = 0.0;
            while let Some(t) = e.next_event().filter(|&t| t <= later) {
                now = t;
                e.advance(now);
            }
            assert!(now > 0.0);
        }
        assert!(e.last_token_at(later).is_some(), "{mode:?}");
        assert_eq!(
            e.prefill_in_flight(later),
            PrefillInFlight::default(),
            "{mode:?}"
        );
    }
}
