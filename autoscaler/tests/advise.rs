//! `goodput autoscaler advise` against a real Prometheus (Debian's binary) scraping `goodput sim
//! serve`'s live vLLM-compatible servers under a known load: the recommendation must be what
//! the decision engine decides when it is handed that load directly.
//!
//! Tolerance: one replica. The engine fed directly sees the load generator's exact arrival rate;
//! advise sees Prometheus' `rate()` over a 20 s window of a Poisson arrival process, which
//! extrapolates at the window's ends and counts completions, not arrivals, so the rate it reads
//! differs by up to ~20 %; at a few requests per second per replica that can move a ceiling by
//! one replica, never more. The prompt/output shape is exact (ratios of counters).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/prom.rs"]
mod prom;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use goodput_autoscaler::advise::{AdviseConfig, Advisor, render};
use goodput_autoscaler::capacity::EngineCapacity;
use goodput_autoscaler::compare::PROBE_QUANTILE;
use goodput_autoscaler::controller::run::now;
use goodput_autoscaler::crd::EngineSetup;
use goodput_autoscaler::export::{ControllerMetrics, encode, registry};
use goodput_autoscaler::goodput::GoodputPolicy;
use goodput_autoscaler::metrics::PromHttp;
use goodput_core::{Catalog, VariantLoad};
use goodput_sim::cluster::resolve_variants;
use goodput_sim::live::load::{LoadConfig, run_load};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use goodput_sim::policy::{ClusterView, PoolView, VariantView};
use goodput_sim::workload::generate::{GeneratorSpec, LengthProfile};

const CONFIG: &str = r#"
name: llama
namespace: llm
spec:
  model: llama-3.1-8b
  slo: { ttft: { targetMs: 1000 }, itl: { targetMs: 40 } }
  variants:
    - name: h100
      pool: l40s
      acceleratorsPerReplica: 1
      scaleTargetRef: { name: llama }
      minReplicas: 1
      maxReplicas: 32
  policy: { intervalSeconds: 10, startupSeconds: 30 }
  metrics: { window: 20s }
pools:
  l40s: { acceleratorType: l40s, devices: 256, pricePerDeviceHour: 1.0 }
"#;

const RATE: f64 = 4.0;

/// What the engine decides, handed the load directly (no Prometheus).
fn engine_decision(config: &AdviseConfig, rate: f64, replicas: u32) -> u32 {
    let setup = EngineSetup::from_spec(&config.spec, &config.pools, &Catalog::builtin()).unwrap();
    let variants = resolve_variants(&setup.scenario, setup.scenario.mode).unwrap();
    let capacity = EngineCapacity::new(
        variants.iter().map(|v| v.engine.clone()).collect(),
        setup.scenario.slo,
        PROBE_QUANTILE,
    );
    let mut policy = GoodputPolicy::new(setup.config, capacity);
    let v = &variants[0];
    let view = ClusterView {
        now_s: 1000.0,
        variants: vec![VariantView {
            name: v.name.clone(),
            accelerator: v.accelerator.clone(),
            tp: v.tp,
            role: v.role,
            price_per_hour: v.price_per_device_hour * v.tp as f64,
            min_replicas: v.min_replicas,
            max_replicas: v.max_replicas,
            target: replicas,
            ready: replicas,
            starting: 0,
            draining: 0,
            load: Some(VariantLoad {
                replicas_reporting: replicas,
                request_rate: rate,
                mean_prompt_tokens: 256.0,
                mean_output_tokens: 32.0,
                age_s: 1.0,
                ..VariantLoad::default()
            }),
        }],
        pools: setup
            .scenario
            .pools
            .iter()
            .map(|p| PoolView {
                accelerator: p.accelerator.clone(),
                capacity: p.capacity,
                in_use: replicas * v.tp,
                startup_s: p.startup_s,
            })
            .collect(),
        gateway_waiting: None,
    };
    policy
        .decide(&view)
        .first()
        .map_or(replicas, |d| d.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advise_recommends_what_the_engine_decides_for_the_load() {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let servers = LiveServers::start(&Catalog::builtin(), &ServerConfig::default(), local, 0, 1)
        .await
        .unwrap();
    let mut prometheus = prom::Prometheus::start(&[("h100", &servers.addrs)]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workload = GeneratorSpec {
        rate: RATE,
        duration_s: 60.0,
        arrival: Default::default(),
        envelope: Default::default(),
        lengths: LengthProfile::Fixed {
            input: 256,
            output: 32,
        },
        prefix: None,
        seed: 5,
    }
    .generate()
    .unwrap();
    let cfg = LoadConfig {
        urls: servers.urls(),
        max_duration_s: 60.0,
        request_timeout_s: 60.0,
        ..LoadConfig::default()
    };
    let arrivals: Vec<f64> = workload.requests.iter().map(|r| r.arrival_s).collect();
    let started = std::time::Instant::now();
    let load = tokio::spawn(async move { run_load(&cfg, &workload).await });
    // A full window of steady load behind the query.
    tokio::time::sleep(Duration::from_secs(35)).await;

    let config = AdviseConfig::from_yaml(CONFIG, "test").unwrap();
    let mut reg = registry();
    let metrics = ControllerMetrics::register(&mut reg, None);
    let prom = PromHttp::new(&prometheus.url, Duration::from_secs(5)).unwrap();
    let mut advisor = Advisor::new(prom, config.clone(), Some(metrics));
    let out = advisor.step(now()).await;
    // The load the engine is handed: the generator's own arrivals over the query's window.
    let t = started.elapsed().as_secs_f64();
    let truth = arrivals.iter().filter(|&&a| a > t - 20.0 && a <= t).count() as f64 / 20.0;
    let st = &out.status;
    assert!(out.metrics_available, "{st:#?}");
    let seen = st.load.unwrap().arrival_rate;
    assert!(
        (seen - truth).abs() <= 0.25 * truth,
        "advise saw {seen} req/s, the generator sent {truth}"
    );
    let advised = st.variants[0].desired_replicas;
    let direct = engine_decision(&config, truth, 1);
    eprintln!(
        "advise saw {seen:.2} req/s (generator: {truth:.2}); advised {advised} replicas, the engine given the load directly {direct}"
    );
    assert!(
        advised.abs_diff(direct) <= 1,
        "advise says {advised}, the engine given the load directly says {direct}"
    );
    assert!(
        advised > 1,
        "the load should need more than one replica: {st:#?}"
    );
    assert_eq!(st.variants[0].current_replicas, 1);
    let text = render("llama", &out);
    assert!(text.contains("h100"), "{text}");
    assert!(text.contains("MetricsAvailable=True"), "{text}");
    let exposition = encode(&[&reg]).unwrap();
    assert!(
        exposition.contains(&format!(
            "goodput_desired_replicas{{namespace=\"llm\",model=\"llama-3.1-8b\",variant=\"h100\",accelerator=\"l40s\",role=\"unified\"}} {advised}.0"
        )),
        "{exposition}"
    );

    // Prometheus down: the recommendation stands and says why.
    prometheus.stop();
    let held = advisor.step(now()).await;
    assert!(!held.metrics_available);
    assert_eq!(held.status.variants[0].desired_replicas, advised);
    assert!(render("llama", &held).contains("MetricsAvailable=False (PrometheusError)"));
    load.abort();
    servers.shutdown().await;
}
