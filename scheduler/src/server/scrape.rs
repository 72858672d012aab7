//! Reading an endpoint's load from its vLLM `/metrics` text: running and waiting requests and
//! KV-cache usage, summed over the engines the exposition lists.
//!
//! Pure parser ([`parse_vllm_metrics`]) of outside input: property-tested on arbitrary text;
//! a missing metric or a malformed value is an error naming it, never a panic.

/// What one scrape says.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scraped {
    pub running: u32,
    pub waiting: u32,
    /// 0..1.
    pub kv_usage: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("metric `{0}` is missing from the exposition")]
    Missing(&'static str),
    #[error("metric `{name}`: value `{value}` is not a number")]
    BadValue { name: String, value: String },
}

const RUNNING: &str = "vllm:num_requests_running";
const WAITING: &str = "vllm:num_requests_waiting";
const KV: &str = "vllm:kv_cache_usage_perc";
const KV_OLD: &str = "vllm:gpu_cache_usage_perc";

/// Parses the Prometheus text exposition of a vLLM server.
pub fn parse_vllm_metrics(text: &str) -> Result<Scraped, ScrapeError> {
    let (mut running, mut waiting, mut kv, mut kv_old) = (None, None, None, None);
    let mut kv_n = 0u32;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let slot = match name {
            RUNNING => &mut running,
            WAITING => &mut waiting,
            KV => &mut kv,
            KV_OLD => &mut kv_old,
            _ => continue,
        };
        // The value follows the label set (whose values may contain spaces) or the name.
        let rest = &line[name_end..];
        let rest = match rest.strip_prefix('{') {
            Some(r) => match r.rfind('}') {
                Some(i) => &r[i + 1..],
                None => {
                    return Err(ScrapeError::BadValue {
                        name: name.into(),
                        value: rest.into(),
                    });
                }
            },
            None => rest,
        };
        let value = rest.split_whitespace().next().unwrap_or("");
        let v: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ScrapeError::BadValue {
                name: name.into(),
                value: value.into(),
            })?;
        if name == KV {
            kv_n += 1;
        }
        *slot = Some(slot.unwrap_or(0.0) + v);
    }
    let count = |x: f64| x.round().min(f64::from(u32::MAX)) as u32;
    let kv = match (kv, kv_old) {
        (Some(k), _) => k / f64::from(kv_n.max(1)),
        (None, Some(k)) => k,
        (None, None) => return Err(ScrapeError::Missing(KV)),
    };
    Ok(Scraped {
        running: count(running.ok_or(ScrapeError::Missing(RUNNING))?),
        waiting: count(waiting.ok_or(ScrapeError::Missing(WAITING))?),
        kv_usage: kv.clamp(0.0, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_vllm_exposition() {
        let text = "# HELP vllm:num_requests_running Number of requests\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m x\"} 3.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
vllm:num_requests_running_other 9\n";
        let s = parse_vllm_metrics(text).unwrap();
        assert_eq!(
            s,
            Scraped {
                running: 3,
                waiting: 2,
                kv_usage: 0.25
            }
        );
    }

    #[test]
    fn errors_name_the_metric() {
        let e = parse_vllm_metrics("vllm:num_requests_running 1\n").unwrap_err();
        assert!(e.to_string().contains("vllm:kv_cache_usage_perc"), "{e}");
        let e = parse_vllm_metrics("vllm:num_requests_running{a=\"b\"} NaNx\n").unwrap_err();
        assert!(e.to_string().contains("vllm:num_requests_running"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "(vllm:[a-z_]{0,30}|#|\\{|\\}|\"| |[0-9.e+-]{0,6}|\n){0,40}") {
            let _ = parse_vllm_metrics(&s);
        }

        #[test]
        fn values_round_trip(r in 0u32..10_000, w in 0u32..10_000, kv in 0.0f64..1.0) {
            let text = format!("{RUNNING}{{engine=\"0\"}} {r}.0\n{WAITING} {w}\n{KV}{{engine=\"0\"}} {kv}\n");
            let s = parse_vllm_metrics(&text).unwrap();
            prop_assert_eq!((s.running, s.waiting), (r, w));
            prop_assert!((s.kv_usage - kv).abs() < 1e-12);
        }
    }
}
