//! Runs the queries of [`super::queries`] and assembles typed observations.
//!
//! One observation per group (a variant, or a variant's pod). Missing or non-finite answers
//! (no traffic yet, 0/0 ratios) leave the field at its empty value rather than inventing a
//! number; a failed query fails the whole collection, so that callers hold their last good
//! decision instead of deciding on half the picture.

use std::collections::BTreeMap;

use goodput_core::VariantLoad;

use super::client::{MetricsError, PromQuery, Series};
use super::queries::{self, Scope};

/// How observations are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One observation per variant.
    Variant,
    /// One per (variant, pod).
    Pod,
}

/// Observations keyed by the group's label values (variant, or variant and pod).
pub type Observation = BTreeMap<Vec<String>, VariantLoad>;

/// Collects every quantity for every group in `scope`.
pub async fn collect<C: PromQuery>(
    client: &C,
    scope: &Scope,
    grouping: Grouping,
) -> Result<Observation, MetricsError> {
    scope.validate()?;
    let labels: Vec<&str> = match grouping {
        Grouping::Variant => vec![scope.variant_label.as_str()],
        Grouping::Pod => vec![scope.variant_label.as_str(), scope.pod_label.as_str()],
    };
    let by = queries::group_by(&labels);
    let mut out: Observation = BTreeMap::new();
    let key = |s: &Series| -> Vec<String> {
        labels
            .iter()
            .map(|l| s.labels.get(*l).cloned().unwrap_or_default())
            .collect()
    };

    // Replica counts define the groups; every other answer is attached to them.
    for s in client.instant(&queries::replicas(scope, &by)).await? {
        out.entry(key(&s)).or_default().replicas_reporting = finite(s.value).unwrap_or(0.0) as u32;
    }

    type Setter = fn(&mut VariantLoad, f64);
    let plain: Vec<(String, Setter)> = vec![
        (queries::request_rate(scope, &by), |l, v| l.request_rate = v),
        (queries::prompt_token_rate(scope, &by), |l, v| {
            l.prompt_token_rate = v
        }),
        (queries::generation_token_rate(scope, &by), |l, v| {
            l.generation_token_rate = v
        }),
        (queries::mean_prompt_tokens(scope, &by), |l, v| {
            l.mean_prompt_tokens = v
        }),
        (queries::mean_output_tokens(scope, &by), |l, v| {
            l.mean_output_tokens = v
        }),
        (queries::waiting(scope, &by), |l, v| l.waiting = v),
        (queries::running(scope, &by), |l, v| l.running = v),
        (queries::kv_usage(scope, &by), |l, v| l.kv_usage = v),
        (queries::prefix_hit_rate(scope, &by), |l, v| {
            l.prefix_hit_rate = v
        }),
        (queries::preemption_rate(scope, &by), |l, v| {
            l.preemption_rate = v
        }),
        (queries::sample_age(scope, &by), |l, v| l.age_s = v),
        (queries::prompt_tokens_quantile(0.9, scope, &by), |l, v| {
            l.p90_prompt_tokens = Some(v)
        }),
        (queries::output_tokens_quantile(0.9, scope, &by), |l, v| {
            l.p90_output_tokens = Some(v)
        }),
        (queries::ttft_quantile(0.5, scope, &by), |l, v| {
            l.ttft_p50_s = Some(v)
        }),
        (queries::ttft_quantile(0.9, scope, &by), |l, v| {
            l.ttft_p90_s = Some(v)
        }),
        (queries::ttft_quantile(0.95, scope, &by), |l, v| {
            l.ttft_p95_s = Some(v)
        }),
        (queries::ttft_quantile(0.99, scope, &by), |l, v| {
            l.ttft_p99_s = Some(v)
        }),
        (queries::itl_quantile(0.5, scope, &by), |l, v| {
            l.itl_p50_s = Some(v)
        }),
        (queries::itl_quantile(0.9, scope, &by), |l, v| {
            l.itl_p90_s = Some(v)
        }),
        (queries::itl_quantile(0.95, scope, &by), |l, v| {
            l.itl_p95_s = Some(v)
        }),
        (queries::itl_quantile(0.99, scope, &by), |l, v| {
            l.itl_p99_s = Some(v)
        }),
    ];
    for (query, set) in plain {
        for s in client.instant(&query).await? {
            if let (Some(load), Some(v)) = (out.get_mut(&key(&s)), finite(s.value)) {
                set(load, v);
            }
        }
    }
    Ok(out)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Requests the gateway holds or turned away for lack of an endpoint
/// ([`queries::gateway_demand`]), rounded up; `None` when no scheduler series match.
pub async fn collect_gateway<C: PromQuery>(
    client: &C,
    matchers: &[(String, String)],
    window: &str,
) -> Result<Option<u32>, MetricsError> {
    queries::validate_matchers(matchers)?;
    let series = client
        .instant(&queries::gateway_demand(matchers, window))
        .await?;
    Ok(series
        .first()
        .and_then(|s| finite(s.value))
        .map(|v| v.max(0.0).ceil() as u32))
}

/// Whether an observation is too old to act on.
pub fn is_stale(load: &VariantLoad, max_age_s: f64) -> bool {
    !(load.age_s.is_finite() && load.age_s <= max_age_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a table of (query prefix, series).
    struct Fake(Vec<(&'static str, Vec<Series>)>);

    fn series(variant: &str, value: f64) -> Series {
        Series {
            labels: [("variant".to_string(), variant.to_string())]
                .into_iter()
                .collect(),
            value,
            timestamp: 0.0,
        }
    }

    impl PromQuery for Fake {
        async fn instant(&self, query: &str) -> Result<Vec<Series>, MetricsError> {
            if query.contains("kv_cache_usage_perc") && self.0.iter().any(|(p, _)| *p == "fail") {
                return Err(MetricsError::Unavailable {
                    query: query.into(),
                    message: "down".into(),
                });
            }
            Ok(self
                .0
                .iter()
                .filter(|(prefix, _)| query.starts_with(prefix))
                .flat_map(|(_, s)| s.clone())
                .collect())
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn answers_land_on_their_variant_and_nan_stays_empty() {
        let fake = Fake(vec![
            ("count by", vec![series("h100", 2.0), series("l40s", 3.0)]),
            (
                "sum by (variant) (rate(vllm:request_success_total",
                vec![series("h100", 4.5)],
            ),
            (
                "histogram_quantile(0.95, sum by (variant, le) (rate(vllm:time_to_first_token",
                vec![series("h100", 0.4), series("l40s", f64::NAN)],
            ),
            ("time() -", vec![series("h100", 3.0), series("l40s", 400.0)]),
            // A series for a variant without replicas is ignored.
            ("avg by", vec![series("ghost", 0.5)]),
        ]);
        let obs = run(collect(&fake, &Scope::new("m"), Grouping::Variant)).unwrap();
        let h = &obs[&vec!["h100".to_string()]];
        assert_eq!(h.replicas_reporting, 2);
        assert_eq!(h.request_rate, 4.5);
        assert_eq!(h.ttft_p95_s, Some(0.4));
        let l = &obs[&vec!["l40s".to_string()]];
        assert_eq!(l.ttft_p95_s, None);
        assert!(!is_stale(h, 60.0) && is_stale(l, 60.0));
        assert_eq!(obs.len(), 2);
    }

    #[test]
    fn one_failed_query_fails_the_collection() {
        let fake = Fake(vec![
            ("count by", vec![series("h100", 1.0)]),
            ("fail", vec![]),
        ]);
        let err = run(collect(&fake, &Scope::new("m"), Grouping::Variant)).unwrap_err();
        assert!(err.to_string().contains("kv_cache_usage_perc"), "{err}");
    }
}
