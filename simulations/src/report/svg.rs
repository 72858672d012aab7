//! A small, dependency-free SVG line-chart renderer for the HTML report.
//!
//! A [`Chart`] holds named [`Series`] of `(seconds, value)` points, optional horizontal reference
//! lines (SLO targets) and an optional right-axis series (load). [`render`] turns it into one
//! self-contained `<svg>` element: axes with round ticks (1-2-5 steps on the value axis, clock-like
//! steps on the time axis), a legend, a colour-blind-friendly palette (Okabe-Ito), gaps where a
//! point is NaN or infinite, and min/max downsampling of long series so the page stays small.

use std::fmt::Write as _;

/// Series colours: the Okabe-Ito palette without yellow, which is unreadable on white.
pub const PALETTE: [&str; 7] = [
    "#0072B2", // blue
    "#E69F00", // orange
    "#009E73", // bluish green
    "#D55E00", // vermillion
    "#CC79A7", // reddish purple
    "#56B4E9", // sky blue
    "#000000", // black
];

/// Colour of the right-axis series.
const SECONDARY_COLOUR: &str = "#7F7F7F";
/// Colour of horizontal reference lines.
const HLINE_COLOUR: &str = "#B2182B";
/// Series longer than this are downsampled before drawing.
pub const MAX_POINTS: usize = 2000;

const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const FONT_SIZE: f64 = 12.0;
/// Rough width of one character at [`FONT_SIZE`], for laying out the legend.
const CHAR_W: f64 = 6.8;

/// One named line on a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points in x order; x is seconds since the start. Non-finite values leave a gap.
    pub points: Vec<(f64, f64)>,
    /// Draw the line dashed.
    pub dashed: bool,
}

impl Series {
    /// A solid series from parallel time and value slices (the shorter one sets the length).
    pub fn from_columns(name: impl Into<String>, t: &[f64], y: &[f64]) -> Self {
        Self {
            name: name.into(),
            points: t.iter().copied().zip(y.iter().copied()).collect(),
            dashed: false,
        }
    }

    /// Whether the series has at least one drawable (finite) point.
    pub fn has_data(&self) -> bool {
        self.points
            .iter()
            .any(|&(x, y)| x.is_finite() && y.is_finite())
    }
}

/// A line chart with a time x axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Heading drawn above the plot.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label beside the left y axis.
    pub y_label: String,
    /// Lines drawn against the left axis, coloured from [`PALETTE`] in order.
    pub series: Vec<Series>,
    /// Horizontal reference lines `(label, y)` on the left axis, drawn dashed with their label.
    pub hlines: Vec<(String, f64)>,
    /// Lower end of the left axis; the data minimum when `None`.
    pub y_min: Option<f64>,
    /// Upper end of the left axis (so several charts can share a scale); the data maximum when
    /// `None`. Rounded up to the next tick either way.
    pub y_max: Option<f64>,
    /// Draw the left-axis series as step functions (the value holds until the next point).
    pub step: bool,
    /// A series drawn against its own right axis (named after it), e.g. load against replicas.
    pub secondary: Option<Series>,
}

/// Escapes text for use in XML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Round tick positions covering `[lo, hi]`: a step of 1, 2 or 5 times a power of ten giving
/// about `target` intervals. Returns the step and the ticks, which start at or below `lo` and
/// end at or above `hi`. Degenerate or non-finite ranges are widened first.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (f64, Vec<f64>) {
    let (lo, hi) = widen(lo, hi);
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    (step, ticks_with_step(lo, hi, step, true))
}

/// Ticks for a time axis in seconds: steps a person reads easily on a clock (1, 2, 5, 10, 15,
/// 30 s; 1, 2, 5, 10, 15, 30 min; 1, 2, 3, 6, 12 h; whole days), 1-2-5 below one second. The
/// ticks lie inside `[lo, hi]`.
pub fn time_ticks(lo: f64, hi: f64, target: usize) -> (f64, Vec<f64>) {
    const STEPS: [f64; 17] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0,
    ];
    let (lo, hi) = widen(lo, hi);
    let raw = (hi - lo) / target.max(1) as f64;
    if raw < 1.0 {
        let (step, _) = nice_ticks(lo, hi, target);
        return (step, ticks_with_step(lo, hi, step, false));
    }
    let step = STEPS
        .into_iter()
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or_else(|| (raw / 86400.0).ceil() * 86400.0);
    (step, ticks_with_step(lo, hi, step, false))
}

/// Makes a usable, finite, non-empty range out of `[lo, hi]`.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
        (lo, hi)
    } else if lo == 0.0 {
        (0.0, 1.0)
    } else {
        let pad = lo.abs() * 0.1;
        (lo - pad, hi + pad)
    }
}

/// Multiples of `step` from `lo` to `hi`; `outer` extends one step past each end as needed so
/// the ticks cover the range, otherwise only ticks inside it are kept.
fn ticks_with_step(lo: f64, hi: f64, step: f64, outer: bool) -> Vec<f64> {
    let eps = 1e-9;
    let (first, last) = if outer {
        ((lo / step + eps).floor(), (hi / step - eps).ceil())
    } else {
        ((lo / step - eps).ceil(), (hi / step + eps).floor())
    };
    // Bounded by construction (about `target` ticks); the cap guards against pathological input.
    let n = ((last - first).max(0.0) as usize).min(1000);
    (0..=n)
        .map(|i| {
            let v = (first + i as f64) * step;
            // Snap away float noise such as 0.30000000000000004.
            let snapped = (v / step).round() * step;
            if snapped == 0.0 { 0.0 } else { snapped }
        })
        .collect()
}

/// Decimal places needed to print multiples of `step` exactly.
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 || !step.is_finite() || step <= 0.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    }
}

/// Formats a value-axis tick; large values get a k/M suffix.
pub fn format_value_tick(v: f64, step: f64) -> String {
    let a = step.abs().max(v.abs());
    if a >= 1e7 && step >= 1e5 {
        let d = decimals_for(step / 1e6);
        format!("{:.*}M", d, v / 1e6)
    } else if a >= 1e4 && step >= 100.0 {
        let d = decimals_for(step / 1e3);
        format!("{:.*}k", d, v / 1e3)
    } else {
        format!("{:.*}", decimals_for(step), v)
    }
}

/// Formats a time-axis tick: seconds with decimals below a one-second step, `m:ss` for spans up
/// to an hour, `h:mm` beyond.
pub fn format_time_tick(t: f64, step: f64, span: f64) -> String {
    if step < 1.0 {
        return format!("{:.*}s", decimals_for(step), t);
    }
    let sign = if t < 0.0 { "-" } else { "" };
    let secs = t.abs().round() as u64;
    if span <= 3600.0 {
        format!("{sign}{}:{:02}", secs / 60, secs % 60)
    } else {
        let mins = (t.abs() / 60.0).round() as u64;
        format!("{sign}{}:{:02}", mins / 60, mins % 60)
    }
}

/// Reduces a series to at most about `max` points, keeping each bucket's minimum and maximum
/// (so spikes stay visible) and one non-finite point where the bucket had any (so gaps stay).
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 4 {
        return points.to_vec();
    }
    let buckets = max / 2;
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max + buckets);
    for chunk in points.chunks(per) {
        let mut lo: Option<usize> = None;
        let mut hi: Option<usize> = None;
        let mut gap: Option<usize> = None;
        for (i, &(x, y)) in chunk.iter().enumerate() {
            if !(x.is_finite() && y.is_finite()) {
                gap.get_or_insert(i);
                continue;
            }
            if lo.is_none_or(|j| y < chunk[j].1) {
                lo = Some(i);
            }
            if hi.is_none_or(|j| y > chunk[j].1) {
                hi = Some(i);
            }
        }
        let mut keep: Vec<usize> = [lo, hi, gap].into_iter().flatten().collect();
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| chunk[i]));
    }
    out
}

/// Maps data coordinates to pixels.
struct Scale {
    d0: f64,
    d1: f64,
    p0: f64,
    p1: f64,
}

impl Scale {
    fn map(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        if span == 0.0 {
            return (self.p0 + self.p1) / 2.0;
        }
        self.p0 + (v - self.d0) / span * (self.p1 - self.p0)
    }
}

/// Min and max of the finite values yielded, if any.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((a, b)) => Some((a.min(v), b.max(v))),
        })
}

/// SVG path data for a series, with a new subpath after each gap. Isolated points become
/// zero-length segments, which the round line caps draw as dots.
fn path_data(points: &[(f64, f64)], xs: &Scale, ys: &Scale, step: bool) -> String {
    let mut d = String::new();
    let mut prev: Option<(f64, f64)> = None;
    let mut run = 0usize;
    for &(x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            if run == 1 {
                d.push_str("h0");
            }
            prev = None;
            run = 0;
            continue;
        }
        let (px, py) = (xs.map(x), ys.map(y));
        match prev {
            None => {
                let _ = write!(d, "M{px:.1} {py:.1}");
            }
            Some((_, ppy)) if step => {
                let _ = write!(d, "H{px:.1}");
                if (ppy - py).abs() > 0.05 {
                    let _ = write!(d, "V{py:.1}");
                }
            }
            Some(_) => {
                let _ = write!(d, "L{px:.1} {py:.1}");
            }
        }
        prev = Some((px, py));
        run += 1;
    }
    if run == 1 {
        d.push_str("h0");
    }
    d
}

/// One legend entry, laid out before drawing.
struct LegendItem {
    label: String,
    colour: &'static str,
    dashed: bool,
    x: f64,
    row: usize,
}

/// Lays legend entries out left to right, wrapping at `width`.
fn layout_legend(
    entries: Vec<(String, &'static str, bool)>,
    left: f64,
    width: f64,
) -> Vec<LegendItem> {
    let mut items = Vec::with_capacity(entries.len());
    let (mut x, mut row) = (left, 0usize);
    for (label, colour, dashed) in entries {
        let w = 26.0 + label.chars().count() as f64 * CHAR_W + 14.0;
        if x > left && x + w > left + width {
            x = left;
            row += 1;
        }
        items.push(LegendItem {
            label,
            colour,
            dashed,
            x,
            row,
        });
        x += w;
    }
    items
}

/// Renders `chart` as a standalone `<svg>` element of `width` x `height` pixels.
pub fn render(chart: &Chart, width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width.max(200)), f64::from(height.max(120)));
    let secondary = chart.secondary.as_ref().filter(|s| s.has_data());
    let drawn: Vec<(usize, &Series)> = chart
        .series
        .iter()
        .enumerate()
        .filter(|(_, s)| s.has_data())
        .collect();
    let has_data = !drawn.is_empty() || secondary.is_some();

    let left = 64.0;
    let right = if secondary.is_some() {
        w - 64.0
    } else {
        w - 20.0
    };

    // Legend: every named series (empty ones too, so readers see what was expected), then the
    // secondary series, then the reference lines.
    let mut entries: Vec<(String, &'static str, bool)> = chart
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), PALETTE[i % PALETTE.len()], s.dashed))
        .collect();
    if let Some(s) = &chart.secondary {
        entries.push((
            format!("{} (right axis)", s.name),
            SECONDARY_COLOUR,
            s.dashed,
        ));
    }
    for (label, _) in &chart.hlines {
        entries.push((label.clone(), HLINE_COLOUR, true));
    }
    let legend = layout_legend(entries, left, right - left);
    let legend_rows = legend.iter().map(|i| i.row + 1).max().unwrap_or(0);
    let legend_top = 40.0;
    let top = legend_top + legend_rows as f64 * 18.0 + 8.0;
    let bottom = h - 44.0;

    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{title}" font-family="{FONT}" font-size="{FONT_SIZE}">"#,
        title = escape(&chart.title),
    );
    let _ = write!(
        out,
        r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##
    );
    let _ = write!(
        out,
        r##"<text x="{left}" y="22" font-size="15" font-weight="600" fill="#222222">{}</text>"##,
        escape(&chart.title)
    );
    for item in &legend {
        let y = legend_top + item.row as f64 * 18.0;
        let dash = if item.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<line x1="{x1:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{c}" stroke-width="2.5"{dash}/><text x="{tx:.1}" y="{ty:.1}" fill="#333333">{label}</text>"##,
            x1 = item.x,
            x2 = item.x + 20.0,
            c = item.colour,
            tx = item.x + 26.0,
            ty = y + 4.0,
            label = escape(&item.label),
        );
    }

    if !has_data || bottom - top < 20.0 {
        let _ = write!(
            out,
            r##"<rect x="{left}" y="{top:.1}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#cccccc"/><text x="{cx:.1}" y="{cy:.1}" text-anchor="middle" fill="#777777" font-size="14">no data</text></svg>"##,
            pw = right - left,
            ph = (bottom - top).max(0.0),
            cx = (left + right) / 2.0,
            cy = (top + bottom) / 2.0,
        );
        return out;
    }

    // Domains.
    let all_x = drawn
        .iter()
        .flat_map(|(_, s)| s.points.iter())
        .chain(secondary.iter().flat_map(|s| s.points.iter()))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, _)| x);
    let (x0, x1) = finite_range(all_x).unwrap_or((0.0, 1.0));
    let (x0, x1) = widen(x0, x1);
    let y_vals = drawn
        .iter()
        .flat_map(|(_, s)| s.points.iter())
        .filter(|(x, _)| x.is_finite())
        .map(|&(_, y)| y)
        .chain(chart.hlines.iter().map(|&(_, v)| v));
    let (mut y0, mut y1) = finite_range(y_vals).unwrap_or((0.0, 1.0));
    if let Some(m) = chart.y_min.filter(|m| m.is_finite()) {
        y0 = m;
        y1 = y1.max(m);
    }
    if let Some(m) = chart.y_max.filter(|m| m.is_finite() && *m > y0) {
        y1 = y1.max(m);
    }
    let (ystep, yticks) = nice_ticks(y0, y1, 5);
    let (yd0, yd1) = (
        yticks.first().copied().unwrap_or(y0),
        yticks.last().copied().unwrap_or(y1),
    );
    let xs = Scale {
        d0: x0,
        d1: x1,
        p0: left,
        p1: right,
    };
    let ys = Scale {
        d0: yd0,
        d1: yd1,
        p0: bottom,
        p1: top,
    };

    // Grid and left axis.
    out.push_str(r##"<g stroke="#e5e5e5" stroke-width="1">"##);
    for &t in &yticks {
        let py = ys.map(t);
        let _ = write!(
            out,
            r#"<line x1="{left}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}"/>"#
        );
    }
    out.push_str("</g>");
    out.push_str(r##"<g fill="#444444" text-anchor="end">"##);
    for &t in &yticks {
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}">{}</text>"#,
            escape(&format_value_tick(t, ystep)),
            x = left - 6.0,
            y = ys.map(t) + 4.0,
        );
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        r##"<text transform="translate(14 {cy:.1}) rotate(-90)" text-anchor="middle" fill="#333333">{}</text>"##,
        escape(&chart.y_label),
        cy = (top + bottom) / 2.0,
    );

    // Time axis.
    let (xstep, xticks) = time_ticks(x0, x1, ((right - left) / 90.0).clamp(2.0, 10.0) as usize);
    out.push_str(r##"<g fill="#444444" text-anchor="middle">"##);
    for &t in &xticks {
        let px = xs.map(t);
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{y2:.1}" stroke="#888888"/><text x="{px:.1}" y="{ty:.1}">{}</text>"##,
            escape(&format_time_tick(t, xstep, x1 - x0)),
            y2 = bottom + 4.0,
            ty = bottom + 17.0,
        );
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        r##"<text x="{cx:.1}" y="{y:.1}" text-anchor="middle" fill="#333333">{}</text>"##,
        escape(&chart.x_label),
        cx = (left + right) / 2.0,
        y = h - 8.0,
    );
    let _ = write!(
        out,
        r##"<polyline points="{left},{top:.1} {left},{bottom:.1} {right:.1},{bottom:.1}" fill="none" stroke="#888888"/>"##
    );

    // Secondary axis and series, drawn first so the primary lines stay on top.
    if let Some(sec) = secondary {
        let (s0, s1) = finite_range(sec.points.iter().filter(|p| p.0.is_finite()).map(|p| p.1))
            .unwrap_or((0.0, 1.0));
        let (sstep, sticks) = nice_ticks(s0.min(0.0), s1, 5);
        let ss = Scale {
            d0: sticks.first().copied().unwrap_or(0.0),
            d1: sticks.last().copied().unwrap_or(1.0),
            p0: bottom,
            p1: top,
        };
        let _ = write!(
            out,
            r#"<line x1="{right:.1}" y1="{top:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="{SECONDARY_COLOUR}"/><g fill="{SECONDARY_COLOUR}" text-anchor="start">"#
        );
        for &t in &sticks {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}">{}</text>"#,
                escape(&format_value_tick(t, sstep)),
                x = right + 6.0,
                y = ss.map(t) + 4.0,
            );
        }
        out.push_str("</g>");
        let _ = write!(
            out,
            r#"<text transform="translate({x:.1} {cy:.1}) rotate(90)" text-anchor="middle" fill="{SECONDARY_COLOUR}">{}</text>"#,
            escape(&sec.name),
            x = w - 12.0,
            cy = (top + bottom) / 2.0,
        );
        let pts = downsample(&sec.points, MAX_POINTS);
        let dash = if sec.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<path d="{}" fill="none" stroke="{SECONDARY_COLOUR}" stroke-width="1.5" stroke-linecap="round" stroke-linejoin="round" opacity="0.8"{dash}><title>{}</title></path>"#,
            path_data(&pts, &xs, &ss, false),
            escape(&sec.name),
        );
    }

    // Reference lines.
    for (label, v) in chart.hlines.iter().filter(|(_, v)| v.is_finite()) {
        let py = ys.map(*v);
        let _ = write!(
            out,
            r#"<line x1="{left}" y1="{py:.1}" x2="{right:.1}" y2="{py:.1}" stroke="{HLINE_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end" fill="{HLINE_COLOUR}">{}</text>"#,
            escape(label),
            tx = right - 4.0,
            ty = py - 4.0,
        );
    }

    // Primary series.
    for (i, s) in &drawn {
        let pts = downsample(&s.points, MAX_POINTS);
        let dash = if s.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<path d="{}" fill="none" stroke="{c}" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"{dash}><title>{}</title></path>"#,
            path_data(&pts, &xs, &ys, chart.step),
            escape(&s.name),
            c = PALETTE[i % PALETTE.len()],
        );
    }
    out.push_str("</svg>");
    out
}

/// Test helpers shared by the report modules' tests.
#[cfg(test)]
pub(crate) mod check {
    /// Checks that every tag in `doc` is closed in order, that no text or attribute holds a bare
    /// `<` or an `&` that does not start an entity, and returns the number of elements seen.
    /// `void` names HTML elements that have no closing tag.
    pub(crate) fn balanced(doc: &str, void: &[&str]) -> Result<usize, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut count = 0;
        let mut rest = doc;
        while let Some(start) = rest.find('<') {
            check_text(&rest[..start])?;
            let after = &rest[start + 1..];
            let end = after.find('>').ok_or("unterminated tag")?;
            let tag = &after[..end];
            rest = &after[end + 1..];
            if tag.starts_with('!') || tag.starts_with('?') {
                continue;
            }
            if tag.contains('<') {
                return Err(format!("'<' inside tag {tag:?}"));
            }
            check_entities(tag)?;
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            count += 1;
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if name.is_empty() {
                return Err(format!("tag without a name: {tag:?}"));
            }
            if !tag.ends_with('/') && !void.contains(&name.to_ascii_lowercase().as_str()) {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if stack.is_empty() {
            Ok(count)
        } else {
            Err(format!("unclosed: {stack:?}"))
        }
    }

    /// Text content: entities must be valid, and `>` and `"` must be escaped (the renderers
    /// always escape them, so a raw one is a stray from a format string).
    fn check_text(text: &str) -> Result<(), String> {
        check_entities(text)?;
        if text.contains('>') || text.contains('"') {
            return Err(format!("stray '>' or '\"' in {text:?}"));
        }
        Ok(())
    }

    fn check_entities(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            let ent = &text[i..];
            let semi = ent.find(';').ok_or_else(|| format!("bare & in {text:?}"))?;
            let body = &ent[1..semi];
            let ok = matches!(body, "amp" | "lt" | "gt" | "quot" | "apos")
                || (body.starts_with('#') && body[1..].chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(format!("bad entity &{body}; in {text:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::check::balanced;
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "Replicas".into(),
            x_label: "time".into(),
            y_label: "replicas".into(),
            series,
            ..Chart::default()
        }
    }

    fn ramp(n: usize) -> Vec<(f64, f64)> {
        (0..n).map(|i| (i as f64 * 10.0, (i % 7) as f64)).collect()
    }

    #[test]
    fn one_path_per_non_empty_series_and_balanced() {
        let mut c = chart(vec![
            series("a", ramp(50)),
            series("empty", vec![]),
            series("all-nan", vec![(0.0, f64::NAN), (1.0, f64::INFINITY)]),
            series("b", ramp(30)),
        ]);
        let svg = render(&c, 800, 300);
        balanced(&svg, &[]).unwrap();
        assert_eq!(svg.matches("<path").count(), 2, "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // Every series is in the legend, drawn or not.
        for name in ["a", "empty", "all-nan", "b"] {
            assert!(
                svg.contains(&format!(">{name}</text>")),
                "legend lacks {name}"
            );
        }
        c.secondary = Some(series("arrivals/s", ramp(40)));
        let svg = render(&c, 800, 300);
        balanced(&svg, &[]).unwrap();
        assert_eq!(svg.matches("<path").count(), 3);
        assert!(svg.contains("arrivals/s (right axis)"));
    }

    #[test]
    fn nan_points_make_gaps_not_text() {
        let pts = vec![
            (0.0, 1.0),
            (10.0, 2.0),
            (20.0, f64::NAN),
            (30.0, 3.0),
            (40.0, 4.0),
        ];
        let svg = render(&chart(vec![series("ttft", pts)]), 600, 300);
        balanced(&svg, &[]).unwrap();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let d = svg
            .split(r#"<path d=""#)
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        // Two subpaths: one before the gap, one after it.
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 2, "{d}");
    }

    #[test]
    fn isolated_points_are_drawn_as_dots() {
        let pts = vec![(0.0, 1.0), (10.0, f64::NAN), (20.0, 3.0), (30.0, f64::NAN)];
        let d = path_data(
            &pts,
            &Scale {
                d0: 0.0,
                d1: 30.0,
                p0: 0.0,
                p1: 300.0,
            },
            &Scale {
                d0: 0.0,
                d1: 3.0,
                p0: 100.0,
                p1: 0.0,
            },
            false,
        );
        assert_eq!(d, "M0.0 66.7h0M200.0 0.0h0");
    }

    #[test]
    fn step_paths_hold_the_value_until_the_next_point() {
        let pts = vec![(0.0, 1.0), (10.0, 2.0), (20.0, 2.0)];
        let d = path_data(
            &pts,
            &Scale {
                d0: 0.0,
                d1: 20.0,
                p0: 0.0,
                p1: 200.0,
            },
            &Scale {
                d0: 0.0,
                d1: 2.0,
                p0: 100.0,
                p1: 0.0,
            },
            true,
        );
        assert_eq!(d, "M0.0 50.0H100.0V0.0H200.0");
    }

    #[test]
    fn text_is_escaped() {
        let mut c = chart(vec![series("a<b&c", ramp(5))]);
        c.title = "p95 \"TTFT\" <ms>".into();
        c.hlines = vec![("SLO <2 s & more".into(), 3.0)];
        let svg = render(&c, 600, 300);
        balanced(&svg, &[]).unwrap();
        assert!(svg.contains("a&lt;b&amp;c"));
        assert!(!svg.contains("a<b"));
        assert!(svg.contains("p95 &quot;TTFT&quot; &lt;ms&gt;"));
        assert!(svg.contains("SLO &lt;2 s &amp; more"));
    }

    #[test]
    fn empty_chart_says_no_data() {
        for c in [
            chart(vec![]),
            chart(vec![series("x", vec![(f64::NAN, 1.0), (1.0, f64::NAN)])]),
        ] {
            let svg = render(&c, 600, 300);
            balanced(&svg, &[]).unwrap();
            assert!(svg.contains("no data"));
            assert_eq!(svg.matches("<path").count(), 0);
        }
        let svg = render(&chart(vec![series("x", ramp(3))]), 600, 300);
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn value_ticks_are_round_and_cover_the_range() {
        for &(lo, hi) in &[
            (0.0, 1.0),
            (0.0, 7.3),
            (0.13, 0.97),
            (-3.0, 17.0),
            (0.0, 2345.0),
            (1e5, 1.7e6),
            (5.0, 5.0),
            (0.0, 0.0),
            (0.001, 0.0047),
        ] {
            let (step, ticks) = nice_ticks(lo, hi, 5);
            let mag = 10f64.powf(step.log10().floor());
            let mantissa = step / mag;
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-9),
                "step {step} for {lo}..{hi}"
            );
            assert!(ticks.len() >= 2 && ticks.len() <= 12, "{ticks:?}");
            for t in &ticks {
                let k = t / step;
                assert!((k - k.round()).abs() < 1e-9, "{t} not a multiple of {step}");
            }
            let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
            assert!(
                first <= lo.min(hi) && last >= hi.max(lo),
                "{ticks:?} vs {lo}..{hi}"
            );
        }
        assert_eq!(nice_ticks(0.0, 7.3, 5).1, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        // Float noise is snapped away, so labels print cleanly.
        let (step, ticks) = nice_ticks(0.1, 0.7, 6);
        let labels: Vec<String> = ticks.iter().map(|t| format_value_tick(*t, step)).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]);
    }

    #[test]
    fn time_ticks_use_clock_steps_and_formats() {
        let (step, ticks) = time_ticks(0.0, 600.0, 6);
        assert_eq!(step, 120.0);
        let labels: Vec<String> = ticks
            .iter()
            .map(|t| format_time_tick(*t, step, 600.0))
            .collect();
        assert_eq!(labels, ["0:00", "2:00", "4:00", "6:00", "8:00", "10:00"]);

        let (step, ticks) = time_ticks(0.0, 86_400.0, 8);
        assert_eq!(step, 10_800.0);
        assert_eq!(format_time_tick(ticks[1], step, 86_400.0), "3:00");
        assert_eq!(format_time_tick(5400.0, 1800.0, 7200.0), "1:30");
        assert_eq!(format_time_tick(90.0, 30.0, 600.0), "1:30");
        let (step, _) = time_ticks(0.0, 2.0, 5);
        assert_eq!(format_time_tick(0.5, step, 2.0), "0.5s");
        // Ticks stay inside the data range on the time axis.
        let (_, ticks) = time_ticks(7.0, 3599.0, 6);
        assert!(
            ticks.iter().all(|t| (7.0..=3599.0).contains(t)),
            "{ticks:?}"
        );
    }

    #[test]
    fn value_tick_labels_abbreviate_large_numbers() {
        assert_eq!(format_value_tick(20_000.0, 5_000.0), "20k");
        assert_eq!(format_value_tick(2_500.0, 500.0), "2500");
        assert_eq!(format_value_tick(1.5e7, 5e6), "15M");
    }

    #[test]
    fn long_series_are_downsampled_keeping_spikes_and_gaps() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 1.0)).collect();
        pts[54_321].1 = 1000.0;
        pts[77_777].1 = f64::NAN;
        let small = downsample(&pts, MAX_POINTS);
        assert!(
            small.len() <= MAX_POINTS + MAX_POINTS / 2,
            "{}",
            small.len()
        );
        assert!(small.contains(&(54_321.0, 1000.0)));
        assert!(small.iter().any(|p| p.0 == 77_777.0 && p.1.is_nan()));
        assert!(small.windows(2).all(|w| w[0].0 < w[1].0), "x order kept");
        let svg = render(&chart(vec![series("big", pts)]), 800, 300);
        assert!(svg.len() < 80_000, "svg is {} bytes", svg.len());
        // Short series are left alone.
        assert_eq!(downsample(&ramp(10), MAX_POINTS), ramp(10));
    }

    #[test]
    fn hlines_widen_the_axis_to_stay_visible() {
        let mut c = chart(vec![series("ttft", vec![(0.0, 100.0), (60.0, 300.0)])]);
        c.hlines = vec![("target".into(), 2000.0)];
        let svg = render(&c, 600, 300);
        assert!(svg.contains(">2000</text>"), "{svg}");
    }

    #[test]
    fn checker_rejects_broken_markup() {
        assert!(balanced("<a><b></a></b>", &[]).is_err());
        assert!(balanced("<a>x & y</a>", &[]).is_err());
        assert!(balanced("<a>", &[]).is_err());
        assert!(balanced("<a>x</a>\"", &[]).is_err());
        assert!(balanced("<a b=\"c\">x</a>", &[]).is_ok());
        assert_eq!(balanced("<a><b/><c>&amp;</c></a>", &[]), Ok(3));
    }
}
