//! Loads the public traces in `shared/data` and checks them against their published statistics.
//!
//! The data directory is `$GOODPUT_SHARED_DATA` if set, else `<crate>/../../shared/data`. A
//! missing file fails the test (it is never skipped).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::PathBuf;

use goodput_sim::workload::Workload;
use goodput_sim::workload::trace::{TraceError, load_trace, load_trace_with_stats};

fn data_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("GOODPUT_SHARED_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "trace file {} not found: set GOODPUT_SHARED_DATA to the shared data directory",
        path.display()
    );
    path
}

fn mean(w: &Workload, f: impl Fn(&goodput_sim::workload::RequestSpec) -> u32) -> f64 {
    w.requests.iter().map(|r| f64::from(f(r))).sum::<f64>() / w.requests.len() as f64
}

fn check_well_formed(w: &Workload) {
    assert!(
        w.requests
            .windows(2)
            .all(|p| p[0].arrival_s <= p[1].arrival_s)
    );
    assert!(w.requests.iter().zip(0u64..).all(|(r, i)| r.id == i));
    assert!(
        w.requests
            .iter()
            .all(|r| r.input_tokens >= 1 && r.output_tokens >= 1)
    );
    assert_eq!(w.requests[0].arrival_s, 0.0);
}

#[test]
fn azure_conversation_trace() {
    let start = std::time::Instant::now();
    let parsed = load_trace_with_stats(&data_file("azure-2023-conv.csv")).unwrap();
    let elapsed = start.elapsed();
    let w = parsed.workload;
    assert_eq!(w.name, "azure-2023-conv.csv");
    assert_eq!(w.requests.len(), 19_366);
    assert_eq!(w.hash_block_tokens, 16);
    assert!((w.duration_s() - 3502.0).abs() < 1.0, "{}", w.duration_s());
    assert!((mean(&w, |r| r.input_tokens) - 1155.0).abs() < 1.0);
    assert!((mean(&w, |r| r.output_tokens) - 211.0).abs() < 1.0);
    assert!(w.requests.iter().all(|r| r.hash_ids.is_empty()));
    assert_eq!(parsed.stats.clamped_input + parsed.stats.clamped_output, 0);
    check_well_formed(&w);
    // Generous bound: milliseconds in release, well under a second in the test profile.
    assert!(elapsed.as_secs_f64() < 2.0, "loading took {elapsed:?}");
}

#[test]
fn azure_code_trace() {
    let w = load_trace(&data_file("azure-2023-code.csv")).unwrap();
    assert_eq!(w.requests.len(), 8_819);
    assert!((w.duration_s() - 3436.0).abs() < 2.0, "{}", w.duration_s());
    assert!((mean(&w, |r| r.input_tokens) - 2048.0).abs() < 1.0);
    assert!((mean(&w, |r| r.output_tokens) - 27.9).abs() < 0.1);
    check_well_formed(&w);
}

#[test]
fn mooncake_conversation_trace() {
    let w = load_trace(&data_file("mooncake-conversation.jsonl")).unwrap();
    assert_eq!(w.requests.len(), 12_031);
    assert_eq!(w.hash_block_tokens, 512);
    assert!((w.duration_s() - 3537.0).abs() < 1.0, "{}", w.duration_s());
    assert!((mean(&w, |r| r.input_tokens) - 12_035.0).abs() < 1.0);
    check_well_formed(&w);
    // One hash id per started 512-token block; 36.6 % of blocks repeat an earlier one.
    let mut seen = HashSet::new();
    let (mut blocks, mut repeats) = (0usize, 0usize);
    for r in &w.requests {
        assert_eq!(r.hash_ids.len() as u32, r.input_tokens.div_ceil(512));
        for &h in &r.hash_ids {
            blocks += 1;
            if !seen.insert(h) {
                repeats += 1;
            }
        }
    }
    let share = repeats as f64 / blocks as f64;
    assert!((share - 0.366).abs() < 0.01, "repeat share {share}");
}

#[test]
fn malformed_file_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("goodput-workload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken-trace.csv");
    std::fs::write(
        &path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:15:46.6805900,374,44\n\
         2023-11-16 18:15:47.0000000,12x,44\n",
    )
    .unwrap();
    let err = load_trace(&path).unwrap_err();
    let jsonl = dir.join("broken-trace.jsonl");
    std::fs::write(
        &jsonl,
        "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n\n\
         {\"timestamp\": 10, \"input_length\": 5}\n",
    )
    .unwrap();
    let err_jsonl = load_trace(&jsonl).unwrap_err();
    let missing = load_trace(&dir.join("no-such-trace.csv")).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(matches!(err, TraceError::Parse { line: 3, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("broken-trace.csv") && msg.contains("line 3") && msg.contains("\"12x\""),
        "{msg}"
    );
    let msg = err_jsonl.to_string();
    assert!(
        msg.contains("broken-trace.jsonl")
            && msg.contains("line 3")
            && msg.contains("output_length"),
        "{msg}"
    );
    assert!(matches!(missing, TraceError::Io { .. }));
    assert!(missing.to_string().contains("no-such-trace.csv"));
}
