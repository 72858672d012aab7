//! Helpers shared by the live-server tests: a strict parser of the Prometheus text format
//! (0.0.4), written independently of the servers' renderer, and small HTTP helpers.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// One family: `# HELP`, `# TYPE` and its samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    // s starts after '{'
    let mut labels = Vec::new();
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&'}') {
            let consumed: usize = bytes[..=i].iter().map(|c| c.len_utf8()).sum();
            return Ok((labels, &s[consumed..]));
        }
        let start = i;
        while i < bytes.len() && bytes[i] != '=' {
            i += 1;
        }
        let name: String = bytes[start..i].iter().collect();
        if !valid_label_name(&name) {
            return Err(format!("bad label name {name:?}"));
        }
        if bytes.get(i + 1) != Some(&'"') {
            return Err(format!("label {name} value not quoted"));
        }
        i += 2;
        let mut value = String::new();
        loop {
            match bytes.get(i) {
                None => return Err("unterminated label value".into()),
                Some('\\') => {
                    match bytes.get(i + 1) {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        other => return Err(format!("bad escape {other:?}")),
                    }
                    i += 2;
                }
                Some('"') => {
                    i += 1;
                    break;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(format!("duplicate label {name}"));
        }
        labels.push((name, value));
        match bytes.get(i) {
            Some(',') => i += 1,
            Some('}') => {}
            other => return Err(format!("expected , or }} after a label, got {other:?}")),
        }
    }
}

/// Parses a page strictly: every sample belongs to the family declared just before it (with
/// the suffixes its type allows), every family is declared once, histograms are well formed.
pub fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    if !text.ends_with('\n') {
        return Err("page must end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let ctx = |e: String| format!("line {}: {e}: {line}", no + 1);
        if line.is_empty() {
            return Err(ctx("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or_else(|| ctx("HELP without text".into()))?;
            if !valid_metric_name(name) {
                return Err(ctx("bad metric name".into()));
            }
            let f = families.entry(name.to_string()).or_default();
            if !f.help.is_empty() || !f.samples.is_empty() {
                return Err(ctx("family declared twice".into()));
            }
            f.help = help.to_string();
            current = Some(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| ctx("TYPE without type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(ctx(format!("unknown type {kind}")));
            }
            let f = families.entry(name.to_string()).or_default();
            if !f.kind.is_empty() || !f.samples.is_empty() {
                return Err(ctx("TYPE twice or after samples".into()));
            }
            f.kind = kind.to_string();
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(p) if line.as_bytes()[p] == b'{' => {
                let (labels, rest) = parse_labels(&line[p + 1..]).map_err(ctx)?;
                (&line[..p], labels, rest)
            }
            Some(p) => (&line[..p], Vec::new(), &line[p..]),
            None => return Err(ctx("sample without value".into())),
        };
        let value_str = rest
            .strip_prefix(' ')
            .ok_or_else(|| ctx("no space before value".into()))?;
        if value_str.contains(' ') {
            return Err(ctx("timestamps are not expected".into()));
        }
        let value = parse_value(value_str).map_err(ctx)?;
        let fam_name = current
            .clone()
            .ok_or_else(|| ctx("sample before any TYPE".into()))?;
        let fam = families
            .get_mut(&fam_name)
            .ok_or_else(|| ctx("no family".into()))?;
        let allowed: Vec<String> = match fam.kind.as_str() {
            "histogram" => ["_bucket", "_count", "_sum"]
                .iter()
                .map(|s| format!("{fam_name}{s}"))
                .collect(),
            "summary" => vec![
                fam_name.clone(),
                format!("{fam_name}_count"),
                format!("{fam_name}_sum"),
            ],
            "" => return Err(ctx("family without TYPE".into())),
            _ => vec![fam_name.clone()],
        };
        if !allowed.iter().any(|a| a == name) {
            return Err(ctx(format!(
                "sample {name} does not belong to family {fam_name}"
            )));
        }
        fam.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(families)
}

/// Buckets of a histogram series (labels other than `le`), as (le string, count).
pub fn buckets(f: &Family, name: &str) -> Vec<(String, f64)> {
    f.samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .map(|s| (s.label("le").unwrap_or_default().to_string(), s.value))
        .collect()
}

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let b = buckets(f, name);
    if b.last().map(|(le, _)| le.as_str()) != Some("+Inf") {
        return Err(format!("{name}: last bucket is not +Inf"));
    }
    let mut prev_le = f64::NEG_INFINITY;
    let mut prev_c = 0.0;
    for (le, c) in &b {
        let v = parse_value(le)?;
        if v <= prev_le {
            return Err(format!("{name}: le not increasing at {le}"));
        }
        if *c < prev_c {
            return Err(format!("{name}: bucket counts decrease at {le}"));
        }
        prev_le = v;
        prev_c = *c;
    }
    let count = f
        .samples
        .iter()
        .find(|s| s.name == format!("{name}_count"))
        .ok_or(format!("{name}: no _count"))?;
    if f.samples.iter().all(|s| s.name != format!("{name}_sum")) {
        return Err(format!("{name}: no _sum"));
    }
    if (count.value - prev_c).abs() > 0.0 {
        return Err(format!("{name}: _count != +Inf bucket"));
    }
    Ok(())
}

/// Prometheus' `histogram_quantile` over a parsed histogram.
pub fn quantile(f: &Family, name: &str, q: f64) -> Option<f64> {
    let b = buckets(f, name);
    let total = b.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, c) in &b {
        let upper = parse_value(le).ok()?;
        if *c >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below) / (c - below).max(1e-12));
        }
        lower = upper;
        below = *c;
    }
    None
}

/// The bucket `(lower, upper]` of a histogram holding value `v`.
pub fn bucket_of(f: &Family, name: &str, v: f64) -> (f64, f64) {
    let mut lower = 0.0;
    for (le, _) in buckets(f, name) {
        let upper = parse_value(&le).unwrap_or(f64::INFINITY);
        if v <= upper {
            return (lower, upper);
        }
        lower = upper;
    }
    (lower, f64::INFINITY)
}

/// The value of a family's single sample (or the sum of its samples).
pub fn value(fams: &BTreeMap<String, Family>, name: &str) -> f64 {
    fams.get(name)
        .map(|f| f.samples.iter().map(|s| s.value).sum())
        .unwrap_or(f64::NAN)
}

/// A histogram's `_count` and `_sum`.
pub fn count_sum(fams: &BTreeMap<String, Family>, name: &str) -> (f64, f64) {
    let f = &fams[name];
    let get = |suffix: &str| {
        f.samples
            .iter()
            .find(|s| s.name == format!("{name}{suffix}"))
            .map_or(f64::NAN, |s| s.value)
    };
    (get("_count"), get("_sum"))
}

pub async fn scrape(client: &reqwest::Client, base: &str) -> BTreeMap<String, Family> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    parse_exposition(&text).unwrap_or_else(|e| panic!("bad exposition: {e}\n{text}"))
}
