//! An open-loop load generator for OpenAI-compatible servers: replays a [`Workload`] (a trace
//! or a generated one) at its own arrival times, whatever the servers' speed, with streaming
//! requests, and reports what the client measured.
//!
//! Data flow: each [`RequestSpec`] becomes a prompt of exactly `input_tokens` tokens as the
//! servers count them (4-character words; blocks covered by the same workload hash id get the
//! same text, so prefix sharing in the trace becomes prefix sharing on the server), sent at its
//! arrival time to the next URL in round-robin order with `max_tokens = min_tokens =
//! output_tokens`, `ignore_eos` and `stream_options.include_usage`. The SSE stream is timed as it
//! arrives: TTFT is the time to the first chunk with non-empty text, ITL the gap between
//! successive such chunks. [`summarise`] turns the samples into a [`LoadReport`].
//!
//! Bounds: at most `max_requests` requests, none issued after `max_duration_s`, at most
//! `max_in_flight` outstanding (arrivals beyond it are counted as `dropped`, not queued, so the
//! load stays open-loop), and every request ends within `request_timeout_s`.

use std::collections::BTreeMap;
use std::time::Duration;

use goodput_core::Slo;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::workload::{RequestSpec, Workload};

use super::LiveError;
use super::protocol::{Api, CHARS_PER_TOKEN};

/// How to run a load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URLs (`http://127.0.0.1:8000`), used round-robin.
    pub urls: Vec<String>,
    pub api: Api,
    /// `model` to send; left out when `None`.
    pub model: Option<String>,
    pub slo: Option<Slo>,
    pub max_requests: usize,
    /// No request is issued after this many seconds.
    pub max_duration_s: f64,
    pub request_timeout_s: f64,
    pub max_in_flight: usize,
    /// Varies the prompt text between runs (same seed, same text).
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8000".into()],
            api: Api::Completions,
            model: None,
            slo: None,
            max_requests: 100_000,
            max_duration_s: 3600.0,
            request_timeout_s: 300.0,
            max_in_flight: 10_000,
            seed: 0,
        }
    }
}

/// What the client saw of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestSample {
    /// Position in the workload.
    pub id: u64,
    /// Which URL it went to.
    pub target: usize,
    /// Seconds from the start of the load at which it was sent.
    pub sent_s: f64,
    /// `None` when it completed; otherwise the kind of failure.
    pub error: Option<String>,
    pub ttft_s: Option<f64>,
    /// Gaps between successive content chunks, seconds.
    pub itl_s: Vec<f64>,
    pub e2e_s: Option<f64>,
    /// Completion tokens (from the usage chunk, else counted chunks).
    pub output_tokens: u32,
}

impl RequestSample {
    /// Mean time per output token after the first, seconds (0 for one-token outputs).
    pub fn tpot_s(&self) -> Option<f64> {
        let (ttft, e2e) = (self.ttft_s?, self.e2e_s?);
        Some(if self.output_tokens > 1 {
            (e2e - ttft) / f64::from(self.output_tokens - 1)
        } else {
            0.0
        })
    }
}

/// Percentiles of one latency, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (seconds), reported in ms; `None` when empty.
    pub fn of_seconds(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().map(|x| x * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Some(Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// SLO attainment over every request sent (a failed request misses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SloAttainment {
    pub ttft_ms: f64,
    pub itl_ms: f64,
    /// Share meeting both targets (TTFT, and mean ITL per request as `Slo::met_by` counts it).
    pub attainment: f64,
    pub ttft_met: f64,
    pub itl_met: f64,
}

/// The outcome of a load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub targets: Vec<String>,
    pub workload: String,
    /// Requests the workload offered within the bounds.
    pub planned: usize,
    pub sent: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failures by kind (`http 500`, `connect`, `timeout`, `stream`, ...).
    pub errors: BTreeMap<String, usize>,
    /// Not sent because `max_in_flight` requests were outstanding.
    pub dropped: usize,
    pub wall_s: f64,
    /// Requests sent per second of the sending span.
    pub offered_rate: f64,
    /// Completed requests per second of wall time.
    pub completed_rate: f64,
    pub output_tokens_per_s: f64,
    pub ttft_ms: Option<Percentiles>,
    /// Every gap between content chunks.
    pub itl_ms: Option<Percentiles>,
    /// Per-request mean time per output token.
    pub tpot_ms: Option<Percentiles>,
    pub e2e_ms: Option<Percentiles>,
    pub slo: Option<SloAttainment>,
}

/// The prompt text of a workload request: `input_tokens` words of [`CHARS_PER_TOKEN`]
/// characters. Tokens covered by hash id `h` depend only on `h` (and the seed), the rest only on
/// the request.
pub fn synth_prompt(req: &RequestSpec, hash_block_tokens: u32, seed: u64) -> String {
    let hbt = hash_block_tokens.max(1) as usize;
    let mut s = String::with_capacity(req.input_tokens as usize * CHARS_PER_TOKEN);
    for i in 0..req.input_tokens as usize {
        let key = match req.hash_ids.get(i / hbt) {
            Some(h) => super::splitmix64(seed ^ super::splitmix64(*h)) ^ (i % hbt) as u64,
            None => {
                super::splitmix64(seed ^ 0xa5a5 ^ super::splitmix64(req.id)) ^ ((i as u64) << 20)
            }
        };
        let x = super::splitmix64(key);
        for k in 0..CHARS_PER_TOKEN - 1 {
            s.push(char::from(b'a' + ((x >> (8 * k)) % 26) as u8));
        }
        s.push(' ');
    }
    s
}

fn request_body(cfg: &LoadConfig, req: &RequestSpec, hbt: u32) -> Value {
    let prompt = synth_prompt(req, hbt, cfg.seed);
    let mut body = match cfg.api {
        Api::Completions => serde_json::json!({"prompt": prompt, "max_tokens": req.output_tokens}),
        Api::Chat => serde_json::json!({
            "messages": [{"role": "user", "content": prompt}],
            "max_completion_tokens": req.output_tokens,
        }),
    };
    body["min_tokens"] = req.output_tokens.into();
    body["ignore_eos"] = true.into();
    body["stream"] = true.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    if let Some(m) = &cfg.model {
        body["model"] = m.clone().into();
    }
    body
}

fn endpoint(base: &str, api: Api) -> String {
    let base = base.trim_end_matches('/');
    let path = match api {
        Api::Completions => "/v1/completions",
        Api::Chat => "/v1/chat/completions",
    };
    if base.ends_with(path) {
        base.to_string()
    } else {
        format!("{base}{path}")
    }
}

/// Runs the load and returns the report with every request's sample.
pub async fn run_load(
    cfg: &LoadConfig,
    workload: &Workload,
) -> Result<(LoadReport, Vec<RequestSample>), LiveError> {
    if cfg.urls.is_empty() {
        return Err(LiveError::Invalid {
            field: "url",
            reason: "at least one URL is needed".into(),
        });
    }
    for (field, v) in [
        ("max_duration_s", cfg.max_duration_s),
        ("request_timeout_s", cfg.request_timeout_s),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(LiveError::Invalid {
                field,
                reason: "must be positive".into(),
            });
        }
    }
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(LiveError::Client)?;
    let endpoints: Vec<String> = cfg.urls.iter().map(|u| endpoint(u, cfg.api)).collect();
    let timeout = Duration::from_secs_f64(cfg.request_timeout_s);
    let start = Instant::now();
    let mut set: JoinSet<RequestSample> = JoinSet::new();
    let mut samples = Vec::new();
    let mut planned = 0;
    let mut dropped = 0;
    let mut last_sent = 0.0f64;
    for (i, req) in workload.requests.iter().enumerate() {
        if i >= cfg.max_requests || req.arrival_s > cfg.max_duration_s {
            break;
        }
        planned += 1;
        let at = start + Duration::from_secs_f64(req.arrival_s.max(0.0));
        tokio::time::sleep_until(at).await;
        while let Some(r) = set.try_join_next() {
            if let Ok(s) = r {
                samples.push(s);
            }
        }
        if set.len() >= cfg.max_in_flight {
            dropped += 1;
            continue;
        }
        let target = i % endpoints.len();
        let url = endpoints[target].clone();
        let body = request_body(cfg, req, workload.hash_block_tokens);
        let client = client.clone();
        let id = req.id;
        let sent_s = start.elapsed().as_secs_f64();
        last_sent = sent_s;
        set.spawn(async move {
            let mut s = one_request(&client, &url, &body, timeout).await;
            s.id = id;
            s.target = target;
            s.sent_s = sent_s;
            s
        });
    }
    // Every request carries its own timeout, so this ends.
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            samples.push(s);
        }
    }
    samples.sort_by_key(|s| s.id);
    let wall_s = start.elapsed().as_secs_f64();
    let report = summarise(cfg, workload, &samples, planned, dropped, wall_s, last_sent);
    Ok((report, samples))
}

async fn one_request(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> RequestSample {
    let mut s = RequestSample {
        id: 0,
        target: 0,
        sent_s: 0.0,
        error: None,
        ttft_s: None,
        itl_s: Vec::new(),
        e2e_s: None,
        output_tokens: 0,
    };
    let t0 = Instant::now();
    let fail = |s: &mut RequestSample, e: &reqwest::Error| {
        s.error = Some(if e.is_timeout() {
            "timeout".into()
        } else if e.is_connect() {
            "connect".into()
        } else {
            "transport".into()
        });
    };
    let mut resp = match client.post(url).json(body).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => {
            fail(&mut s, &e);
            return s;
        }
    };
    if !resp.status().is_success() {
        s.error = Some(format!("http {}", resp.status().as_u16()));
        return s;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<f64> = None;
    let mut chunks = 0u32;
    let mut usage_tokens = None;
    let mut done = false;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                fail(&mut s, &e);
                if s.error.as_deref() == Some("transport") {
                    s.error = Some("stream".into());
                }
                return s;
            }
        };
        let now = t0.elapsed().as_secs_f64();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            for line in event.split(|b| *b == b'\n') {
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                if data == b"[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<Value>(data) else {
                    s.error = Some("stream".into());
                    return s;
                };
                if v.get("error").is_some() {
                    s.error = Some("stream error".into());
                    return s;
                }
                if let Some(n) = v
                    .get("usage")
                    .and_then(|u| u.get("completion_tokens"))
                    .and_then(Value::as_u64)
                {
                    usage_tokens = Some(n as u32);
                }
                let choice = v.get("choices").and_then(|c| c.get(0));
                let text = choice.and_then(|c| {
                    c.get("text")
                        .or_else(|| c.get("delta").and_then(|d| d.get("content")))
                        .and_then(Value::as_str)
                });
                if text.is_some_and(|t| !t.is_empty()) {
                    chunks += 1;
                    match last {
                        None => s.ttft_s = Some(now),
                        Some(l) => s.itl_s.push(now - l),
                    }
                    last = Some(now);
                }
            }
        }
    }
    if !done {
        s.error = Some("stream".into());
        return s;
    }
    s.e2e_s = Some(t0.elapsed().as_secs_f64());
    s.output_tokens = usage_tokens.unwrap_or(chunks);
    s
}

/// Summarises samples into a report.
pub fn summarise(
    cfg: &LoadConfig,
    workload: &Workload,
    samples: &[RequestSample],
    planned: usize,
    dropped: usize,
    wall_s: f64,
    sending_span_s: f64,
) -> LoadReport {
    let ok: Vec<&RequestSample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let mut errors = BTreeMap::new();
    for s in samples {
        if let Some(e) = &s.error {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
    }
    let ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft_s).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|s| s.itl_s.iter().copied()).collect();
    let tpot: Vec<f64> = ok.iter().filter_map(|s| s.tpot_s()).collect();
    let e2e: Vec<f64> = ok.iter().filter_map(|s| s.e2e_s).collect();
    let tokens: u64 = ok.iter().map(|s| u64::from(s.output_tokens)).sum();
    let slo = cfg.slo.map(|slo| {
        let n = samples.len().max(1) as f64;
        let meets = |f: &dyn Fn(&RequestSample) -> bool| {
            samples.iter().filter(|s| s.error.is_none() && f(s)).count() as f64 / n
        };
        SloAttainment {
            ttft_ms: slo.ttft_ms,
            itl_ms: slo.itl_ms,
            attainment: meets(&|s| {
                slo.met_by(
                    s.ttft_s.unwrap_or(f64::INFINITY),
                    s.tpot_s().unwrap_or(f64::INFINITY),
                )
            }),
            ttft_met: meets(&|s| s.ttft_s.is_some_and(|t| t * 1e3 <= slo.ttft_ms)),
            itl_met: meets(&|s| s.tpot_s().is_some_and(|t| t * 1e3 <= slo.itl_ms)),
        }
    });
    let per = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
    LoadReport {
        targets: cfg.urls.clone(),
        workload: workload.name.clone(),
        planned,
        sent: samples.len(),
        completed: ok.len(),
        failed: samples.len() - ok.len(),
        errors,
        dropped,
        wall_s,
        offered_rate: if sending_span_s > 0.0 {
            samples.len().saturating_sub(1) as f64 / sending_span_s
        } else {
            0.0
        },
        completed_rate: per(ok.len() as f64),
        output_tokens_per_s: per(tokens as f64),
        ttft_ms: Percentiles::of_seconds(&ttft),
        itl_ms: Percentiles::of_seconds(&itl),
        tpot_ms: Percentiles::of_seconds(&tpot),
        e2e_ms: Percentiles::of_seconds(&e2e),
        slo,
    }
}

/// The report as a text table.
pub fn render_text(r: &LoadReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "load: {} against {}", r.workload, r.targets.join(", "));
    let _ = writeln!(
        out,
        "requests: {} planned, {} sent, {} completed, {} failed, {} dropped (in-flight cap)",
        r.planned, r.sent, r.completed, r.failed, r.dropped
    );
    for (k, v) in &r.errors {
        let _ = writeln!(out, "  error {k}: {v}");
    }
    let _ = writeln!(
        out,
        "wall {:.2} s, offered {:.2} req/s, completed {:.2} req/s, {:.1} output tok/s",
        r.wall_s, r.offered_rate, r.completed_rate, r.output_tokens_per_s
    );
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "ms", "n", "mean", "p50", "p90", "p95", "p99", "max"
    );
    for (name, p) in [
        ("ttft", r.ttft_ms),
        ("itl", r.itl_ms),
        ("tpot", r.tpot_ms),
        ("e2e", r.e2e_ms),
    ] {
        match p {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "{name:<10} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    p.count, p.mean, p.p50, p.p90, p.p95, p.p99, p.max
                );
            }
            None => {
                let _ = writeln!(out, "{name:<10} {:>7}", 0);
            }
        }
    }
    if let Some(s) = r.slo {
        let _ = writeln!(
            out,
            "SLO ttft <= {} ms and itl <= {} ms: {:.1} % of sent requests (ttft {:.1} %, itl {:.1} %)",
            s.ttft_ms,
            s.itl_ms,
            s.attainment * 100.0,
            s.ttft_met * 100.0,
            s.itl_met * 100.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::protocol::text_prompt_tokens;

    #[test]
    fn synthetic_prompts_have_the_requested_tokens_and_shared_prefixes() {
        let a = RequestSpec {
            id: 1,
            arrival_s: 0.0,
            input_tokens: 100,
            output_tokens: 1,
            hash_ids: vec![7, 8, 9],
        };
        let b = RequestSpec {
            id: 2,
            hash_ids: vec![7, 8, 10],
            ..a.clone()
        };
        let (pa, ha) = text_prompt_tokens(&synth_prompt(&a, 32, 0));
        let (pb, hb) = text_prompt_tokens(&synth_prompt(&b, 32, 0));
        assert_eq!((pa, pb), (100, 100));
        // 64 shared tokens = 4 shared 16-token blocks.
        assert_eq!(ha[..4], hb[..4]);
        assert_ne!(ha[4], hb[4]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|i| f64::from(i) / 1e3).collect();
        let p = Percentiles::of_seconds(&v).unwrap();
        assert!((p.p50 - 50.0).abs() < 1e-9 && (p.p99 - 99.0).abs() < 1e-9);
    }
}
