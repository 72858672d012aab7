//! `goodput crd`'s output against Kubernetes' own schemas: kubernetes-validate (PyPI, the
//! Kubernetes OpenAPI schemas of each release) checks both CustomResourceDefinitions for
//! Kubernetes 1.33 in strict mode, and the CRDs' own structural schemas (through Python's
//! `jsonschema`) accept a valid ModelAutoscaler and AcceleratorPool and reject invalid ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tools.rs"]
mod tools;

use std::process::Command;

use goodput_autoscaler::crd::{AcceleratorPool, ModelAutoscaler, crds_yaml};
use kube::CustomResourceExt;

fn temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("goodput-crd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(tools::tool("kubernetes-validate"))
        .args(["-k", "1.33.0", "--strict"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn crds_validate_against_kubernetes_1_33() {
    let yaml = crds_yaml().unwrap();
    let path = temp("crds.yaml", &yaml);
    let (ok, text) = validate(&path);
    assert!(ok, "kubernetes-validate rejected goodput crd:\n{text}");
    assert_eq!(
        text.matches(" passed for resource customresourcedefinition/")
            .count(),
        2,
        "{text}"
    );
    // The validator does validate: a CRD with a misspelt required field (`scopes`) fails.
    let broken = yaml.replacen("scope: Cluster", "scopes: Cluster", 1);
    let (ok, text) = validate(&temp("broken.yaml", &broken));
    assert!(!ok, "an invalid CRD passed:\n{text}");
}

/// Validates `instance` (JSON) against the CRD's openAPIV3Schema with Python's jsonschema.
fn schema_accepts(schema: &serde_json::Value, instance: &serde_json::Value) -> bool {
    let s = temp("schema.json", &schema.to_string());
    let i = temp("instance.json", &instance.to_string());
    let out = Command::new(tools::tool("python"))
        .args([
            "-c",
            "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])))",
        ])
        .arg(&s)
        .arg(&i)
        .output()
        .unwrap();
    out.status.success()
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    let v = serde_json::to_value(crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn the_schemas_accept_valid_objects_and_reject_invalid_ones() {
    let ma = schema_of(&ModelAutoscaler::crd());
    let good = serde_json::json!({
        "apiVersion": "goodput.dev/v1alpha1", "kind": "ModelAutoscaler",
        "metadata": {"name": "llama", "namespace": "llm"},
        "spec": {
            "model": "llama-3.1-8b",
            "slo": {"ttft": {"targetMs": 1000, "percentile": 95}, "itl": {"targetMs": 60}},
            "variants": [{"name": "h100", "pool": "h100", "role": "unified",
                          "scaleTargetRef": {"name": "llama-h100"}, "minReplicas": 1, "maxReplicas": 8}],
            "policy": {"actuation": "keda", "intervalSeconds": 30}
        }
    });
    assert!(schema_accepts(&ma, &good));
    let mut bad_role = good.clone();
    bad_role["spec"]["variants"][0]["role"] = "training".into();
    assert!(!schema_accepts(&ma, &bad_role));
    let mut bad_actuation = good.clone();
    bad_actuation["spec"]["policy"]["actuation"] = "magic".into();
    assert!(!schema_accepts(&ma, &bad_actuation));
    let mut no_variants = good.clone();
    no_variants["spec"]["variants"] = serde_json::json!([]);
    assert!(!schema_accepts(&ma, &no_variants));
    let mut no_slo = good.clone();
    no_slo["spec"].as_object_mut().unwrap().remove("slo");
    assert!(!schema_accepts(&ma, &no_slo));

    let ap = schema_of(&AcceleratorPool::crd());
    let pool = serde_json::json!({
        "apiVersion": "goodput.dev/v1alpha1", "kind": "AcceleratorPool",
        "metadata": {"name": "h100"},
        "spec": {"acceleratorType": "h100", "devices": 16, "pricePerDeviceHour": 3.9,
                 "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}}
    });
    assert!(schema_accepts(&ap, &pool));
    let mut neg = pool.clone();
    neg["spec"]["pricePerDeviceHour"] = (-1.0).into();
    assert!(!schema_accepts(&ap, &neg));
}
