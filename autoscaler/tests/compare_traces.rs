//! goodput against the peers' policies on real traces, one hour each (about 90 s for all
//! three in the optimised test profile, most of it sizing the static fleets by simulation; the
//! figures are in docs/autoscaling.md): Azure conversation and code under a daily
//! envelope, and Mooncake conversation, on the heterogeneous H100 / A100 / L40S / TPU v5e
//! scenarios in `autoscaler/scenarios/`. The data comes from `GOODPUT_SHARED_DATA` or
//! `<CARGO_MANIFEST_DIR>/../../shared/data`; a missing file fails the test with its path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use goodput_autoscaler::compare::compare;
use goodput_core::Role;
use goodput_sim::report::RunReport;
use goodput_sim::scenario::Scenario;
use goodput_sim::workload::generate::Envelope;
use goodput_sim::workload::{trace, transform};

fn data(name: &str) -> PathBuf {
    let dir = std::env::var("GOODPUT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "trace {} not found: set GOODPUT_SHARED_DATA to the shared data folder",
        p.display()
    );
    p
}

fn scenario(name: &str) -> Scenario {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.yaml"));
    Scenario::from_file(&p).unwrap()
}

fn run(
    scn: &str,
    file: &str,
    peak_to_trough: Option<f64>,
    factor: f64,
    max_s: f64,
) -> Vec<RunReport> {
    let mut w = trace::load_trace(&data(file)).unwrap();
    if let Some(r) = peak_to_trough {
        let env = Envelope::Daily {
            peak_to_trough: r,
            period_s: 3600.0,
            phase: 0.0,
        };
        w = transform::apply_envelope(w, &env, 1).unwrap();
    }
    if factor != 1.0 {
        w = transform::thin_or_replicate(w, factor, 2).unwrap();
    }
    w = transform::truncate(w, max_s).unwrap();
    let policies: Vec<String> = [
        "goodput",
        "keda-slo",
        "wva-saturation",
        "dynamo-planner",
        "static-peak",
        "hpa-kv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let reports = compare(&scenario(scn), &w, &policies).unwrap();
    print!("{}", goodput_sim::report::table::compare_table(&reports));
    reports
}

/// goodput changes replicas less often than the reactive one-step WVA saturation analyzer (not
/// asserted on azure-code, where it does not hold yet: see docs/autoscaling.md).
fn fewer_events_than_wva(rs: &[RunReport]) {
    let g = by(rs, "goodput").scale_events.len();
    let wva = by(rs, "wva-saturation").scale_events.len();
    assert!(g < wva, "goodput {g} scale events vs wva {wva}");
}

fn by<'a>(rs: &'a [RunReport], name: &str) -> &'a RunReport {
    rs.iter().find(|r| r.policy == name).unwrap()
}

/// No policy in `rivals` dominates goodput (reaches at least its SLO attainment at no more cost).
fn not_dominated(rs: &[RunReport], rivals: &[&str]) {
    let g = by(rs, "goodput");
    for r in rs.iter().filter(|r| rivals.contains(&r.policy.as_str())) {
        assert!(
            !(r.requests.slo_attainment >= g.requests.slo_attainment && r.cost_usd <= g.cost_usd),
            "{} dominates goodput: {} at ${} vs {} at ${}",
            r.policy,
            r.requests.slo_attainment,
            r.cost_usd,
            g.requests.slo_attainment,
            g.cost_usd
        );
    }
}

const REACTIVE: [&str; 4] = ["keda-slo", "wva-saturation", "dynamo-planner", "hpa-kv"];

/// No baseline dominates goodput, the static fleet included.
fn check(rs: &[RunReport]) {
    let mut all = REACTIVE.to_vec();
    all.push("static-peak");
    not_dominated(rs, &all);
}

#[test]
fn azure_conv_under_daily_envelope() {
    let rs = run("hetero-conv", "azure-2023-conv.csv", Some(2.0), 8.0, 3600.0);
    check(&rs);
    fewer_events_than_wva(&rs);
    let g = by(&rs, "goodput");
    assert!(
        g.requests.slo_attainment >= 0.99,
        "attainment {}",
        g.requests.slo_attainment
    );
}

/// On the one-hour azure-code replay no reactive baseline dominates goodput. The static fleet
/// of 4 prefill and 1 decode H100s holds 99 % for about $19.0 against goodput's 95 % for about
/// $18.6: too thin a margin to assert either way. The trace's one-second bursts, not its
/// minute rates, set the fleet this replay needs, and a fleet started after a burst begins does
/// not serve it (docs/autoscaling.md, "Reading the results"). Over a whole day of the same
/// trace goodput holds 99.4 % at 0.67x the static fleet's cost (the "A whole day" table there).
#[test]
fn azure_code_under_daily_envelope() {
    let rs = run(
        "hetero-code",
        "azure-2023-code.csv",
        Some(10.0),
        4.0,
        3600.0,
    );
    not_dominated(&rs, &REACTIVE);
}

/// On mooncake goodput holds 99 % and no reactive baseline comes near; the cheapest static fleet
/// that holds 99 % costs about 0.92x goodput here (docs/autoscaling.md). Offered H100 prefill
/// and decode variants beside the unified ones, goodput serves the 12k-token prompts on the
/// P/D path, where a long prefill no longer stalls the decodes (on the unified variants alone
/// about 1 % of requests missed the ITL target whatever the fleet).
#[test]
fn mooncake_conversation() {
    let rs = run(
        "hetero-mooncake",
        "mooncake-conversation.jsonl",
        None,
        1.0,
        3600.0,
    );
    not_dominated(&rs, &REACTIVE);
    fewer_events_than_wva(&rs);
    let g = by(&rs, "goodput");
    assert!(
        g.requests.slo_attainment >= 0.99,
        "attainment {}",
        g.requests.slo_attainment
    );
    let served = |role: Role| -> u64 {
        g.variants
            .iter()
            .filter(|v| v.role == role)
            .map(|v| v.requests)
            .sum()
    };
    assert!(
        served(Role::Decode) > 9 * served(Role::Unified),
        "P/D path: {:?}",
        g.variants
            .iter()
            .map(|v| (&v.name, v.requests))
            .collect::<Vec<_>>()
    );
}
