//! The controller's cost, measured:
//!
//! 1. `reconcile_pass/100x4`: one reconcile pass over 100 ModelAutoscalers of 4 variants each
//!    (H100, A100, L40S, TPU v5e pools), Prometheus time excluded (the observations are built
//!    in memory), on a warm capacity cache (the engine-model probes are paid once per distinct
//!    variant configuration and shape, cluster-wide; the cold first pass is printed too).
//! 2. Resident memory of the controller process loop (`controller::run::run`, what `goodput
//!    autoscaler run` runs) after it has reconciled the same 100 ModelAutoscalers through kube's
//!    real client against the FAKE in-process Kubernetes API server of the tests (Prometheus
//!    unreachable, so every object takes the hold path after its status is first written):
//!    VmRSS and VmHWM of this process from /proc/self/status, printed. With `GOODPUT_BIN` set
//!    to a built `goodput` binary, the same is done to the real `goodput autoscaler run`
//!    process (pointed at the fake server by a kubeconfig), whose /proc/PID/status is read.
//!
//! Run: `cargo bench -p goodput-autoscaler --features controller --bench reconcile`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use goodput_autoscaler::controller::pool_share::PoolHoldings;
use goodput_autoscaler::controller::reconcile::{Reconciler, ScaleState, Snapshot};
use goodput_autoscaler::controller::run::{RunConfig, run};
use goodput_autoscaler::controller::shared_capacity::CapacityCache;
use goodput_autoscaler::crd::{AcceleratorPoolSpec, ModelAutoscalerSpec};
use goodput_autoscaler::metrics::Observation;
use goodput_core::{Catalog, VariantLoad};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

const OBJECTS: usize = 100;
const POOLS: [&str; 4] = ["h100", "a100", "l40s", "tpu-v5e"];

fn spec_json(i: usize) -> serde_json::Value {
    json!({
        "model": "llama-3.1-8b",
        "slo": {"ttft": {"targetMs": 1000}, "itl": {"targetMs": 60}},
        "variants": POOLS.iter().map(|p| json!({
            "name": p, "pool": p,
            "acceleratorsPerReplica": if *p == "tpu-v5e" { 4 } else { 1 },
            "scaleTargetRef": {"name": format!("m{i}-{p}")},
            "maxReplicas": 16,
        })).collect::<Vec<_>>(),
        "policy": {"intervalSeconds": 30},
    })
}

fn pools() -> BTreeMap<String, AcceleratorPoolSpec> {
    POOLS
        .iter()
        .map(|p| {
            (
                p.to_string(),
                AcceleratorPoolSpec {
                    accelerator_type: p.to_string(),
                    devices: 4096,
                    price_per_device_hour: None,
                    node_selector: BTreeMap::new(),
                },
            )
        })
        .collect()
}

fn observation(i: usize) -> Observation {
    POOLS
        .iter()
        .map(|p| {
            (
                vec![p.to_string()],
                VariantLoad {
                    replicas_reporting: 1,
                    request_rate: 0.5 + (i % 10) as f64,
                    mean_prompt_tokens: 1000.0,
                    mean_output_tokens: 200.0,
                    age_s: 5.0,
                    ..VariantLoad::default()
                },
            )
        })
        .collect()
}

struct World {
    specs: Vec<ModelAutoscalerSpec>,
    pools: BTreeMap<String, AcceleratorPoolSpec>,
    obs: Vec<Observation>,
    names: Vec<String>,
    current: Vec<Option<ScaleState>>,
    /// Every object, sharing the pools: each pass adds up what the others hold.
    others: BTreeMap<String, PoolHoldings>,
}

fn pass(r: &mut Reconciler, w: &World, t: i64) -> u32 {
    let mut total = 0;
    for i in 0..OBJECTS {
        let out = r.reconcile(&Snapshot {
            namespace: "bench",
            name: &w.names[i],
            generation: Some(1),
            spec: &w.specs[i],
            pools: &w.pools,
            current: &w.current,
            metrics: Ok(&w.obs[i]),
            gateway_waiting: None,
            previous: None,
            now: Timestamp::from_second(1_800_000_000 + t).unwrap(),
            others: &w.others,
        });
        total += out.status.desired_replicas;
    }
    total
}

fn reconcile_pass(c: &mut Criterion) {
    let w = World {
        specs: (0..OBJECTS)
            .map(|i| serde_json::from_value(spec_json(i)).unwrap())
            .collect(),
        pools: pools(),
        obs: (0..OBJECTS).map(observation).collect(),
        names: (0..OBJECTS).map(|i| format!("m{i}")).collect(),
        current: vec![Some(ScaleState { spec: 1, status: 1 }); POOLS.len()],
        others: (0..OBJECTS)
            .map(|i| (format!("bench/m{i}"), PoolHoldings::new()))
            .collect(),
    };
    let cache = CapacityCache::default();
    let mut r = Reconciler::new(Catalog::builtin(), cache.clone());
    let cold = Instant::now();
    pass(&mut r, &w, 0);
    eprintln!(
        "cold first pass (engine-model probes for {} variant configurations): {:.2?}",
        cache.len(),
        cold.elapsed()
    );
    let mut t = 30;
    c.bench_function("reconcile_pass/100x4", |b| {
        b.iter(|| {
            t += 30;
            pass(&mut r, &w, t)
        })
    });
}

/// A URL where nothing listens (Prometheus "down": every reconcile takes the hold path).
fn closed_url() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", closed.local_addr().unwrap())
}

fn rss_kib() -> (u64, u64) {
    rss_of("self")
}

fn rss_of(pid: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn controller_memory(_c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let before = rss_kib();
        let fake = fake_kube::FakeKube::start().await;
        for p in POOLS {
            fake.apply(
                "/apis/goodput.dev/v1alpha1/acceleratorpools",
                json!({"apiVersion": "goodput.dev/v1alpha1", "kind": "AcceleratorPool",
                       "metadata": {"name": p}, "spec": {"acceleratorType": p, "devices": 4096}}),
            );
        }
        for i in 0..OBJECTS {
            for p in POOLS {
                fake.apply(
                    "/apis/apps/v1/deployments",
                    json!({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": format!("m{i}-{p}"), "namespace": "bench"},
                           "spec": {"replicas": 1}, "status": {"replicas": 1}}),
                );
            }
            fake.apply(
                "/apis/goodput.dev/v1alpha1/modelautoscalers",
                json!({"apiVersion": "goodput.dev/v1alpha1", "kind": "ModelAutoscaler",
                       "metadata": {"name": format!("m{i}"), "namespace": "bench"},
                       "spec": spec_json(i)}),
            );
        }
        let prom = closed_url();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let cfg = RunConfig {
            prometheus_url: prom,
            prometheus_timeout: Duration::from_millis(200),
            namespace: None,
            wva_metrics: false,
            http_addr: http,
            keda_addr: None,
            lease: Some(("goodput-system".into(), "goodput".into())),
            lease_duration: Duration::from_secs(15),
            identity: "bench".into(),
            controller_name: "goodput-controller".into(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(fake.client(), cfg, async move {
            let _ = rx.await;
        }));
        let started = Instant::now();
        loop {
            let done = fake
                .list("/apis/goodput.dev/v1alpha1/modelautoscalers")
                .iter()
                .filter(|m| m["status"]["observedGeneration"] == 1)
                .count();
            if done == OBJECTS || started.elapsed() > Duration::from_secs(300) {
                eprintln!(
                    "controller reconciled {done}/{OBJECTS} ModelAutoscalers in {:.1?}",
                    started.elapsed()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let after = rss_kib();
        eprintln!(
            "process VmRSS before: {} KiB; after 100 ModelAutoscalers x 4 variants: VmRSS {} KiB, VmHWM {} KiB (controller + fake API server + bench harness)",
            before.0, after.0, after.1
        );
        let _ = tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;

        // The real binary, when given.
        let Ok(bin) = std::env::var("GOODPUT_BIN") else {
            eprintln!("set GOODPUT_BIN to a goodput binary to measure `goodput autoscaler run` itself");
            return;
        };
        for m in fake.list("/apis/goodput.dev/v1alpha1/modelautoscalers") {
            // Forget the in-process run's status, so that the binary's first pass is visible.
            let mut m = m.clone();
            m.as_object_mut().unwrap().remove("status");
            m["spec"]["policy"]["intervalSeconds"] = 31.into();
            fake.apply("/apis/goodput.dev/v1alpha1/modelautoscalers", m);
        }
        let dir = std::env::temp_dir().join(format!("goodput-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
                fake.url()
            ),
        )
        .unwrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut child = std::process::Command::new(&bin)
            .args(["autoscaler", "run", "--prometheus", &closed_url()])
            .args(["--http-addr", &http.to_string(), "--lease-name", "goodput-bin"])
            .args(["--prometheus-timeout-s", "0.2"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let started = Instant::now();
        loop {
            let done = fake
                .list("/apis/goodput.dev/v1alpha1/modelautoscalers")
                .iter()
                .filter(|m| m["status"]["observedGeneration"] == 2)
                .count();
            if done == OBJECTS || started.elapsed() > Duration::from_secs(300) {
                let (rss, hwm) = rss_of(&pid);
                eprintln!(
                    "`{bin} autoscaler run`: reconciled {done}/{OBJECTS} in {:.1?}; VmRSS {rss} KiB, VmHWM {hwm} KiB",
                    started.elapsed()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

criterion_group!(benches, reconcile_pass, controller_memory);
criterion_main!(benches);
