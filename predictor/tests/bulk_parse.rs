//! The byte-level fast path of `/predict/bulk/strict`'s body against the generic walk it falls
//! back to: on generated bodies (valid rows with edge values, random whitespace, key order and
//! unknown keys, then random mutations: dropped and duplicated keys, wrong types, escapes,
//! truncation, byte flips) it never panics, whatever it accepts the generic walk accepts with
//! bit-identical rows, and it accepts every plainly valid body (so it cannot pass by refusing).

#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use goodput_predictor::Features;
use goodput_predictor::server::api::{parse_bulk_features, parse_bulk_features_fast};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A value's JSON text, and whether the fast path must accept it (`false`: it may refuse).
type Text = (String, bool);

fn pick(plain: bool, texts: &'static [&'static str]) -> impl Strategy<Value = Text> {
    prop::sample::select(texts).prop_map(move |s| (s.to_string(), plain))
}

fn fraction() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => (0.0f64..=1.0).prop_map(|x| (format!("{x}"), true)),
        1 => (0.0f64..=1.0).prop_map(|x| (format!("{x:e}"), true)),
        1 => (0u32..=1000).prop_map(|n| (format!("{}", f64::from(n) / 1000.0), true)),
        1 => pick(true, &["0", "1", "0.0", "1.0", "1e0", "0.5E+0", "5e-1", "1E-22",
            "0.000000000000000000000000001", "0.30000000000000004", "0.9166666666666666",
            "4.9e-324", "123456789012345678901234567890e-30"]),
        2 => pick(false, &["-0.0", "-0", "1e-400", "0.12345678901234567890123",
            "1.0000000000000001", "1.0000001", "2", "-0.5", "1e400", "01", "1.", "-", ".5",
            "0.5.5", "NaN", "\"0.5\"", "null", "true", "[]", "{}", "1e", "0.5e+", "+0.5",
            "1e-99999999999999"]),
    ]
}

fn count32() -> impl Strategy<Value = Text> {
    prop_oneof![
        4 => any::<u32>().prop_map(|n| (n.to_string(), true)),
        2 => (0u32..100).prop_map(|n| (n.to_string(), true)),
        1 => pick(true, &["0", "4294967295"]),
        2 => pick(false, &["4294967296", "10.0", "1e3", "-1", "-0", "01", "1.5", "00",
            "18446744073709551616", "99999999999999999999999", "null", "\"1\"", "true", "{}"]),
    ]
}

fn count64() -> impl Strategy<Value = Text> {
    prop_oneof![
        4 => any::<u64>().prop_map(|n| (n.to_string(), true)),
        2 => (0u64..10_000).prop_map(|n| (n.to_string(), true)),
        1 => pick(true, &["0", "18446744073709551615"]),
        2 => pick(false, &["18446744073709551616", "1e19", "5120.0", "-1", "-0", "01",
            "184467440737095516150", "null", "\"5\"", "[]"]),
    ]
}

/// `ms_since_last_token`, `ms_since_oldest_prefill`: null or milliseconds >= 0.
fn elapsed_ms() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => (0.0f64..1e6).prop_map(|x| (format!("{x}"), true)),
        1 => (0u32..100_000).prop_map(|n| (n.to_string(), true)),
        1 => pick(true, &["null", "0", "0.0", "12.5", "1e3", "4.9e-324"]),
        2 => pick(false, &["-1", "-0.5", "-0", "1e400", "NaN", "\"5\"", "[]", "{}", "true",
            "01", "1.", "nul"]),
    ]
}

fn pod_type() -> impl Strategy<Value = Text> {
    prop_oneof![
        3 => pick(true, &["null", "\"\"", "\"prefill\"", "\"decode\"", "\"encode\"",
            "\"d\u{e9}code\"", "\"\u{1F600}\""]),
        1 => pick(false, &["\"dec\\u006fde\"", "\"de\\\"code\"", "1", "[]", "{}", "true",
            "\"a\tb\""]),
    ]
}

/// An unknown key and its value.
fn unknown() -> impl Strategy<Value = (String, Text)> {
    let key = prop::sample::select(&["unknown", "timestamp", "x", "", "mod\u{e8}le", "kv"][..])
        .prop_map(str::to_string);
    let value = prop_oneof![
        3 => pick(true, &["\"abc\"", "\"\"", "\"\u{fc}ber\"", "12", "-3", "1.5e3", "-0", "0.25",
            "true", "false", "null", "123456789012345678", "1e308"]),
        1 => pick(false, &["{\"a\":[1,2]}", "[1,{}]", "[]", "{}", "\"a\\nb\"", "1e400",
            "nul", "tru", "-", "01", "\"\u{7}\""]),
    ];
    (key, value)
}

/// One row: its entries in the order written, and whether it is plainly valid.
fn row() -> impl Strategy<Value = Vec<(String, Text)>> {
    let required = (
        fraction(),
        count32(),
        count32(),
        count32(),
        count32(),
        fraction(),
    );
    let optional = (
        prop::option::of(pod_type()),
        prop::option::of(count64()),
        prop::option::of(count64()),
        prop::option::of(count64()),
        prop::option::of(count64()),
        prop::option::of(elapsed_ms()),
        prop::option::of(elapsed_ms()),
    );
    (required, optional, prop::collection::vec(unknown(), 0..3)).prop_flat_map(
        |((kv, input, waiting, running, generated, prefix), (pod, pf, dc, em, ei, ms, mp), unk)| {
            let mut e: Vec<(String, Text)> = vec![
                ("kv_cache_percentage".into(), kv),
                ("input_token_length".into(), input),
                ("num_request_waiting".into(), waiting),
                ("num_request_running".into(), running),
                ("num_tokens_generated".into(), generated),
                ("prefix_cache_score".into(), prefix),
            ];
            for (name, v) in [
                ("pod_type", pod),
                ("prefill_tokens_in_flight", pf),
                ("decode_tokens_in_flight", dc),
                ("encoder_matched_size", em),
                ("encoder_input_size", ei),
                ("ms_since_last_token", ms),
                ("ms_since_oldest_prefill", mp),
            ] {
                if let Some(v) = v {
                    e.push((name.into(), v));
                }
            }
            e.extend(unk);
            Just(e).prop_shuffle()
        },
    )
}

/// A change that may make a body invalid (or unusual).
#[derive(Debug, Clone)]
enum Mutation {
    None,
    DropEntry(prop::sample::Index, prop::sample::Index),
    DuplicateEntry(
        prop::sample::Index,
        prop::sample::Index,
        prop::sample::Index,
    ),
    EscapeKey(prop::sample::Index, prop::sample::Index),
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        4 => Just(Mutation::None),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DropEntry(a, b)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::DuplicateEntry(a, b, c)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::EscapeKey(a, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
    ]
}

/// Writes tokens with the whitespace of `ws` (cycled) between them.
struct Writer<'a> {
    out: String,
    ws: &'a [&'static str],
    n: usize,
}

impl Writer<'_> {
    fn tok(&mut self, t: &str) {
        self.out.push_str(self.ws[self.n % self.ws.len()]);
        self.n += 1;
        self.out.push_str(t);
    }
}

struct Body {
    bytes: Vec<u8>,
    /// Plainly valid, within `max_rows`: the fast path must accept it.
    plain: bool,
}

fn render(
    mut rows: Vec<Vec<(String, Text)>>,
    spare: &[(String, Text)],
    top: &[(String, Text)],
    requests_at: usize,
    ws: &[&'static str],
    m: &Mutation,
) -> Body {
    let mut plain = rows.iter().flatten().chain(top).all(|(_, (_, ok))| *ok);
    match m {
        Mutation::None
        | Mutation::Truncate(_)
        | Mutation::Flip(..)
        | Mutation::Insert(..)
        | Mutation::Delete(_) => {}
        Mutation::DropEntry(r, e) => {
            let i = r.index(rows.len());
            let j = e.index(rows[i].len());
            rows[i].remove(j);
            plain = false;
        }
        Mutation::DuplicateEntry(r, e, at) => {
            // The same key again, with the value another generated row has for it (if any).
            let i = r.index(rows.len());
            let j = e.index(rows[i].len());
            let key = rows[i][j].0.clone();
            let value = spare
                .iter()
                .find(|(k, _)| *k == key)
                .map_or_else(|| rows[i][j].1.clone(), |(_, v)| v.clone());
            let at = at.index(rows[i].len() + 1);
            rows[i].insert(at, (key, value));
            plain = false;
        }
        Mutation::EscapeKey(r, e) => {
            // `\u0061` is `a` (or the key's first letter escaped): the same key, escaped.
            let i = r.index(rows.len());
            let j = e.index(rows[i].len());
            let k = &mut rows[i][j].0;
            if let Some(c) = k.chars().next().filter(char::is_ascii) {
                *k = format!("\\u{:04x}{}", u32::from(c), &k[1..]);
                plain = false;
            }
        }
    }
    let mut w = Writer {
        out: String::new(),
        ws,
        n: 0,
    };
    w.tok("{");
    let mut first = true;
    let mut sep = |w: &mut Writer<'_>| {
        if !first {
            w.tok(",");
        }
        first = false;
    };
    for (t, (k, (v, _))) in top.iter().enumerate() {
        if t == requests_at {
            sep(&mut w);
            write_requests(&mut w, &rows);
        }
        sep(&mut w);
        w.tok(&format!("\"{k}\""));
        w.tok(":");
        w.tok(v);
    }
    if requests_at >= top.len() {
        sep(&mut w);
        write_requests(&mut w, &rows);
    }
    w.tok("}");
    w.tok("");
    let mut bytes = w.out.into_bytes();
    match m {
        Mutation::Truncate(i) => {
            bytes.truncate(i.index(bytes.len()));
            plain = false;
        }
        Mutation::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
            plain = false;
        }
        Mutation::Insert(i, b) => {
            bytes.insert(i.index(bytes.len() + 1), *b);
            plain = false;
        }
        Mutation::Delete(i) => {
            bytes.remove(i.index(bytes.len()));
            plain = false;
        }
        _ => {}
    }
    Body { bytes, plain }
}

fn write_requests(w: &mut Writer<'_>, rows: &[Vec<(String, Text)>]) {
    w.tok("\"requests\"");
    w.tok(":");
    w.tok("[");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            w.tok(",");
        }
        w.tok("{");
        for (j, (k, (v, _))) in r.iter().enumerate() {
            if j > 0 {
                w.tok(",");
            }
            w.tok(&format!("\"{k}\""));
            w.tok(":");
            w.tok(v);
        }
        w.tok("}");
    }
    w.tok("]");
}

/// Every field with its exact bits (f64 `==` would let `-0.0` pass for `0.0`).
fn bits(v: &[Features]) -> Vec<[u64; 9]> {
    v.iter()
        .map(|f| {
            [
                f.kv_cache_percentage.to_bits(),
                u64::from(f.input_token_length),
                u64::from(f.num_request_waiting),
                u64::from(f.num_request_running),
                u64::from(f.num_tokens_generated),
                f.prefix_cache_score.to_bits(),
                u64::from(f.pod_type.code()),
                f.prefill_tokens_in_flight,
                f.decode_tokens_in_flight,
            ]
        })
        .collect()
}

/// The contract: if the fast path accepts, the generic walk accepts with identical rows.
fn check(bytes: &[u8], max_rows: usize) -> Option<Vec<Features>> {
    let fast = parse_bulk_features_fast(bytes, max_rows);
    if let Some(v) = &fast {
        let value: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "fast path accepted a body serde_json rejects ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        });
        let generic = parse_bulk_features(&value, max_rows).unwrap_or_else(|e| {
            panic!(
                "fast path accepted a body the generic walk rejects ({e:?}): {}",
                String::from_utf8_lossy(bytes)
            )
        });
        assert_eq!(
            bits(v),
            bits(&generic),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    fast
}

fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(&["", "", "", "", " ", "\n", "\t", "\r", "  \n  "][..]),
        1..16,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_fast_path_accepts_only_what_the_generic_walk_accepts_identically(
        rows in prop::collection::vec(row(), 1..5),
        spare in row(),
        top in prop::collection::vec(unknown(), 0..3),
        requests_at in 0usize..4,
        ws in whitespace(),
        m in mutation(),
        max_rows in 1usize..6,
    ) {
        let n = rows.len();
        let body = render(rows, &spare, &top, requests_at, &ws, &m);
        let fast = check(&body.bytes, max_rows);
        if body.plain && n <= max_rows {
            prop_assert!(
                fast.is_some(),
                "refused a plainly valid body: {}",
                String::from_utf8_lossy(&body.bytes)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_disagree(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&bytes, 10);
        let mut b = br#"{"requests":[{"kv_cache_percentage":"#.to_vec();
        b.extend_from_slice(&bytes);
        check(&b, 10);
    }
}

#[test]
fn the_bench_body_takes_the_fast_path() {
    // The body of `benches/predict.rs`'s `predict_bulk_strict_1000_server_side`.
    let rows: Vec<_> = (0..1000)
        .map(|i| {
            json!({"kv_cache_percentage": (i % 100) as f64 / 100.0, "input_token_length": 1830,
                   "num_request_waiting": i % 5, "num_request_running": i % 48,
                   "num_tokens_generated": 1, "prefix_cache_score": 0.5,
                   "prefill_tokens_in_flight": 5120 + i, "decode_tokens_in_flight": 0,
                   "encoder_input_size": 0, "encoder_matched_size": 0, "pod_type": ""})
        })
        .collect();
    let body = json!({ "requests": rows }).to_string();
    let v = check(body.as_bytes(), 100_000).expect("the bench body takes the fast path");
    assert_eq!(v.len(), 1000);
    assert_eq!(v[7].kv_cache_percentage, 0.07);
    assert_eq!(v[7].prefill_tokens_in_flight, 5127);
    // Pretty-printed (whitespace everywhere JSON allows it) too.
    let pretty = serde_json::to_string_pretty(&json!({ "requests": rows })).unwrap();
    assert_eq!(
        check(pretty.as_bytes(), 100_000).map(|v| v.len()),
        Some(1000)
    );
}
