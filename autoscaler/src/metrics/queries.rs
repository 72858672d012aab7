//! Every PromQL query goodput uses, built from a [`Scope`].
//!
//! Conventions (from vLLM's exposition): counters carry `_total`, histograms `_bucket`/`_sum`/
//! `_count`, every engine series carries `model_name`. Rates are `sum by (group) (rate(x[w]))`,
//! quantiles `histogram_quantile(q, sum by (group, le) (rate(x_bucket[w])))`, gauges are summed
//! (queue, running) or averaged (KV usage) over the replicas of a group. Inter-token latency reads
//! `vllm:inter_token_latency_seconds` and falls back to the pre-0.11 name
//! `vllm:time_per_output_token_seconds` only for groups where the new one is absent (a regex
//! union over both would double-count on v0.11, which emits both).

/// Errors in a scope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScopeError {
    #[error("`{0}` is not a valid Prometheus label name")]
    LabelName(String),
    #[error("`{0}` is not a valid PromQL range duration (e.g. 30s, 1m, 5m)")]
    Window(String),
}

/// Which series a query covers and how it groups them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// Value of `model_name` (vLLM's served model name).
    pub model: String,
    /// Label that names the variant on every series (set by relabelling pod labels).
    pub variant_label: String,
    /// Label that names the pod (or scrape target) on every series.
    pub pod_label: String,
    /// Extra equality matchers, e.g. `namespace="llm"`.
    pub matchers: Vec<(String, String)>,
    /// Range of `rate()` and histogram quantiles.
    pub window: String,
}

impl Scope {
    /// A scope for `model`, grouping by `variant` and `pod` labels over a one-minute window.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            variant_label: "variant".into(),
            pod_label: "pod".into(),
            matchers: Vec::new(),
            window: "1m".into(),
        }
    }

    /// Checks label names and the window.
    pub fn validate(&self) -> Result<(), ScopeError> {
        for name in [&self.variant_label, &self.pod_label]
            .into_iter()
            .chain(self.matchers.iter().map(|(k, _)| k))
        {
            if !valid_label_name(name) {
                return Err(ScopeError::LabelName(name.clone()));
            }
        }
        if !valid_duration(&self.window) {
            return Err(ScopeError::Window(self.window.clone()));
        }
        Ok(())
    }

    /// The label selector body: `model_name="m",k="v"`.
    pub fn selector(&self) -> String {
        let mut s = format!("model_name=\"{}\"", escape(&self.model));
        for (k, v) in &self.matchers {
            s.push_str(&format!(",{k}=\"{}\"", escape(v)));
        }
        s
    }
}

/// Escapes a label value for a double-quoted PromQL string.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "ms" | "s" | "m" | "h" | "d")
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

/// The labels a query groups by, comma-separated.
pub fn group_by(labels: &[&str]) -> String {
    labels.join(", ")
}

fn rate_sum(metric: &str, scope: &Scope, by: &str) -> String {
    format!(
        "sum by ({by}) (rate({metric}{{{}}}[{}]))",
        scope.selector(),
        scope.window
    )
}

fn quantile(q: f64, bucket: &str, scope: &Scope, by: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by ({by}, le) (rate({bucket}{{{}}}[{}])))",
        scope.selector(),
        scope.window
    )
}

/// Finished requests per second (`vllm:request_success_total`).
pub fn request_rate(scope: &Scope, by: &str) -> String {
    rate_sum("vllm:request_success_total", scope, by)
}

/// Prompt tokens per second.
pub fn prompt_token_rate(scope: &Scope, by: &str) -> String {
    rate_sum("vllm:prompt_tokens_total", scope, by)
}

/// Generated tokens per second.
pub fn generation_token_rate(scope: &Scope, by: &str) -> String {
    rate_sum("vllm:generation_tokens_total", scope, by)
}

/// Mean prompt tokens per finished request.
pub fn mean_prompt_tokens(scope: &Scope, by: &str) -> String {
    format!(
        "{} / {}",
        rate_sum("vllm:request_prompt_tokens_sum", scope, by),
        rate_sum("vllm:request_prompt_tokens_count", scope, by)
    )
}

/// Mean generated tokens per finished request.
pub fn mean_output_tokens(scope: &Scope, by: &str) -> String {
    format!(
        "{} / {}",
        rate_sum("vllm:request_generation_tokens_sum", scope, by),
        rate_sum("vllm:request_generation_tokens_count", scope, by)
    )
}

/// Quantile `q` of prompt length (tail input tokens).
pub fn prompt_tokens_quantile(q: f64, scope: &Scope, by: &str) -> String {
    quantile(q, "vllm:request_prompt_tokens_bucket", scope, by)
}

/// Quantile `q` of output length.
pub fn output_tokens_quantile(q: f64, scope: &Scope, by: &str) -> String {
    quantile(q, "vllm:request_generation_tokens_bucket", scope, by)
}

/// Quantile `q` of time to first token, seconds.
pub fn ttft_quantile(q: f64, scope: &Scope, by: &str) -> String {
    quantile(q, "vllm:time_to_first_token_seconds_bucket", scope, by)
}

/// Quantile `q` of inter-token latency, seconds, with the pre-0.11 name as a fallback.
pub fn itl_quantile(q: f64, scope: &Scope, by: &str) -> String {
    format!(
        "({}) or ({})",
        quantile(q, "vllm:inter_token_latency_seconds_bucket", scope, by),
        quantile(q, "vllm:time_per_output_token_seconds_bucket", scope, by)
    )
}

/// Requests queued, summed over the group's replicas.
pub fn waiting(scope: &Scope, by: &str) -> String {
    format!(
        "sum by ({by}) (vllm:num_requests_waiting{{{}}})",
        scope.selector()
    )
}

/// Requests running, summed.
pub fn running(scope: &Scope, by: &str) -> String {
    format!(
        "sum by ({by}) (vllm:num_requests_running{{{}}})",
        scope.selector()
    )
}

/// KV-cache usage (0-1), averaged over the group's replicas.
pub fn kv_usage(scope: &Scope, by: &str) -> String {
    format!(
        "avg by ({by}) (vllm:kv_cache_usage_perc{{{}}})",
        scope.selector()
    )
}

/// Prefix-cache hit rate: hit tokens over queried tokens.
pub fn prefix_hit_rate(scope: &Scope, by: &str) -> String {
    format!(
        "{} / {}",
        rate_sum("vllm:prefix_cache_hits_total", scope, by),
        rate_sum("vllm:prefix_cache_queries_total", scope, by)
    )
}

/// Preemptions per second.
pub fn preemption_rate(scope: &Scope, by: &str) -> String {
    rate_sum("vllm:num_preemptions_total", scope, by)
}

/// Replicas reporting (series of the running gauge).
pub fn replicas(scope: &Scope, by: &str) -> String {
    format!(
        "count by ({by}) (vllm:num_requests_running{{{}}})",
        scope.selector()
    )
}

/// Demand at the gateway for lack of an endpoint: requests goodput's scheduler holds now plus
/// those it answered `no_endpoint` over `window`, over the scheduler series `matchers` select.
/// Empty when no `goodput_scheduler_requests_waiting` series matches (no signal, as opposed to
/// a signal of zero).
pub fn gateway_demand(matchers: &[(String, String)], window: &str) -> String {
    let sel: Vec<String> = matchers
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let no_endpoint: Vec<String> = std::iter::once("outcome=\"no_endpoint\"".to_string())
        .chain(sel.iter().cloned())
        .collect();
    format!(
        "sum(goodput_scheduler_requests_waiting{{{}}}) + (sum(increase(goodput_scheduler_picks_total{{{}}}[{window}])) or vector(0))",
        sel.join(","),
        no_endpoint.join(",")
    )
}

/// Checks the label names of `matchers`.
pub fn validate_matchers(matchers: &[(String, String)]) -> Result<(), ScopeError> {
    match matchers.iter().find(|(k, _)| !valid_label_name(k)) {
        Some((k, _)) => Err(ScopeError::LabelName(k.clone())),
        None => Ok(()),
    }
}

/// Age of the newest scraped sample, seconds: large means the data is stale.
pub fn sample_age(scope: &Scope, by: &str) -> String {
    format!(
        "time() - max by ({by}) (timestamp(vllm:num_requests_running{{{}}}))",
        scope.selector()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_demand_adds_held_and_turned_away_requests() {
        let m = vec![("job".to_string(), "sched \"a\"".to_string())];
        validate_matchers(&m).unwrap();
        assert_eq!(
            gateway_demand(&m, "1m"),
            "sum(goodput_scheduler_requests_waiting{job=\"sched \\\"a\\\"\"}) + (sum(increase(goodput_scheduler_picks_total{outcome=\"no_endpoint\",job=\"sched \\\"a\\\"\"}[1m])) or vector(0))"
        );
        assert_eq!(
            gateway_demand(&[], "30s"),
            "sum(goodput_scheduler_requests_waiting{}) + (sum(increase(goodput_scheduler_picks_total{outcome=\"no_endpoint\"}[30s])) or vector(0))"
        );
        assert!(validate_matchers(&[("bad-name".into(), "x".into())]).is_err());
    }

    #[test]
    fn queries_select_the_model_and_group_by_variant() {
        let mut s = Scope::new("llama \"8b\"");
        s.matchers.push(("namespace".into(), "llm".into()));
        s.window = "2m".into();
        s.validate().unwrap();
        assert_eq!(
            request_rate(&s, "variant"),
            "sum by (variant) (rate(vllm:request_success_total{model_name=\"llama \\\"8b\\\"\",namespace=\"llm\"}[2m]))"
        );
        let q = ttft_quantile(0.95, &s, "variant, pod");
        assert!(q.starts_with("histogram_quantile(0.95, sum by (variant, pod, le) (rate(vllm:time_to_first_token_seconds_bucket{"));
        let itl = itl_quantile(0.5, &s, "variant");
        assert!(itl.contains("inter_token_latency_seconds_bucket") && itl.contains(") or ("));
    }

    #[test]
    fn bad_label_names_and_windows_are_rejected() {
        let mut s = Scope::new("m");
        s.variant_label = "llm-d.ai/variant".into();
        assert_eq!(
            s.validate(),
            Err(ScopeError::LabelName("llm-d.ai/variant".into()))
        );
        let mut s = Scope::new("m");
        s.window = "1 minute".into();
        assert!(matches!(s.validate(), Err(ScopeError::Window(_))));
        for ok in ["30s", "1m", "5m", "1h", "500ms"] {
            let mut s = Scope::new("m");
            s.window = ok.into();
            assert!(s.validate().is_ok(), "{ok}");
        }
        let mut s = Scope::new("m");
        s.window = "0s".into();
        assert!(s.validate().is_err());
    }
}
