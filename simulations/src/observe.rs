//! The simulator's stand-in for Prometheus: it scrapes every replica's vLLM counters at a fixed
//! interval and answers, per variant, what goodput's PromQL would return (rates over a window,
//! quantiles from histogram deltas with vLLM's bucket boundaries, latest gauges), with a
//! visibility lag. Decisions therefore see the same resolution limits and delays as in a
//! cluster.

use std::collections::{HashMap, VecDeque};

use goodput_core::VariantLoad;
use goodput_core::vllm::{ITL_BUCKETS, TTFT_BUCKETS, histogram_quantile};

use crate::engine::EngineCounters;

/// One scrape of one replica.
#[derive(Debug, Clone)]
struct Scrape {
    t: f64,
    finished: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    preemptions: u64,
    ttft: Vec<u64>,
    itl: Vec<u64>,
    prompt_lengths: Vec<u64>,
    output_lengths: Vec<u64>,
    running: f64,
    waiting: f64,
    kv_usage: f64,
}

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
}

/// Scrape history per replica, queried per variant.
#[derive(Debug, Default)]
pub struct PromView {
    lag_s: f64,
    window_s: f64,
    /// Bucket bounds of the token-length histograms (vLLM's 1-2-5 series up to the model's
    /// context), learnt from the first scrape.
    length_bounds: Vec<f64>,
    series: HashMap<usize, (usize, VecDeque<Scrape>)>,
}

impl PromView {
    /// A view whose queries see scrapes at least `lag_s` old, over `window_s`.
    pub fn new(lag_s: f64, window_s: f64) -> Self {
        Self {
            lag_s,
            window_s,
            length_bounds: Vec::new(),
            series: HashMap::new(),
        }
    }

    /// Records a scrape of `replica` (of `variant`) at `t`.
    pub fn record(
        &mut self,
        t: f64,
        replica: usize,
        variant: usize,
        c: &EngineCounters,
        g: Gauges,
    ) {
        if self.length_bounds.is_empty() {
            self.length_bounds = c.prompt_tokens_hist.bounds().to_vec();
        }
        let entry = self
            .series
            .entry(replica)
            .or_insert_with(|| (variant, VecDeque::new()));
        entry.1.push_back(Scrape {
            t,
            finished: c.requests_finished,
            prompt_tokens: c.prompt_tokens,
            generation_tokens: c.generation_tokens,
            prefix_queries: c.prefix_queries,
            prefix_hits: c.prefix_hits,
            preemptions: c.preemptions,
            ttft: c.ttft.cumulative(),
            itl: c.itl.cumulative(),
            prompt_lengths: c.prompt_tokens_hist.cumulative(),
            output_lengths: c.generation_tokens_hist.cumulative(),
            running: g.running as f64,
            waiting: g.waiting as f64,
            kv_usage: g.kv_usage,
        });
        // Keep what a query can still reach, plus one older sample as the window's base.
        let horizon = t - self.lag_s - self.window_s;
        while entry.1.len() > 2 && entry.1[1].t < horizon {
            entry.1.pop_front();
        }
    }

    /// Forgets a replica that stopped (its series goes stale, as in Prometheus).
    pub fn forget(&mut self, replica: usize) {
        self.series.remove(&replica);
    }

    /// What PromQL over the window ending `lag_s` before `now` says about `variant`; None when no
    /// replica of it has a visible scrape.
    pub fn variant_load(&self, now: f64, variant: usize) -> Option<VariantLoad> {
        let end_t = now - self.lag_s;
        let start_t = end_t - self.window_s;
        let mut load = VariantLoad::default();
        let mut ttft = vec![0u64; TTFT_BUCKETS.len() + 1];
        let mut itl = vec![0u64; ITL_BUCKETS.len() + 1];
        let mut prompt_len = vec![0u64; self.length_bounds.len() + 1];
        let mut output_len = vec![0u64; self.length_bounds.len() + 1];
        let (mut finished, mut prompt, mut gen_tokens) = (0u64, 0u64, 0u64);
        let (mut pq, mut ph, mut pre) = (0u64, 0u64, 0u64);
        let mut span_sum = 0.0;
        let mut newest = f64::NEG_INFINITY;
        let mut kv_sum = 0.0;
        for (v, scrapes) in self.series.values() {
            if *v != variant {
                continue;
            }
            let Some(last) = scrapes.iter().rev().find(|s| s.t <= end_t) else {
                continue;
            };
            let first = scrapes
                .iter()
                .rev()
                .find(|s| s.t <= start_t)
                .unwrap_or(&scrapes[0]);
            load.replicas_reporting += 1;
            newest = newest.max(last.t);
            load.waiting += last.waiting;
            load.running += last.running;
            kv_sum += last.kv_usage;
            let span = last.t - first.t;
            if span <= 0.0 {
                continue;
            }
            span_sum += span;
            finished += last.finished - first.finished;
            prompt += last.prompt_tokens - first.prompt_tokens;
            gen_tokens += last.generation_tokens - first.generation_tokens;
            pq += last.prefix_queries - first.prefix_queries;
            ph += last.prefix_hits - first.prefix_hits;
            pre += last.preemptions - first.preemptions;
            for (acc, (a, b)) in ttft.iter_mut().zip(last.ttft.iter().zip(&first.ttft)) {
                *acc += a - b;
            }
            for (acc, (a, b)) in itl.iter_mut().zip(last.itl.iter().zip(&first.itl)) {
                *acc += a - b;
            }
            let pairs = [
                (&mut prompt_len, &last.prompt_lengths, &first.prompt_lengths),
                (&mut output_len, &last.output_lengths, &first.output_lengths),
            ];
            for (acc, l, f) in pairs {
                for (a, (x, y)) in acc.iter_mut().zip(l.iter().zip(f)) {
                    *a += x - y;
                }
            }
        }
        if load.replicas_reporting == 0 {
            return None;
        }
        load.kv_usage = kv_sum / load.replicas_reporting as f64;
        load.age_s = now - newest;
        // Rates are per replica span, summed over replicas (sum(rate(...)) in PromQL).
        let reporting_spans = span_sum / load.replicas_reporting as f64;
        if reporting_spans > 0.0 {
            let per = |x: u64| x as f64 / reporting_spans;
            load.request_rate = per(finished);
            load.prompt_token_rate = per(prompt);
            load.generation_token_rate = per(gen_tokens);
            load.preemption_rate = per(pre);
        }
        if finished > 0 {
            load.mean_prompt_tokens = prompt as f64 / finished as f64;
            load.mean_output_tokens = gen_tokens as f64 / finished as f64;
        }
        load.prefix_hit_rate = if pq > 0 { ph as f64 / pq as f64 } else { 0.0 };
        let tf: Vec<f64> = ttft.iter().map(|&x| x as f64).collect();
        let itf: Vec<f64> = itl.iter().map(|&x| x as f64).collect();
        let q = |q: f64, b: &[f64], c: &[f64]| histogram_quantile(q, b, c);
        load.ttft_p50_s = q(0.5, TTFT_BUCKETS, &tf);
        load.ttft_p90_s = q(0.9, TTFT_BUCKETS, &tf);
        load.ttft_p95_s = q(0.95, TTFT_BUCKETS, &tf);
        load.ttft_p99_s = q(0.99, TTFT_BUCKETS, &tf);
        load.itl_p50_s = q(0.5, ITL_BUCKETS, &itf);
        load.itl_p90_s = q(0.9, ITL_BUCKETS, &itf);
        load.itl_p95_s = q(0.95, ITL_BUCKETS, &itf);
        load.itl_p99_s = q(0.99, ITL_BUCKETS, &itf);
        let as_f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        load.p90_prompt_tokens = q(0.9, &self.length_bounds, &as_f(&prompt_len));
        load.p90_output_tokens = q(0.9, &self.length_bounds, &as_f(&output_len));
        Some(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_quantiles_follow_the_window_and_lag() {
        let mut view = PromView::new(10.0, 60.0);
        let mut c = EngineCounters::new(4096);
        let g = Gauges {
            running: 3,
            waiting: 1,
            kv_usage: 0.5,
        };
        for step in 0..=12 {
            let t = step as f64 * 10.0;
            view.record(t, 0, 0, &c, g);
            // 20 requests per 10 s, each TTFT 0.3 s.
            c.requests_finished += 20;
            c.prompt_tokens += 20 * 100;
            c.prompt_tokens_hist.observe_n(100.0, 20);
            for _ in 0..20 {
                c.ttft.observe(0.3);
            }
        }
        let load = view.variant_load(120.0, 0).unwrap();
        assert!(
            (load.request_rate - 2.0).abs() < 1e-9,
            "{}",
            load.request_rate
        );
        assert!((load.mean_prompt_tokens - 100.0).abs() < 1e-9);
        let p50 = load.ttft_p50_s.unwrap();
        assert!(p50 > 0.25 && p50 <= 0.5, "{p50}");
        assert_eq!(load.age_s, 10.0);
        // 100-token prompts sit in the (50, 100] bucket of vLLM's 1-2-5 series.
        let p90 = load.p90_prompt_tokens.unwrap();
        assert!(p90 > 50.0 && p90 <= 100.0, "{p90}");
        assert_eq!(load.waiting, 1.0);
        assert!(view.variant_load(120.0, 1).is_none());
        // Nothing visible before the lag has passed.
        let mut fresh = PromView::new(10.0, 60.0);
        fresh.record(0.0, 0, 0, &c, g);
        assert!(fresh.variant_load(5.0, 0).is_none());
    }
}
