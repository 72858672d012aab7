//! `/metrics` of a live server: the engine's counters and gauges rendered in the Prometheus text
//! format (0.0.4) exactly as vLLM's Python client writes them: `vllm:` names, counters exposed
//! with `_total`, histograms with vLLM's bucket bounds, labels sorted by name (`engine`,
//! `finished_reason`, `le`, `model_name`), numbers in Python's float form (`1.0`, `2560.0`,
//! `1.7e+09`) and a `_created` gauge family per counter and histogram.
//!
//! Data flow: the engine driver hands a [`MetricsSnapshot`] (a copy of the engine's counters,
//! the server-side request counters and the gauges at the scrape instant) to [`render`], which
//! returns the page.

use std::fmt::Write;

use goodput_core::vllm::{Histogram, ITL_BUCKETS, buckets_1_2_5};

use crate::engine::EngineCounters;

/// `vllm:request_params_n` buckets.
pub const PARAMS_N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];

/// Why a request finished, as `vllm:request_success_total{finished_reason}` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    /// Every reason, pre-created at 0 as vLLM does.
    pub const ALL: [FinishReason; 3] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
    ];

    /// The OpenAI/vLLM string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Request-level metrics the engine model does not keep (they depend on the request's
/// parameters): finish reasons and the sampling-parameter histograms.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCounters {
    /// `vllm:request_success_total` per [`FinishReason::ALL`] entry.
    pub success: [u64; 3],
    pub params_n: Histogram,
    pub params_max_tokens: Histogram,
    pub max_num_generation_tokens: Histogram,
}

impl ServerCounters {
    /// Empty counters for a model with this context length.
    pub fn new(max_model_len: u64) -> Self {
        let lengths = buckets_1_2_5(max_model_len);
        Self {
            success: [0; 3],
            params_n: Histogram::new(PARAMS_N_BUCKETS),
            params_max_tokens: Histogram::new(&lengths),
            max_num_generation_tokens: Histogram::new(&lengths),
        }
    }

    /// Records a finished request.
    pub fn finished(&mut self, reason: FinishReason, max_tokens: u32, generated: u32) {
        let i = FinishReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.success[i] += 1;
        self.params_n.observe(1.0);
        if max_tokens > 0 {
            self.params_max_tokens.observe(f64::from(max_tokens));
        }
        self.max_num_generation_tokens.observe(f64::from(generated));
    }
}

/// Static KV-cache configuration (`vllm:cache_config_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheInfo {
    pub block_size: u32,
    pub num_gpu_blocks: u64,
    pub gpu_memory_utilization: f64,
    pub enable_prefix_caching: bool,
}

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub model_name: String,
    /// DP engine index label (`"0"`).
    pub engine: String,
    pub counters: EngineCounters,
    pub server: ServerCounters,
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub cache: CacheInfo,
    /// Unix time the series were created (server start), for the `_created` families.
    pub created_unix: f64,
    /// Also emit the deprecated names (`vllm:time_per_output_token_seconds`,
    /// `vllm:gpu_cache_usage_perc`, `vllm:gpu_prefix_cache_*`), as vLLM does with
    /// `--show-hidden-metrics-for-version`.
    pub deprecated: bool,
}

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Python's `repr(float)`.
pub fn py_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Shortest round-trip digits in scientific form, exponent signed with >= 2 digits.
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// prometheus_client's `floatToGoString`: how sample values and `le` bounds are printed.
pub fn go_float(v: f64) -> String {
    if v == f64::INFINITY {
        return "+Inf".into();
    }
    if v == f64::NEG_INFINITY {
        return "-Inf".into();
    }
    if v.is_nan() {
        return "NaN".into();
    }
    let s = py_repr(v);
    if let Some(dot) = s.find('.')
        && v > 0.0
        && dot > 6
    {
        let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
        let mantissa = format!("{}.{}", &s[..1], digits);
        let mantissa = mantissa.trim_end_matches(['0', '.']);
        return format!("{mantissa}e+0{}", dot - 1);
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('\n', r"\n")
        .replace('"', "\\\"")
}

/// Writes families into a page.
struct Page<'a> {
    out: String,
    base: Vec<(&'static str, &'a str)>,
    created: f64,
}

impl<'a> Page<'a> {
    fn labels(&self, extra: &[(&'static str, &str)]) -> String {
        let mut all: Vec<(&str, &str)> = self.base.iter().map(|(k, v)| (*k, *v)).collect();
        all.extend(extra.iter().map(|(k, v)| (*k, *v)));
        all.sort_by(|a, b| a.0.cmp(b.0));
        let inner: Vec<String> = all
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        format!("{{{}}}", inner.join(","))
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&'static str, &str)], v: f64) {
        let labels = self.labels(extra);
        let _ = writeln!(self.out, "{name}{labels} {}", go_float(v));
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], v);
    }

    fn created_family(&mut self, base: &str, help: &str, series: &[Vec<(&'static str, &str)>]) {
        let name = format!("{base}_created");
        self.header(&name, help, "gauge");
        for extra in series {
            self.sample(&name, extra, self.created);
        }
    }

    /// A counter declared as `base` (exposed `base_total`) with one series per label set.
    fn counter(&mut self, base: &str, help: &str, series: &[(Vec<(&'static str, &str)>, u64)]) {
        let total = format!("{base}_total");
        self.header(&total, help, "counter");
        for (extra, v) in series {
            self.sample(&total, extra, *v as f64);
        }
        let labels: Vec<_> = series.iter().map(|(l, _)| l.clone()).collect();
        self.created_family(base, help, &labels);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let cumulative = h.cumulative();
        for (i, c) in cumulative.iter().enumerate() {
            let le = h
                .bounds()
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| go_float(*b));
            self.sample(&bucket, &[("le", &le)], *c as f64);
        }
        self.sample(&format!("{name}_count"), &[], h.count() as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum());
        self.created_family(name, help, &[Vec::new()]);
    }
}

/// Renders the page.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut p = Page {
        out: String::with_capacity(32 * 1024),
        base: vec![("model_name", &s.model_name), ("engine", &s.engine)],
        created: s.created_unix,
    };
    let c = &s.counters;
    p.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        s.running as f64,
    );
    p.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        s.waiting as f64,
    );
    p.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        s.kv_usage,
    );
    if s.deprecated {
        p.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: use vllm:kv_cache_usage_perc.",
            s.kv_usage,
        );
    }
    p.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        &[(vec![], c.prefix_queries)],
    );
    p.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        &[(vec![], c.prefix_hits)],
    );
    if s.deprecated {
        p.counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in tokens. DEPRECATED: use vllm:prefix_cache_queries.",
            &[(vec![], c.prefix_queries)],
        );
        p.counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in tokens. DEPRECATED: use vllm:prefix_cache_hits.",
            &[(vec![], c.prefix_hits)],
        );
    }
    p.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemptions from the engine.",
        &[(vec![], c.preemptions)],
    );
    p.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &[(vec![], c.prompt_tokens)],
    );
    p.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &[(vec![], c.generation_tokens)],
    );
    let success: Vec<(Vec<(&'static str, &str)>, u64)> = FinishReason::ALL
        .iter()
        .zip(s.server.success)
        .map(|(r, n)| (vec![("finished_reason", r.as_str())], n))
        .collect();
    p.counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &success,
    );
    p.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        &c.prompt_tokens_hist,
    );
    p.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        &c.generation_tokens_hist,
    );
    p.histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        &c.iteration_tokens,
    );
    p.histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        &s.server.max_num_generation_tokens,
    );
    p.histogram(
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        &s.server.params_n,
    );
    p.histogram(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        &s.server.params_max_tokens,
    );
    p.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &c.ttft,
    );
    p.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &c.itl,
    );
    if s.deprecated {
        p.histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds. DEPRECATED: use vllm:inter_token_latency_seconds.",
            &c.itl,
        );
    }
    debug_assert_eq!(c.tpot.bounds(), ITL_BUCKETS);
    p.histogram(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        &c.tpot,
    );
    p.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &c.e2e,
    );
    p.histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &c.queue,
    );
    p.histogram(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        &c.inference,
    );
    p.histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        &c.prefill,
    );
    p.histogram(
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        &c.decode,
    );
    // Information gauge: the CacheConfig fields as strings (Python's str()), no model_name.
    let block_size = s.cache.block_size.to_string();
    let blocks = s.cache.num_gpu_blocks.to_string();
    let util = py_repr(s.cache.gpu_memory_utilization);
    let prefix = if s.cache.enable_prefix_caching {
        "True"
    } else {
        "False"
    };
    p.header(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        "gauge",
    );
    p.base = vec![("engine", &s.engine)];
    p.sample(
        "vllm:cache_config_info",
        &[
            ("block_size", &block_size),
            ("cache_dtype", "auto"),
            ("calculate_kv_scales", "False"),
            ("cpu_offload_gb", "0"),
            ("enable_prefix_caching", prefix),
            ("gpu_memory_utilization", &util),
            ("is_attention_free", "False"),
            ("num_cpu_blocks", "0"),
            ("num_gpu_blocks", &blocks),
            ("num_gpu_blocks_override", "None"),
            ("prefix_caching_hash_algo", "builtin"),
            ("sliding_window", "None"),
            ("swap_space", "4"),
        ],
        1.0,
    );
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_client() {
        assert_eq!(go_float(1.0), "1.0");
        assert_eq!(go_float(2560.0), "2560.0");
        assert_eq!(go_float(0.001), "0.001");
        assert_eq!(go_float(0.025), "0.025");
        assert_eq!(go_float(100000.0), "100000.0");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(1_760_000_000.5), "1.7600000005e+09");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(1e-5), "1e-05");
        assert_eq!(go_float(0.0), "0.0");
        assert_eq!(py_repr(0.9), "0.9");
    }

    #[test]
    fn page_has_sorted_labels_and_created() {
        let s = MetricsSnapshot {
            model_name: "m".into(),
            engine: "0".into(),
            counters: EngineCounters::new(4096),
            server: ServerCounters::new(4096),
            running: 2,
            waiting: 1,
            kv_usage: 0.25,
            cache: CacheInfo {
                block_size: 16,
                num_gpu_blocks: 100,
                gpu_memory_utilization: 0.9,
                enable_prefix_caching: true,
            },
            created_unix: 1.0,
            deprecated: false,
        };
        let page = render(&s);
        assert!(page.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\n"));
        assert!(page.contains(
            "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"2560.0\",model_name=\"m\"} 0.0\n"
        ));
        assert!(page.contains(
            "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"m\"} 0.0\n"
        ));
        assert!(page.contains("# TYPE vllm:prompt_tokens_created gauge\n"));
        assert!(page.contains("num_gpu_blocks=\"100\""));
        assert!(!page.contains("vllm:time_per_output_token_seconds_bucket"));
    }
}
