//! The engine model against measured vLLM step times: Splitwise's Llama-2-70B prefill and decode
//! measurements on A100-80GB and H100-80GB at TP 2, 4 and 8
//! (`../shared/data/splitwise-llama2-70b.csv`). The median absolute percentage error must stay
//! within 10 % for prefill and for decode, overall and for every (accelerator, TP)
//! configuration. Run with `--nocapture` to see the table that docs/simulator.md reproduces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use goodput_core::Catalog;
use goodput_sim::profile::profile;

fn shared_data(file: &str) -> PathBuf {
    let dir = std::env::var_os("GOODPUT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: the calibration data lives in ../shared/data beside the repository \
         (or set GOODPUT_SHARED_DATA)",
        path.display()
    );
    path
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, serde::Deserialize)]
struct Row {
    hardware: String,
    prompt_size: u32,
    batch_size: u32,
    token_size: u32,
    prompt_time: f64,
    token_time: f64,
    tensor_parallel: u32,
}

type Points = BTreeMap<(String, u32, u32, u32, u32), (Vec<f64>, Vec<f64>)>;

#[test]
fn splitwise_llama2_70b_prefill_and_decode_within_10_percent_median() {
    let path = shared_data("splitwise-llama2-70b.csv");
    let mut reader = csv::Reader::from_path(&path).unwrap();
    // Group repeated measurements and take their median, per configuration point.
    let mut points: Points = BTreeMap::new();
    for row in reader.deserialize::<Row>() {
        let r = row.unwrap();
        // Power-capped H100 runs are a different operating point, not a device in the catalog.
        let acc = match r.hardware.as_str() {
            "a100-80gb" => "a100",
            "h100-80gb" => "h100",
            _ => continue,
        };
        let key = (
            acc.to_string(),
            r.tensor_parallel,
            r.prompt_size,
            r.batch_size,
            r.token_size,
        );
        let e = points.entry(key).or_default();
        e.0.push(r.prompt_time);
        e.1.push(r.token_time);
    }
    assert!(
        points.len() > 60,
        "too few calibration points: {}",
        points.len()
    );
    let catalog = Catalog::builtin();
    let mut errors: BTreeMap<(String, u32), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for ((acc, tp, prompt, batch, tokens), (pt, tt)) in points {
        // Splitwise's token_time is the mean decode iteration over `tokens` generated tokens,
        // so the matching context is the prompt plus half the generation.
        let ctx = Some(prompt + tokens / 2);
        let p = profile(&catalog, "llama-2-70b", &acc, tp, prompt, batch, ctx).unwrap();
        let e = errors.entry((acc, tp)).or_default();
        e.0.push((p.prefill_ms / median(pt) - 1.0).abs());
        e.1.push((p.decode_ms / median(tt) - 1.0).abs());
    }
    let (mut all_p, mut all_d) = (Vec::new(), Vec::new());
    println!("| accelerator | TP | points | prefill MdAPE | decode MdAPE |");
    println!("|---|---|---|---|---|");
    for ((acc, tp), (p, d)) in &errors {
        let (mp, md) = (median(p.clone()) * 100.0, median(d.clone()) * 100.0);
        println!("| {acc} | {tp} | {} | {mp:.1} % | {md:.1} % |", p.len());
        assert!(mp <= 10.0, "{acc} TP{tp}: prefill MdAPE {mp:.1} %");
        assert!(md <= 10.0, "{acc} TP{tp}: decode MdAPE {md:.1} %");
        all_p.extend(p);
        all_d.extend(d);
    }
    let (mp, md) = (median(all_p) * 100.0, median(all_d) * 100.0);
    println!("| all | | | {mp:.1} % | {md:.1} % |");
    assert!(
        mp <= 10.0 && md <= 10.0,
        "overall prefill {mp:.1} %, decode {md:.1} %"
    );
}

#[test]
fn other_models_and_accelerators_come_out_plausible_by_the_same_physics() {
    let c = Catalog::builtin();
    let p = |m: &str, a: &str, tp: u32, prompt: u32, batch: u32| {
        profile(&c, m, a, tp, prompt, batch, None).unwrap()
    };
    // Llama-3.1-8B on one H100: single-stream decode is weight-streaming bound (16 GB at
    // ~2.4 TB/s effective, plus launch overheads): 7-15 ms. A 1k prefill: 15-60 ms.
    let h = p("llama-3.1-8b", "h100", 1, 1024, 1);
    assert!((7.0..15.0).contains(&h.decode_ms), "{h:?}");
    assert!((15.0..60.0).contains(&h.prefill_ms), "{h:?}");
    // Slower memory decodes slower; less compute prefills slower.
    let l = p("llama-3.1-8b", "l40s", 1, 1024, 1);
    let a = p("llama-3.1-8b", "a100", 1, 1024, 1);
    assert!(l.decode_ms > a.decode_ms && a.decode_ms > h.decode_ms);
    assert!(l.prefill_ms > h.prefill_ms && a.prefill_ms > h.prefill_ms);
    let mi = p("llama-3.1-8b", "mi300x", 1, 1024, 1);
    assert!(
        mi.decode_ms < a.decode_ms,
        "MI300X has 2.6x A100's bandwidth"
    );
    // Bigger models take longer on the same devices; more TP makes a 70B model faster.
    let q = p("qwen3-32b", "h100", 2, 1024, 8);
    let l70 = p("llama-3.1-70b", "h100", 2, 1024, 8);
    let l70_tp4 = p("llama-3.1-70b", "h100", 4, 1024, 8);
    assert!(l70.decode_ms > q.decode_ms && l70.prefill_ms > q.prefill_ms);
    assert!(l70_tp4.decode_ms < l70.decode_ms);
    // BLOOM-176B needs 8 H100s and is slower again; on two it does not fit at all.
    let b = p("bloom-176b", "h100", 8, 1024, 8);
    assert!(b.decode_ms > l70_tp4.decode_ms);
    assert_eq!(p("bloom-176b", "h100", 2, 1024, 1).kv_capacity_tokens, 0);
    // TPUs: 8B needs at least 2 v5e chips for its weights plus KV.
    assert_eq!(
        p("llama-3.1-8b", "tpu-v5e", 1, 128, 1).kv_capacity_tokens,
        0
    );
    assert!(p("llama-3.1-8b", "tpu-v5e", 2, 128, 1).kv_capacity_tokens > 40_000);
    // Batching amortises weight reads: 64 sequences decode in far less than 64x one.
    let b64 = p("llama-3.1-8b", "h100", 1, 1024, 64);
    assert!(b64.decode_ms < 8.0 * h.decode_ms);
}
