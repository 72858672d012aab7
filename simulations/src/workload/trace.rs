//! Trace files: loading recorded request streams into a [`Workload`].
//!
//! Two public formats are understood:
//!
//! * **Azure LLM inference CSV** (Azure/AzurePublicDataset, 2023 traces): a header
//!   `TIMESTAMP,ContextTokens,GeneratedTokens` followed by rows such as
//!   `2023-11-16 18:15:46.6805900,374,44`. Arrivals are seconds since the earliest timestamp; the
//!   trace has no prefix data, so `hash_ids` stay empty (block size 16, vLLM's default).
//! * **Mooncake JSONL** (kvcache-ai/Mooncake): one object per line,
//!   `{"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [..]}`, one hash id per
//!   512-token block. Arrivals are `(timestamp - earliest) / 1000` seconds.
//!
//! Parsing is strict and never panics: a malformed row yields a [`TraceError`] naming the file,
//! the 1-based line number and what was wrong. Two lenient rules apply, both counted in
//! [`TraceStats`]: a zero input or output length is raised to 1 (the simulator needs at least one
//! token of each), and rows out of time order are sorted (stably) before ids are assigned.
//! Blank lines are skipped in both formats.

use std::fs;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::{RequestSpec, Workload};

/// Block size recorded for Azure traces: they carry no hash ids, so this only sets the block
/// granularity later transforms use (vLLM's default block size).
pub const AZURE_HASH_BLOCK_TOKENS: u32 = 16;

/// Tokens per `hash_ids` entry in Mooncake traces.
pub const MOONCAKE_HASH_BLOCK_TOKENS: u32 = 512;

/// Expected Azure CSV header columns, in order.
const AZURE_HEADER: [&str; 3] = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"];

/// Why a trace could not be loaded. Every variant names the file; row-level problems also name
/// the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// File (path or name) being read.
        file: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file} line {line}: {message}")]
    Parse {
        /// File (path or name) being read.
        file: String,
        /// 1-based line number.
        line: u64,
        /// What was wrong with it.
        message: String,
    },
    /// The file holds no requests.
    #[error("{file}: trace holds no requests")]
    Empty {
        /// File (path or name) being read.
        file: String,
    },
    /// Neither the extension nor the first line identifies a known format.
    #[error(
        "{file}: unknown trace format (expected an Azure CSV with header \
         TIMESTAMP,ContextTokens,GeneratedTokens or Mooncake JSONL objects)"
    )]
    UnknownFormat {
        /// File (path or name) being read.
        file: String,
    },
}

/// Supported trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`).
    AzureCsv,
    /// Mooncake JSONL (`timestamp` in ms, `input_length`, `output_length`, `hash_ids`).
    MooncakeJsonl,
}

/// What the parser had to adjust while loading a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Requests read.
    pub rows: usize,
    /// Rows whose input length was 0 and was raised to 1.
    pub clamped_input: usize,
    /// Rows whose output length was 0 and was raised to 1.
    pub clamped_output: usize,
    /// Whether the rows were out of time order in the file (they are sorted in the workload).
    pub reordered: bool,
}

/// A parsed trace and what the parser adjusted on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTrace {
    /// The requests, sorted by arrival with ids 0..n.
    pub workload: Workload,
    /// Adjustments made while parsing.
    pub stats: TraceStats,
}

/// Loads a trace file, detecting its format from the extension (`.csv` is Azure, `.jsonl` or
/// `.json` is Mooncake) or, failing that, from the first non-empty line. Adjustments (zero
/// lengths raised to 1, reordering) are logged as a warning; use [`load_trace_with_stats`] to
/// inspect them.
pub fn load_trace(path: &Path) -> Result<Workload, TraceError> {
    let parsed = load_trace_with_stats(path)?;
    let s = &parsed.stats;
    if s.clamped_input > 0 || s.clamped_output > 0 || s.reordered {
        tracing::warn!(
            file = %path.display(),
            clamped_input = s.clamped_input,
            clamped_output = s.clamped_output,
            reordered = s.reordered,
            "trace adjusted while loading"
        );
    }
    Ok(parsed.workload)
}

/// Like [`load_trace`], also returning what the parser adjusted.
pub fn load_trace_with_stats(path: &Path) -> Result<ParsedTrace, TraceError> {
    let file = path.display().to_string();
    let bytes = fs::read(path).map_err(|source| TraceError::Io {
        file: file.clone(),
        source,
    })?;
    let format = detect_format(path, &bytes)
        .ok_or_else(|| TraceError::UnknownFormat { file: file.clone() })?;
    // Errors name the path as given; the workload is named after the file itself.
    let mut parsed = match format {
        TraceFormat::AzureCsv => parse_azure_csv(&bytes[..], &file)?,
        TraceFormat::MooncakeJsonl => parse_mooncake_jsonl(&bytes[..], &file)?,
    };
    if let Some(name) = path.file_name() {
        parsed.workload.name = name.to_string_lossy().into_owned();
    }
    Ok(parsed)
}

/// Guesses a trace's format: by extension first, then by the first non-empty line (`{` starts
/// Mooncake JSONL, the Azure header starts an Azure CSV).
pub fn detect_format(path: &Path, contents: &[u8]) -> Option<TraceFormat> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv") => return Some(TraceFormat::AzureCsv),
        Some("jsonl" | "json") => return Some(TraceFormat::MooncakeJsonl),
        _ => {}
    }
    let first = contents
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii())
        .find(|l| !l.is_empty())?;
    let first = strip_bom(first);
    if first.starts_with(b"{") {
        Some(TraceFormat::MooncakeJsonl)
    } else if first.starts_with(b"TIMESTAMP") {
        Some(TraceFormat::AzureCsv)
    } else {
        None
    }
}

fn strip_bom(line: &[u8]) -> &[u8] {
    line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
}

/// Reads lines as bytes (so invalid UTF-8 becomes a line-numbered error rather than an I/O one),
/// calling `f(line_number, trimmed_text)` for each non-blank line.
fn for_each_line<R: BufRead>(
    mut reader: R,
    file: &str,
    mut f: impl FnMut(u64, &str) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut buf = Vec::with_capacity(256);
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| TraceError::Io {
                file: file.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let mut bytes = buf.trim_ascii();
        if line_no == 1 {
            bytes = strip_bom(bytes);
        }
        if bytes.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(bytes).map_err(|_| TraceError::Parse {
            file: file.to_owned(),
            line: line_no,
            message: "line is not valid UTF-8".to_owned(),
        })?;
        f(line_no, text)?;
    }
}

/// One row before sorting: absolute time and lengths.
struct Row<T> {
    time: T,
    input: u32,
    output: u32,
    hash_ids: Vec<u64>,
}

/// Parses an Azure LLM inference trace CSV. `name` labels the workload and error messages.
pub fn parse_azure_csv<R: BufRead>(reader: R, name: &str) -> Result<ParsedTrace, TraceError> {
    let mut rows: Vec<Row<CivilTime>> = Vec::new();
    let mut header_seen = false;
    for_each_line(reader, name, |line, text| {
        let err = |message: String| TraceError::Parse {
            file: name.to_owned(),
            line,
            message,
        };
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if !header_seen {
            if fields != AZURE_HEADER {
                return Err(err(format!(
                    "expected header \"TIMESTAMP,ContextTokens,GeneratedTokens\", found \"{}\"",
                    truncate_for_message(text)
                )));
            }
            header_seen = true;
            return Ok(());
        }
        if fields.len() != AZURE_HEADER.len() {
            return Err(err(format!(
                "expected 3 columns (TIMESTAMP,ContextTokens,GeneratedTokens), found {}",
                fields.len()
            )));
        }
        let time = parse_civil_time(fields[0]).map_err(|why| {
            err(format!(
                "TIMESTAMP \"{}\" is not a valid \"YYYY-MM-DD HH:MM:SS[.fraction]\" time: {why}",
                truncate_for_message(fields[0])
            ))
        })?;
        let input = parse_count(fields[1]).map_err(|why| {
            err(format!(
                "ContextTokens \"{}\" {why}",
                truncate_for_message(fields[1])
            ))
        })?;
        let output = parse_count(fields[2]).map_err(|why| {
            err(format!(
                "GeneratedTokens \"{}\" {why}",
                truncate_for_message(fields[2])
            ))
        })?;
        rows.push(Row {
            time,
            input,
            output,
            hash_ids: Vec::new(),
        });
        Ok(())
    })?;
    if !header_seen || rows.is_empty() {
        return Err(TraceError::Empty {
            file: name.to_owned(),
        });
    }
    Ok(finish(rows, name, AZURE_HASH_BLOCK_TOKENS, |t, t0| {
        t.seconds_since(t0)
    }))
}

/// Parses a Mooncake-format JSONL trace. `name` labels the workload and error messages.
/// `hash_ids` may be omitted (no prefix data for that row); unknown keys are ignored.
pub fn parse_mooncake_jsonl<R: BufRead>(reader: R, name: &str) -> Result<ParsedTrace, TraceError> {
    let mut rows: Vec<Row<f64>> = Vec::new();
    for_each_line(reader, name, |line, text| {
        let err = |message: String| TraceError::Parse {
            file: name.to_owned(),
            line,
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| err(format!("not a valid JSON object: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(err("expected a JSON object".to_owned()));
        };
        let field = |key: &str| {
            obj.get(key)
                .ok_or_else(|| err(format!("missing \"{key}\"")))
        };
        let ts = field("timestamp")?;
        let timestamp_ms = ts
            .as_f64()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                err(format!(
                    "timestamp {} is not a non-negative number of milliseconds",
                    truncate_for_message(&ts.to_string())
                ))
            })?;
        let length = |key: &str| -> Result<u32, TraceError> {
            let v = field(key)?;
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    err(format!(
                        "{key} {} is not a non-negative integer below 2^32",
                        truncate_for_message(&v.to_string())
                    ))
                })
        };
        let input = length("input_length")?;
        let output = length("output_length")?;
        let hash_ids = match obj.get("hash_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    id.as_u64().ok_or_else(|| {
                        err(format!(
                            "hash_ids[{i}] {} is not a non-negative integer",
                            truncate_for_message(&id.to_string())
                        ))
                    })
                })
                .collect::<Result<Vec<u64>, TraceError>>()?,
            Some(other) => {
                return Err(err(format!(
                    "hash_ids {} is not an array",
                    truncate_for_message(&other.to_string())
                )));
            }
        };
        rows.push(Row {
            time: timestamp_ms,
            input,
            output,
            hash_ids,
        });
        Ok(())
    })?;
    if rows.is_empty() {
        return Err(TraceError::Empty {
            file: name.to_owned(),
        });
    }
    Ok(finish(rows, name, MOONCAKE_HASH_BLOCK_TOKENS, |t, t0| {
        (t - t0) / 1000.0
    }))
}

/// Sorts rows by time (stable), makes arrivals relative to the earliest row, clamps zero lengths
/// and assigns ids.
fn finish<T: PartialOrd + Copy>(
    mut rows: Vec<Row<T>>,
    name: &str,
    hash_block_tokens: u32,
    since: impl Fn(T, T) -> f64,
) -> ParsedTrace {
    let mut stats = TraceStats {
        rows: rows.len(),
        ..TraceStats::default()
    };
    stats.reordered = rows.windows(2).any(|w| w[1].time < w[0].time);
    if stats.reordered {
        // Times are finite (validated), so partial_cmp never fails; Equal keeps the sort total.
        rows.sort_by(|a, b| {
            a.time
                .partial_cmp(&b.time)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    let t0 = rows.first().map(|r| r.time);
    let requests = rows
        .into_iter()
        .zip(0u64..)
        .map(|(row, id)| {
            if row.input == 0 {
                stats.clamped_input += 1;
            }
            if row.output == 0 {
                stats.clamped_output += 1;
            }
            RequestSpec {
                id,
                arrival_s: t0.map_or(0.0, |t0| since(row.time, t0)),
                input_tokens: row.input.max(1),
                output_tokens: row.output.max(1),
                hash_ids: row.hash_ids,
            }
        })
        .collect();
    ParsedTrace {
        workload: Workload {
            name: name.to_owned(),
            hash_block_tokens,
            requests,
        },
        stats,
    }
}

/// Keeps error messages bounded when a field is huge.
fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

/// Parses a non-negative decimal integer that fits in `u32`.
fn parse_count(s: &str) -> Result<u32, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a non-negative integer");
    }
    s.parse::<u32>().map_err(|_| "is too large (max 2^32 - 1)")
}

/// A wall-clock instant from an Azure timestamp, as whole seconds since 1970-01-01 plus
/// nanoseconds. Ordered lexicographically (seconds, then nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CivilTime {
    secs: i64,
    nanos: u32,
}

impl CivilTime {
    fn seconds_since(self, earlier: CivilTime) -> f64 {
        (self.secs - earlier.secs) as f64
            + (f64::from(self.nanos) - f64::from(earlier.nanos)) * 1e-9
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`
/// algorithm, <https://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Parses `digits` (exactly `len` ASCII digits) as a number.
fn fixed_digits(s: &str, len: usize, what: &'static str) -> Result<u32, &'static str> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(what);
    }
    s.parse::<u32>().map_err(|_| what)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f{1,9}]` (a `T` may separate date and time).
fn parse_civil_time(s: &str) -> Result<CivilTime, &'static str> {
    let (date, time) = s
        .split_once([' ', 'T'])
        .ok_or("missing the space between date and time")?;
    let mut d = date.split('-');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err("date is not YYYY-MM-DD");
    };
    let year = i64::from(fixed_digits(y, 4, "year is not 4 digits")?);
    let month = fixed_digits(mo, 2, "month is not 2 digits")?;
    let day = fixed_digits(da, 2, "day is not 2 digits")?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err("day out of range for the month");
    }
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let mut t = hms.split(':');
    let (Some(h), Some(mi), Some(se), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err("time is not HH:MM:SS");
    };
    let hour = fixed_digits(h, 2, "hour is not 2 digits")?;
    let minute = fixed_digits(mi, 2, "minute is not 2 digits")?;
    let second = fixed_digits(se, 2, "second is not 2 digits")?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }
    let nanos = match frac {
        None => 0,
        Some(f) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err("fraction of a second is not 1 to 9 digits");
            }
            let digits = f.parse::<u32>().map_err(|_| "bad fraction of a second")?;
            // Scale to nanoseconds: pad to 9 digits.
            let pad = 9 - f.len();
            digits * 10u32.pow(u32::try_from(pad).map_err(|_| "bad fraction of a second")?)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3_600
        + i64::from(minute) * 60
        + i64::from(second);
    Ok(CivilTime { secs, nanos })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn azure(text: &str) -> Result<ParsedTrace, TraceError> {
        parse_azure_csv(text.as_bytes(), "t.csv")
    }

    fn mooncake(text: &str) -> Result<ParsedTrace, TraceError> {
        parse_mooncake_jsonl(text.as_bytes(), "t.jsonl")
    }

    fn parse_error_line(r: Result<ParsedTrace, TraceError>) -> (u64, String) {
        match r {
            Err(e @ TraceError::Parse { line, .. }) => (line, e.to_string()),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    const HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens\n";

    #[test]
    fn days_from_civil_known_values() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2023, 11, 16), 19_677);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(
            days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 28),
            2
        );
    }

    #[test]
    fn azure_parses_rows_and_fractions() {
        let p = azure(&format!(
            "{HEADER}2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
        ))
        .unwrap();
        let w = p.workload;
        assert_eq!(w.hash_block_tokens, 16);
        assert_eq!(w.requests.len(), 2);
        assert_eq!(w.requests[0].arrival_s, 0.0);
        assert!((w.requests[1].arrival_s - 4.314579).abs() < 1e-9);
        assert_eq!(w.requests[1].input_tokens, 396);
        assert_eq!(w.requests[1].output_tokens, 109);
        assert!(w.requests[1].hash_ids.is_empty());
    }

    #[test]
    fn azure_crosses_midnight_and_month_end() {
        let p = azure(&format!(
            "{HEADER}2023-12-31 23:59:59.5,1,1\n2024-01-01 00:00:00.25,1,1\n2024-03-01 00:00:00,1,1\n"
        ))
        .unwrap();
        let r = &p.workload.requests;
        assert!((r[1].arrival_s - 0.75).abs() < 1e-12);
        // 2024 is a leap year: Jan 31 + Feb 29 days after Jan 1, minus the first half second.
        assert!((r[2].arrival_s - (60.0 * 86_400.0 + 0.5)).abs() < 1e-9);
    }

    #[test]
    fn azure_sorts_clamps_and_reassigns_ids() {
        let p = azure(&format!(
            "{HEADER}2023-11-16 00:00:10,5,0\n2023-11-16 00:00:05,0,7\n\n2023-11-16 00:00:10,6,6\n"
        ))
        .unwrap();
        assert!(p.stats.reordered);
        assert_eq!(p.stats.clamped_input, 1);
        assert_eq!(p.stats.clamped_output, 1);
        let r = &p.workload.requests;
        let ids: Vec<u64> = r.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!((r[0].input_tokens, r[0].output_tokens), (1, 7));
        assert_eq!(r[0].arrival_s, 0.0);
        // Stable: the two rows at t = 10 keep their file order.
        assert_eq!((r[1].input_tokens, r[1].output_tokens), (5, 1));
        assert_eq!(r[2].input_tokens, 6);
        assert!((r[2].arrival_s - 5.0).abs() < 1e-12);
    }

    #[test]
    fn azure_errors_name_file_and_line() {
        let (line, msg) = parse_error_line(azure(&format!(
            "{HEADER}2023-11-16 00:00:10,5,1\n2023-11-16 00:00:11,abc,1\n"
        )));
        assert_eq!(line, 3);
        assert!(
            msg.starts_with("t.csv line 3: ContextTokens \"abc\""),
            "{msg}"
        );

        let (line, msg) = parse_error_line(azure(&format!("{HEADER}2023-11-16 00:00:10,5,-1\n")));
        assert_eq!(line, 2);
        assert!(
            msg.contains("GeneratedTokens \"-1\" is not a non-negative integer"),
            "{msg}"
        );

        let (line, msg) = parse_error_line(azure(&format!("{HEADER}2023-11-16 00:00:10,5\n")));
        assert_eq!(line, 2);
        assert!(msg.contains("expected 3 columns"), "{msg}");

        let (line, msg) = parse_error_line(azure(&format!("{HEADER}2023-11-16 00:00:10,5,1,9\n")));
        assert_eq!(line, 2);
        assert!(msg.contains("found 4"), "{msg}");

        for bad in [
            "2023-13-16 00:00:10",
            "2023-02-30 00:00:10",
            "2023-11-16 24:00:00",
            "2023-11-16",
            "2023-11-16 00:00:10.1234567890",
            "16/11/2023 00:00:10",
        ] {
            let (line, msg) = parse_error_line(azure(&format!("{HEADER}{bad},1,1\n")));
            assert_eq!(line, 2, "{bad}");
            assert!(msg.contains("TIMESTAMP"), "{msg}");
        }

        let (line, msg) = parse_error_line(azure("time,in,out\n"));
        assert_eq!(line, 1);
        assert!(msg.contains("expected header"), "{msg}");

        let (line, _) = parse_error_line(azure(&format!(
            "{HEADER}2023-11-16 00:00:10,99999999999,1\n"
        )));
        assert_eq!(line, 2);
    }

    #[test]
    fn azure_empty_is_an_error() {
        assert!(matches!(azure(""), Err(TraceError::Empty { .. })));
        assert!(matches!(azure(HEADER), Err(TraceError::Empty { .. })));
    }

    #[test]
    fn mooncake_parses_and_skips_blank_lines() {
        let p = mooncake(
            "{\"timestamp\": 1000, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [0, 1]}\n\n\
             {\"timestamp\": 3500, \"input_length\": 10, \"output_length\": 0, \"hash_ids\": [0]}\n",
        )
        .unwrap();
        let w = p.workload;
        assert_eq!(w.hash_block_tokens, 512);
        assert_eq!(w.requests.len(), 2);
        assert_eq!(w.requests[0].arrival_s, 0.0);
        assert!((w.requests[1].arrival_s - 2.5).abs() < 1e-12);
        assert_eq!(w.requests[0].hash_ids, vec![0, 1]);
        assert_eq!(w.requests[1].output_tokens, 1);
        assert_eq!(p.stats.clamped_output, 1);
    }

    #[test]
    fn mooncake_errors_name_file_and_line() {
        let good =
            "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}\n";
        let cases = [
            (
                "{\"timestamp\": 0, \"input_length\": 1}",
                "missing \"output_length\"",
            ),
            (
                "{\"timestamp\": -5, \"input_length\": 1, \"output_length\": 1}",
                "timestamp -5",
            ),
            (
                "{\"timestamp\": 0, \"input_length\": \"x\", \"output_length\": 1}",
                "input_length \"x\"",
            ),
            (
                "{\"timestamp\": 0, \"input_length\": 1.5, \"output_length\": 1}",
                "input_length 1.5",
            ),
            (
                "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [-1]}",
                "hash_ids[0]",
            ),
            (
                "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": 3}",
                "not an array",
            ),
            ("[1, 2]", "expected a JSON object"),
            ("{\"timestamp\": 0,", "not a valid JSON object"),
        ];
        for (bad, needle) in cases {
            let (line, msg) = parse_error_line(mooncake(&format!("{good}\n{bad}\n")));
            assert_eq!(line, 3, "{bad}");
            assert!(msg.starts_with("t.jsonl line 3: "), "{msg}");
            assert!(msg.contains(needle), "{msg} should contain {needle}");
        }
        assert!(matches!(mooncake("\n\n"), Err(TraceError::Empty { .. })));
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"2023-11-16 00:00:10,\xff\xfe,1\n");
        let (line, msg) = parse_error_line(parse_azure_csv(&bytes[..], "t.csv"));
        assert_eq!(line, 2);
        assert!(msg.contains("UTF-8"));
    }

    #[test]
    fn detect_by_extension_then_content() {
        assert_eq!(
            detect_format(Path::new("a.CSV"), b"{"),
            Some(TraceFormat::AzureCsv)
        );
        assert_eq!(
            detect_format(Path::new("a.jsonl"), b""),
            Some(TraceFormat::MooncakeJsonl)
        );
        assert_eq!(
            detect_format(Path::new("a.txt"), b"\n  {\"timestamp\": 0}"),
            Some(TraceFormat::MooncakeJsonl)
        );
        assert_eq!(
            detect_format(Path::new("trace"), HEADER.as_bytes()),
            Some(TraceFormat::AzureCsv)
        );
        assert_eq!(detect_format(Path::new("trace"), b"hello"), None);
    }

    proptest! {
        #[test]
        fn azure_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_azure_csv(&bytes[..], "p.csv");
            let mut with_header = HEADER.as_bytes().to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = parse_azure_csv(&with_header[..], "p.csv");
        }

        #[test]
        fn mooncake_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_mooncake_jsonl(&bytes[..], "p.jsonl");
        }

        #[test]
        fn azure_never_panics_on_lines(lines in proptest::collection::vec(
            "[0-9: .,\\-T]{0,40}|[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?,-?[0-9]{0,12},[0-9a-z]{0,12}",
            0..20,
        )) {
            let text = format!("{HEADER}{}", lines.join("\n"));
            if let Err(e) = azure(&text) {
                prop_assert!(e.to_string().starts_with("t.csv"));
            }
        }

        #[test]
        fn azure_round_trip(rows in proptest::collection::vec(
            (0u64..400 * 86_400, 0u32..1_000_000_000, 1u32..200_000, 1u32..200_000),
            1..40,
        )) {
            let base = days_from_civil(2023, 1, 1) * 86_400;
            let mut text = HEADER.to_owned();
            for &(secs, nanos, input, output) in &rows {
                let abs = base + secs as i64;
                let (days, sod) = (abs.div_euclid(86_400), abs.rem_euclid(86_400));
                let (y, m, d) = civil_from_days(days);
                text.push_str(&format!(
                    "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{nanos:09},{input},{output}\n",
                    sod / 3600, sod % 3600 / 60, sod % 60
                ));
            }
            let parsed = azure(&text).unwrap();
            let mut sorted = rows.clone();
            sorted.sort_by_key(|&(s, n, _, _)| (s, n));
            let expected: Vec<(f64, u32, u32)> = sorted
                .iter()
                .map(|&(s, n, i, o)| (s as f64 + f64::from(n) * 1e-9, i, o))
                .collect();
            let t0 = expected[0].0;
            prop_assert_eq!(parsed.workload.requests.len(), rows.len());
            for (r, e) in parsed.workload.requests.iter().zip(&expected) {
                prop_assert!((r.arrival_s - (e.0 - t0)).abs() < 1e-6);
                prop_assert_eq!(r.input_tokens, e.1);
                prop_assert_eq!(r.output_tokens, e.2);
            }
        }

        #[test]
        fn mooncake_round_trip(rows in proptest::collection::vec(
            (0u64..10_000_000, 1u32..200_000, 1u32..10_000, proptest::collection::vec(any::<u64>(), 0..8)),
            1..40,
        )) {
            let text: String = rows
                .iter()
                .map(|(ts, i, o, h)| {
                    format!(
                        "{}\n",
                        serde_json::json!({"timestamp": ts, "input_length": i, "output_length": o, "hash_ids": h})
                    )
                })
                .collect();
            let parsed = mooncake(&text).unwrap();
            let mut expected = rows.clone();
            expected.sort_by_key(|r| r.0);
            let t0 = expected[0].0;
            for (r, e) in parsed.workload.requests.iter().zip(&expected) {
                prop_assert!((r.arrival_s - (e.0 - t0) as f64 / 1000.0).abs() < 1e-9);
                prop_assert_eq!(r.input_tokens, e.1);
                prop_assert_eq!(r.output_tokens, e.2);
                prop_assert_eq!(&r.hash_ids, &e.3);
            }
        }
    }

    /// Inverse of `days_from_civil` (Hinnant), for generating test timestamps.
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (if m <= 2 { y + 1 } else { y }, m, d)
    }
}
