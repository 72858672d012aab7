//! Plain-text summaries of runs for the terminal: one run's key figures and variants
//! ([`summary_table`]) and several policies side by side ([`compare_table`]).
//!
//! Output is aligned, uncoloured text; every line of a table has the same width. Numbers that
//! are NaN or infinite print as `-`. The number formatters here are shared with the HTML report.

use super::model::RunReport;

/// Text shown for a value that is NaN, infinite or otherwise unavailable.
pub const MISSING: &str = "-";

/// Formats `v` with `decimals` decimals and thousands separators, or [`MISSING`].
pub fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return MISSING.to_owned();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::with_capacity(s.len() + int.len() / 3 + 1);
    // Only "-0.00"-style output would make a sign on a zero; leave zero unsigned.
    if v < 0.0 && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        grouped.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if let Some(f) = frac {
        grouped.push('.');
        grouped.push_str(f);
    }
    grouped
}

/// Formats a fraction (0.9732) as a percentage with two decimals ("97.32%").
pub fn fmt_pct(frac: f64) -> String {
    if frac.is_finite() {
        format!("{:.2}%", frac * 100.0)
    } else {
        MISSING.to_owned()
    }
}

/// Formats US dollars with two decimals ("$1,234.50").
pub fn fmt_usd(v: f64) -> String {
    if !v.is_finite() {
        return MISSING.to_owned();
    }
    let n = fmt_num(v, 2);
    match n.strip_prefix('-') {
        Some(abs) => format!("-${abs}"),
        None => format!("${n}"),
    }
}

/// Formats milliseconds: one decimal below 100 ms, whole milliseconds above.
pub fn fmt_ms(v: f64) -> String {
    if v.is_finite() && v.abs() < 100.0 {
        fmt_num(v, 1)
    } else {
        fmt_num(v, 0)
    }
}

/// Formats a span of seconds: "12.3 s" below a minute, "4m 05s" below an hour, "2h 03m 04s"
/// beyond.
pub fn fmt_duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return MISSING.to_owned();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1e3);
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let total = s.round() as u64;
    let (h, m, sec) = (total / 3600, total / 60 % 60, total % 60);
    if h == 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{h}h {m:02}m {sec:02}s")
    }
}

/// Column alignment in a text table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Lays out a table: a header, a rule, then the rows, columns two spaces apart, every line
/// padded to the full width. Widths count characters, not bytes.
fn grid(headers: &[&str], aligns: &[Align], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let total = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::with_capacity(total + 1);
        for (i, w) in widths.iter().enumerate() {
            let cell = cells.next().unwrap_or("");
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            let right = aligns.get(i).copied().unwrap_or(Align::Left) == Align::Right;
            if right {
                out.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(cell);
            if !right {
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A compact plain-text summary of one run: what ran, the key figures against the SLO, and a
/// table of the variants.
pub fn summary_table(report: &RunReport) -> String {
    let r = &report.requests;
    let slo = &report.slo;
    let mut out = format!(
        "scenario {}  |  workload {}  |  policy {}  |  router {}\n\
         SLO: TTFT <= {} ms and ITL <= {} ms for {}% of requests\n\n",
        report.scenario,
        report.workload,
        report.policy,
        report.router,
        fmt_ms(slo.ttft_ms),
        fmt_ms(slo.itl_ms),
        fmt_num(slo.percentile, 1),
    );
    let s = |v: &str| v.to_owned();
    let figures: Vec<Vec<String>> = vec![
        vec![
            s("SLO attainment"),
            fmt_pct(r.slo_attainment),
            format!(">= {}", fmt_pct(slo.percentile / 100.0)),
        ],
        vec![s("TTFT attainment"), fmt_pct(r.ttft_attainment), s("")],
        vec![s("ITL attainment"), fmt_pct(r.itl_attainment), s("")],
        vec![
            s("TTFT p95"),
            format!("{} ms", fmt_ms(r.ttft_ms.p95)),
            format!("<= {} ms", fmt_ms(slo.ttft_ms)),
        ],
        vec![
            s("ITL p95"),
            format!("{} ms", fmt_ms(r.itl_ms.p95)),
            format!("<= {} ms", fmt_ms(slo.itl_ms)),
        ],
        vec![s("cost"), fmt_usd(report.cost_usd), s("")],
        vec![
            s("accelerator-hours"),
            fmt_num(report.accelerator_hours, 2),
            s(""),
        ],
        vec![
            s("scale events"),
            fmt_num(report.scale_events.len() as f64, 0),
            s(""),
        ],
        vec![
            s("requests completed"),
            format!(
                "{} of {}",
                fmt_num(r.completed as f64, 0),
                fmt_num(r.total as f64, 0)
            ),
            s(""),
        ],
        vec![
            s("requests unfinished"),
            fmt_num(r.unfinished as f64, 0),
            s(""),
        ],
        vec![s("prefix hit rate"), fmt_pct(r.prefix_hit_rate), s("")],
        vec![s("preemptions"), fmt_num(r.preemptions as f64, 0), s("")],
        vec![s("simulated span"), fmt_duration(report.duration_s), s("")],
        vec![s("wall time"), fmt_duration(report.wall_time_s), s("")],
    ];
    out.push_str(&grid(
        &["figure", "value", "target"],
        &[Align::Left, Align::Right, Align::Left],
        &figures,
    ));
    out.push('\n');
    let variants: Vec<Vec<String>> = report
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.model.clone(),
                v.accelerator.clone(),
                v.tensor_parallel.to_string(),
                v.role.to_string(),
                fmt_num(v.requests as f64, 0),
                fmt_num(v.mean_replicas, 2),
                v.max_replicas.to_string(),
                fmt_num(v.accelerator_hours, 2),
                fmt_usd(v.cost_usd),
                fmt_num(v.kv_capacity_tokens as f64, 0),
            ]
        })
        .collect();
    out.push_str(&grid(
        &[
            "variant",
            "model",
            "accelerator",
            "TP",
            "role",
            "requests",
            "mean repl",
            "max repl",
            "accel-h",
            "cost",
            "KV tokens",
        ],
        &[
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
        &variants,
    ));
    out
}

/// The lowest finite cost among `reports`, if any.
pub(crate) fn cheapest_cost(reports: &[RunReport]) -> Option<f64> {
    reports
        .iter()
        .map(|r| r.cost_usd)
        .filter(|c| c.is_finite())
        .reduce(f64::min)
}

/// How a run's cost compares with the cheapest: "cheapest", "+12.34%", or [`MISSING`].
pub(crate) fn vs_cheapest(cost: f64, cheapest: Option<f64>) -> String {
    match cheapest {
        Some(min) if cost.is_finite() && cost <= min => "cheapest".to_owned(),
        Some(min) if cost.is_finite() && min > 0.0 => format!("+{}", fmt_pct(cost / min - 1.0)),
        _ => MISSING.to_owned(),
    }
}

/// One row per run (policy) for comparing policies on one workload: SLO attainment, cost and
/// its excess over the cheapest run, accelerator-hours, scale events and latency p95s.
pub fn compare_table(reports: &[RunReport]) -> String {
    let cheapest = cheapest_cost(reports);
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.policy.clone(),
                fmt_pct(r.requests.slo_attainment),
                fmt_num(r.cost_usd, 2),
                vs_cheapest(r.cost_usd, cheapest),
                fmt_num(r.accelerator_hours, 2),
                fmt_num(r.scale_events.len() as f64, 0),
                fmt_ms(r.requests.ttft_ms.p95),
                fmt_ms(r.requests.itl_ms.p95),
            ]
        })
        .collect();
    grid(
        &[
            "policy",
            "SLO attainment",
            "cost $",
            "vs cheapest",
            "accel-h",
            "scale events",
            "TTFT p95 ms",
            "ITL p95 ms",
        ],
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
        &rows,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use crate::report::html::fixtures::{report, report_with_policy};

    /// The lines of the table that starts with the line beginning `header`.
    fn table_lines<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| !l.starts_with(header))
            .take_while(|l| !l.trim().is_empty())
            .collect()
    }

    fn assert_aligned(lines: &[&str]) {
        assert!(lines.len() >= 3, "{lines:?}");
        let w = lines[0].chars().count();
        for l in lines {
            assert_eq!(l.chars().count(), w, "ragged line {l:?} in {lines:#?}");
        }
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_pct(0.973_24), "97.32%");
        assert_eq!(fmt_pct(f64::NAN), "-");
        assert_eq!(fmt_usd(1234.5), "$1,234.50");
        assert_eq!(fmt_usd(-3.0), "-$3.00");
        assert_eq!(fmt_usd(f64::INFINITY), "-");
        assert_eq!(fmt_num(1_234_567.891, 1), "1,234,567.9");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(-0.001, 2), "0.00");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(2345.6), "2,346");
        assert_eq!(fmt_duration(12.34), "12.3 s");
        assert_eq!(fmt_duration(245.0), "4m 05s");
        assert_eq!(fmt_duration(7384.0), "2h 03m 04s");
    }

    #[test]
    fn summary_is_aligned_and_complete() {
        let rep = report();
        let text = summary_table(&rep);
        assert!(!text.contains('\u{1b}'), "no colour codes");
        let figures = table_lines(&text, "figure");
        assert_aligned(&figures);
        let variants = table_lines(&text, "variant");
        assert_aligned(&variants);
        assert_eq!(variants.len(), 2 + rep.variants.len());
        for v in &rep.variants {
            assert!(
                variants.iter().any(|l| l.starts_with(v.name.as_str())),
                "{}",
                v.name
            );
        }
        assert!(text.contains("97.50%"), "{text}");
        assert!(text.contains("$12.35"), "{text}");
        assert!(text.contains("<= 2,000 ms"), "{text}");
    }

    #[test]
    fn nan_shows_as_dash() {
        let mut rep = report();
        rep.requests.ttft_ms.p95 = f64::NAN;
        rep.requests.prefix_hit_rate = f64::NAN;
        let text = summary_table(&rep);
        let line = text.lines().find(|l| l.starts_with("TTFT p95")).unwrap();
        assert!(line.contains("- ms") && !line.contains("NaN"), "{line}");
        let line = text
            .lines()
            .find(|l| l.starts_with("prefix hit rate"))
            .unwrap();
        assert!(line.trim_end().ends_with(" -"), "{line}");
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    }

    #[test]
    fn compare_has_one_aligned_row_per_policy() {
        let mut a = report_with_policy("static-peak", 20.0);
        let b = report_with_policy("goodput", 10.0);
        let mut c = report_with_policy("hpa-with-a-long-name", f64::NAN);
        a.requests.itl_ms.p95 = f64::NAN;
        c.requests.slo_attainment = f64::NAN;
        let text = compare_table(&[a, b, c]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_aligned(&lines);
        let row = |p: &str| *lines.iter().find(|l| l.starts_with(p)).unwrap();
        assert!(row("goodput").contains("cheapest"));
        assert!(
            row("static-peak").contains("+100.00%"),
            "{}",
            row("static-peak")
        );
        assert!(
            row("hpa-with-a-long-name")
                .split_whitespace()
                .filter(|c| *c == "-")
                .count()
                >= 3
        );
        assert!(!text.contains("NaN"));
    }

    #[test]
    fn compare_of_nothing_is_just_the_header() {
        let text = compare_table(&[]);
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("policy"));
    }
}
