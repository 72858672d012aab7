//! The controller end to end, with kube's real `Client` over HTTP against a FAKE Kubernetes API
//! server (`support/fake_kube.rs`: an in-process imitation speaking the API's wire format, since
//! no API server can run here), a real Prometheus (Debian's binary) scraping `goodput sim
//! serve`'s live vLLM-compatible servers under load, and the controller's own process loop
//! (`controller::run::run`: leader Lease, Controller, status patches, Events, `/scale`).
//!
//! What users rely on, in order: a new ModelAutoscaler gets status and desired replicas; more
//! load raises the decision and the Deployment's `/scale` is patched (actuation `scale`); an
//! invalid spec gets `Ready=False` naming the field and a Warning Event while the others carry
//! on; Prometheus going down holds the last decision and sets `MetricsAvailable=False`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake_kube.rs"]
mod fake_kube;
#[path = "support/prom.rs"]
mod prom;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fake_kube::FakeKube;
use goodput_autoscaler::controller::run::{RunConfig, run};
use goodput_core::Catalog;
use goodput_sim::live::load::{LoadConfig, run_load};
use goodput_sim::live::server::{LiveServers, ServerConfig};
use goodput_sim::workload::generate::{GeneratorSpec, LengthProfile};
use serde_json::{Value, json};

const MAS: &str = "/apis/goodput.dev/v1alpha1/modelautoscalers";
const POOLS: &str = "/apis/goodput.dev/v1alpha1/acceleratorpools";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const EVENTS: &str = "/apis/events.k8s.io/v1/events";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

fn model_autoscaler(name: &str, pool: &str) -> Value {
    // The capacity model is Llama-3.1-8B on L40S replicas at a tight ITL target (about 2
    // requests/s per replica for this test's 256/32-token requests): the test's loads move the
    // decision. The live servers (H100) only supply the metrics: the load's rate and shape.
    json!({
        "apiVersion": "goodput.dev/v1alpha1", "kind": "ModelAutoscaler",
        "metadata": {"name": name, "namespace": "llm"},
        "spec": {
            "model": "llama-3.1-8b",
            "slo": {"ttft": {"targetMs": 1000}, "itl": {"targetMs": 40}},
            "variants": [{
                "name": "h100", "pool": pool, "acceleratorsPerReplica": 1,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("{name}-h100")},
                "minReplicas": 1, "maxReplicas": 32,
            }],
            "policy": {"actuation": "scale", "intervalSeconds": 5, "startupSeconds": 30},
            "metrics": {"window": "10s"},
        }
    })
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "llm"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas},
    })
}

fn condition<'a>(ma: &'a Value, ty: &str) -> Option<&'a Value> {
    ma["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// Waits until `f` holds for the stored ModelAutoscaler `name`.
async fn wait_for(fake: &FakeKube, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(ma) = fake.get(MAS, "llm", name)
            && f(&ma)
        {
            return ma;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: never {what}; last: {:#}",
            fake.get(MAS, "llm", name).unwrap_or(Value::Null)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn load(rate: f64, duration_s: f64, urls: Vec<String>, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let workload = GeneratorSpec {
            rate,
            duration_s,
            arrival: Default::default(),
            envelope: Default::default(),
            lengths: LengthProfile::Fixed {
                input: 256,
                output: 32,
            },
            prefix: None,
            seed,
        }
        .generate()
        .unwrap();
        let cfg = LoadConfig {
            urls,
            max_duration_s: duration_s,
            request_timeout_s: 120.0,
            seed,
            ..LoadConfig::default()
        };
        let _ = run_load(&cfg, &workload).await;
    })
}

/// The body of a GET, which must succeed.
async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_reconciles_against_the_api_wire_format() {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let servers = LiveServers::start(&Catalog::builtin(), &ServerConfig::default(), local, 0, 1)
        .await
        .unwrap();
    let mut prometheus = prom::Prometheus::start(&[("h100", &servers.addrs)]).await;
    // A light load first.
    let light = load(1.0, 600.0, servers.urls(), 1);

    let fake = FakeKube::start().await;
    fake.apply(
        POOLS,
        json!({"apiVersion": "goodput.dev/v1alpha1", "kind": "AcceleratorPool",
               "metadata": {"name": "l40s-pool"},
               "spec": {"acceleratorType": "l40s", "devices": 256, "pricePerDeviceHour": 1.0}}),
    );
    fake.apply(DEPLOYMENTS, deployment("llama-h100", 1));
    fake.apply(MAS, model_autoscaler("llama", "l40s-pool"));
    fake.apply(MAS, model_autoscaler("broken", "no-such-pool"));
    // Decides every 5 minutes and exports its decision for HPA: any change to its Deployment
    // seen before then came through the watch on its target.
    let mut watched = model_autoscaler("watched", "l40s-pool");
    watched["spec"]["policy"] =
        json!({"actuation": "metrics", "intervalSeconds": 300, "startupSeconds": 30});
    fake.apply(DEPLOYMENTS, deployment("watched-h100", 2));
    fake.apply(MAS, watched);

    let http_port = free_port();
    let cfg = RunConfig {
        prometheus_url: prometheus.url.clone(),
        prometheus_timeout: Duration::from_secs(2),
        namespace: None,
        wva_metrics: true,
        http_addr: SocketAddr::new(local, http_port),
        keda_addr: None,
        lease: Some(("goodput-system".into(), "goodput-controller".into())),
        lease_duration: Duration::from_secs(5),
        identity: "controller-0".into(),
        controller_name: "goodput-controller".into(),
    };
    let cfg_for_standby = cfg.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(fake.client(), cfg, async move {
        let _ = stop_rx.await;
    }));

    // 1. A new resource gets status and desired replicas, from fresh metrics.
    let first = wait_for(&fake, "llama", "decided on fresh metrics", |ma| {
        ma["status"]["observedGeneration"] == 1
            && condition(ma, "MetricsAvailable").is_some_and(|c| c["status"] == "True")
            && ma["status"]["load"]["arrivalRate"].as_f64().unwrap_or(0.0) > 0.3
    })
    .await;
    let st = &first["status"];
    assert_eq!(condition(&first, "Ready").unwrap()["status"], "True");
    assert_eq!(condition(&first, "Fitted").unwrap()["status"], "True");
    let v = &st["variants"][0];
    assert_eq!(v["name"], "h100");
    let low = v["desiredReplicas"].as_u64().unwrap();
    assert!(low >= 1, "{st:#}");
    assert!(v["predictedTtftMs"].as_f64().unwrap() > 0.0, "{st:#}");
    assert!(v["predictedItlMs"].as_f64().unwrap() > 0.0, "{st:#}");
    assert!(!st["reason"].as_str().unwrap().is_empty());
    // Status went through the status subresource.
    assert!(
        fake.requests().iter().any(|r| r
            == "PATCH /apis/goodput.dev/v1alpha1/namespaces/llm/modelautoscalers/llama/status")
    );
    // The Lease names this replica.
    let lease = fake
        .get(LEASES, "goodput-system", "goodput-controller")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "controller-0");
    // /readyz and /metrics serve.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    assert!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // A second replica stands by: ready (so a rolling update can replace the leader), not
    // holding the Lease, not exporting decisions.
    let standby_port = free_port();
    let standby_cfg = RunConfig {
        http_addr: SocketAddr::new(local, standby_port),
        identity: "controller-1".into(),
        ..cfg_for_standby
    };
    let (standby_stop_tx, standby_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let standby = tokio::spawn(run(fake.client(), standby_cfg, async move {
        let _ = standby_stop_rx.await;
    }));
    let standby_base = format!("http://127.0.0.1:{standby_port}");
    let mut standby_ready = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{standby_base}/readyz")).send().await
            && r.status().is_success()
        {
            standby_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(standby_ready, "the standby replica never became ready");
    let lease = fake
        .get(LEASES, "goodput-system", "goodput-controller")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "controller-0");
    let standby_text = get_text(&http, &format!("{standby_base}/metrics")).await;
    assert!(
        !standby_text.contains("goodput_desired_replicas{"),
        "{standby_text}"
    );
    let _ = standby_stop_tx.send(());
    standby.await.unwrap().unwrap();
    let text = get_text(&http, &format!("{base}/metrics")).await;
    assert!(
        text.contains("goodput_desired_replicas{namespace=\"llm\",model=\"llama-3.1-8b\",variant=\"h100\",accelerator=\"l40s\",role=\"unified\"}"),
        "{text}"
    );
    assert!(text.contains(
        "wva_desired_replicas{variant_name=\"h100\",namespace=\"llm\",accelerator_type=\"l40s\"}"
    ));

    // 2. An invalid spec: a condition naming the field, a Warning Event, no crash.
    let broken = wait_for(&fake, "broken", "reported its invalid spec", |ma| {
        condition(ma, "Ready").is_some_and(|c| c["reason"] == "InvalidSpec")
    })
    .await;
    let ready = condition(&broken, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.variants[0].pool"),
        "{ready}"
    );
    let events = fake.list(EVENTS);
    assert!(
        events.iter().any(|e| e["regarding"]["name"] == "broken"
            && e["type"] == "Warning"
            && e["reason"] == "InvalidSpec"
            && e["reportingController"] == "goodput-controller"),
        "{events:#?}"
    );
    assert!(fake.get(DEPLOYMENTS, "llm", "broken-h100").is_none());
    let text = get_text(&http, &format!("{base}/metrics")).await;
    assert!(
        text.contains("goodput_reconcile_errors_total{reason=\"invalid_spec\"}"),
        "{text}"
    );

    // 3. A target scaled between decisions (by hand, or by HPA acting on the exported metric):
    // status shows the new current replicas well before the next decision, and that decision
    // (its time, its desired count) is untouched.
    let before = wait_for(&fake, "watched", "decided", |ma| {
        ma["status"]["variants"][0]["currentReplicas"] == 2
    })
    .await;
    fake.apply(DEPLOYMENTS, deployment("watched-h100", 5));
    let after = wait_for(&fake, "watched", "saw its target scaled", |ma| {
        ma["status"]["variants"][0]["currentReplicas"] == 5
    })
    .await;
    assert_eq!(
        after["status"]["lastDecisionTime"],
        before["status"]["lastDecisionTime"]
    );
    assert_eq!(
        after["status"]["variants"][0]["desiredReplicas"],
        before["status"]["variants"][0]["desiredReplicas"]
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r == "GET /apis/apps/v1/deployments"),
        "{:?}",
        fake.requests()
    );

    // 3b. Both models draw on l40s-pool: the pool's gauge counts what each holds (per variant
    // the larger of current and desired replicas), not only the model decided last.
    let holds = |name: &str| -> u64 {
        let ma = fake.get(MAS, "llm", name).unwrap();
        let v = &ma["status"]["variants"][0];
        let current = v["currentReplicas"].as_u64().unwrap_or(0);
        current.max(v["desiredReplicas"].as_u64().unwrap_or(0))
    };
    let gauge = "goodput_pool_devices_used{pool=\"l40s-pool\",accelerator=\"l40s\"} ";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = get_text(&http, &format!("{base}/metrics")).await;
        let used: Option<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix(gauge))
            .and_then(|v| v.trim().parse().ok());
        let both = holds("llama") + holds("watched");
        // "watched" holds 5 (its target was scaled to 5 above), so one model alone is less.
        if used == Some(both as f64) && both > 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool gauge {used:?}, the two models hold {both}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 4. Ten times the load: the decision rises and /scale is patched with a merge patch.
    light.abort();
    let heavy = load(12.0, 600.0, servers.urls(), 2);
    let raised = wait_for(&fake, "llama", "raised its decision", |ma| {
        ma["status"]["variants"][0]["desiredReplicas"]
            .as_u64()
            .unwrap_or(0)
            > low
    })
    .await;
    let high = raised["status"]["variants"][0]["desiredReplicas"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dep = fake.get(DEPLOYMENTS, "llm", "llama-h100").unwrap();
        if dep["spec"]["replicas"].as_u64() >= Some(high) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/scale never patched to {high}: {dep:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let writes = fake.scale_writes();
    let last = writes.last().expect("no /scale write");
    assert_eq!(last.name, "llama-h100");
    assert!(
        last.content_type
            .starts_with("application/merge-patch+json")
    );
    assert!(
        last.body["spec"]["replicas"].as_u64().unwrap() >= high,
        "{writes:?}"
    );
    assert!(
        fake.list(EVENTS)
            .iter()
            .any(|e| e["regarding"]["name"] == "llama" && e["reason"] == "ScaleUp")
    );

    // 5. Prometheus down: the decision is held and the condition says why.
    heavy.abort();
    let held_at =
        fake.get(MAS, "llm", "llama").unwrap()["status"]["variants"][0]["desiredReplicas"]
            .as_u64()
            .unwrap();
    prometheus.stop();
    let down = wait_for(&fake, "llama", "noticed Prometheus is down", |ma| {
        condition(ma, "MetricsAvailable").is_some_and(|c| c["status"] == "False")
    })
    .await;
    let c = condition(&down, "MetricsAvailable").unwrap();
    assert_eq!(c["reason"], "PrometheusError");
    assert_eq!(
        down["status"]["variants"][0]["desiredReplicas"].as_u64(),
        Some(held_at)
    );
    assert_eq!(
        condition(&down, "Ready").unwrap()["reason"],
        "HoldingLastDecision"
    );
    assert!(
        fake.list(EVENTS)
            .iter()
            .any(|e| e["regarding"]["name"] == "llama" && e["reason"] == "MetricsUnavailable")
    );
    // Another interval later, still held, and the controller still runs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = fake.get(MAS, "llm", "llama").unwrap();
    assert_eq!(
        later["status"]["variants"][0]["desiredReplicas"].as_u64(),
        Some(held_at)
    );
    assert!(!controller.is_finished());

    let _ = stop_tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), controller)
        .await
        .expect("controller did not stop");
    assert!(result.unwrap().is_ok());
    servers.shutdown().await;
}

/// Two controller replicas: one Lease, one leader; the other takes over only once the leader
/// has stopped renewing for the Lease's duration, and a stale write loses with 409 Conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_leads() {
    use goodput_autoscaler::controller::leader::LeaseLock;
    let fake = FakeKube::start().await;
    let duration = Duration::from_secs(1);
    let a = LeaseLock::new(fake.client(), "goodput-system", "lead", "a", duration);
    let b = LeaseLock::new(fake.client(), "goodput-system", "lead", "b", duration);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // `a` stops renewing; after the duration `b` takes the Lease and `a` cannot take it back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(!a.try_acquire_or_renew().await.unwrap());
    let lease = fake.get(LEASES, "goodput-system", "lead").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}
