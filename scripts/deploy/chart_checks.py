#!/usr/bin/env python3
"""Checks of charts/goodput with Helm's own library and Kubernetes' own schemas.

1. The chart's copies of alerts/goodput.rules.yaml and dashboards/*.json are identical to the
   sources.
2. `helm lint` through Helm's library (PyPI helm-sdkpy) of the chart with each values set below
   (the chart is copied and the set written as its values.yaml: the library's lint takes a path).
3. Each values set is installed with Helm's library against fake_apiserver.FakeApiServer, an
   imitation of the Kubernetes API server (no real one can run here), which records every object
   Helm creates: the rendered manifests. Every one is validated against Kubernetes 1.33's JSON
   schemas (PyPI kubernetes-validate, strict: unknown fields fail). The CRD-typed kinds those
   schemas do not know are validated for structure by the small schemas in CRD_TYPED below,
   and a PrometheusRule's spec also by `promtool check rules`. Nothing is skipped.
4. What the chart promises: non-root, read-only root filesystem, no privilege escalation, all
   capabilities dropped, resources, /healthz and /readyz probes on every container; RBAC with
   no wildcard and no access to Secrets; dashboards ConfigMaps labelled grafana_dashboard=1 and
   carrying the dashboards unchanged; values outside values.schema.json refused.
5. With a goodput binary (GOODPUT_BIN): every `--flag` the chart passes to a subcommand appears
   in that subcommand's --help, and crds/ equals `goodput crd`, for the subcommands the binary
   has (reported, and failing under GOODPUT_CHART_STRICT=1, when it lacks one).
"""

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

sys.dont_write_bytecode = True  # no __pycache__ left in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_apiserver import FakeApiServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "goodput"
K8S_VERSION = "1.33"
NAMESPACE = "goodput-system"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


VARIANTS = [
    {"model": "llama-3.1-8b", "variant": "h100", "namespace": "llm",
     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-h100"},
     "minReplicas": 1, "maxReplicas": 8},
    {"model": "llama-3.1-8b", "variant": "l40s", "namespace": "llm",
     "scaleTargetRef": {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                        "name": "llama-l40s"},
     "maxReplicas": 16},
]
VALUE_SETS = {
    "defaults": {},
    "predictor": {"predictor": {"enabled": True, "model": "llama-3.1-8b", "accelerator": "h100"}},
    "scheduler": {"scheduler": {"enabled": True, "endpoints": [
        "llama-h100-0.llama-h100.llm.svc:8000 accelerator=h100",
        "llama-h100-1.llama-h100.llm.svc:8000 accelerator=h100 role=unified tp=1"]}},
    "hpa": {"autoscaling": {"mode": "hpa", "variants": VARIANTS}},
    "keda": {"autoscaling": {"mode": "keda", "variants": VARIANTS}},
    "keda-external": {"controller": {"kedaExternalScaler": {"enabled": True}},
                      "autoscaling": {"mode": "keda-external", "variants": [
                          dict(v, modelAutoscaler="llama-8b", minReplicas=0) for v in VARIANTS]}},
    "everything": {
        "predictor": {"enabled": True},
        "controller": {"watchNamespace": "llm", "wvaMetrics": True, "replicas": 2,
                       "kedaExternalScaler": {"enabled": True}},
        "scheduler": {"enabled": True, "endpoints": ["10.0.0.7:8000"], "picker": "least-requests"},
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                       "vllmPodMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True, "slo": {"ttftBucket": "0.5", "tpotBucket": "0.05"}},
        "dashboards": {"namespace": "monitoring"},
        "autoscaling": {"mode": "keda", "variants": VARIANTS},
        "tracing": {"otlpEndpoint": "http://otel-collector.observability.svc:4317"},
    },
    "scheduler-selector": {"scheduler": {"enabled": True, "discovery": {
        "selector": "app=vllm,model=llama", "targetPorts": "8000,8001", "namespace": "llm"}}},
    "scheduler-inferencepool": {"scheduler": {"enabled": True, "discovery": {"inferencePool": "vllm-pool"}}},
    "podmonitors": {"monitoring": {"podMonitor": {"enabled": True}}, "predictor": {"enabled": True},
                    "controller": {"leaderElection": {"enabled": False}}},
}
# Values the chart must refuse (values.schema.json, or a template's fail with this message).
REFUSED_BY_TEMPLATE = {
    "keda-external without the controller's scaler": (
        {"autoscaling": {"mode": "keda-external", "variants": [dict(VARIANTS[0], modelAutoscaler="m")]}},
        "needs controller.kedaExternalScaler.enabled"),
    "scheduler without endpoints": ({"scheduler": {"enabled": True}}, "scheduler.enabled needs scheduler.endpoints"),
}
BAD_VALUE_SETS = {
    "unknown mode": {"autoscaling": {"mode": "vpa"}},
    "unknown key": {"controller": {"replica": 2}},
    "TTFT threshold off vLLM's buckets": {"prometheusRule": {"slo": {"ttftBucket": "2.0"}}},
    "scheduler endpoint without a port": {"scheduler": {"enabled": True, "endpoints": ["llama-0"]}},
    "OTLP endpoint without a scheme": {"tracing": {"otlpEndpoint": "otel-collector:4317"}},
    "variant without scaleTargetRef": {"autoscaling": {"mode": "hpa", "variants": [
        {"model": "m", "variant": "v", "maxReplicas": 2}]}},
}

# Structure of the CRD-typed kinds that kubernetes-validate has no schema for (the fields this
# chart renders, as their operators' CRDs define them).
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {"type": "object", "properties": {"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}},
                  "additionalProperties": False}
META = {"type": "object", "required": ["name", "namespace"],
        "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                       "namespace": {"type": "string"}, "labels": STR_MAP, "annotations": STR_MAP}}
NS_SELECTOR = {"type": "object", "properties": {"any": {"type": "boolean"},
                                                "matchNames": {"type": "array", "items": {"type": "string"}}},
               "additionalProperties": False}
RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "targetLabel": {"type": "string"}, "action": {"enum": ["replace", "keep", "drop", "labelmap"]},
    "regex": {"type": "string"}, "replacement": {"type": "string"}}}
ENDPOINT = {"type": "object", "required": ["port"], "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "path": {"type": "string"},
    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}, "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": RELABEL}}}
CRD_TYPED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"spec": {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {"selector": LABEL_SELECTOR, "namespaceSelector": NS_SELECTOR,
                       "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT}}}},
    ("monitoring.coreos.com/v1", "PodMonitor"): {"spec": {
        "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
        "properties": {"selector": LABEL_SELECTOR, "namespaceSelector": NS_SELECTOR,
                       "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": ENDPOINT}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {"spec": {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"],
            "properties": {"name": {"type": "string"}, "interval": {"type": "string"},
                           "rules": {"type": "array", "minItems": 1, "items": {
                               "type": "object", "required": ["expr"],
                               "oneOf": [{"required": ["record"]}, {"required": ["alert"]}]}}}}}}}},
    ("keda.sh/v1alpha1", "ScaledObject"): {"spec": {
        "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                               "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                              "name": {"type": "string"}}},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "pollingInterval": {"type": "integer"}, "cooldownPeriod": {"type": "integer"},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["type", "metadata"],
                "properties": {"type": {"enum": ["prometheus", "external"]},
                               "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                               # KEDA's trigger metadata is a map of strings.
                               "metadata": STR_MAP}}}}}},
}


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def helm():
    try:
        import helm_sdkpy
    except ImportError:
        sys.exit("chart-checks: helm_sdkpy is missing: run scripts/tools.sh")
    return helm_sdkpy


def lint(chart_dir):
    h = helm()
    cfg = h.Configuration(namespace=NAMESPACE)
    result = asyncio.run(h.Lint(cfg).run(str(chart_dir)))
    # Helm's support.Severity: 1 info, 2 warning, 3 error.
    bad = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
    return bad, result


def install(values, tmp):
    """Objects Helm creates installing the chart with `values` (its release Secret left out)."""
    h = helm()
    with FakeApiServer() as api:
        kubeconfig = tmp / "kubeconfig"
        api.kubeconfig(kubeconfig, NAMESPACE)
        cfg = h.Configuration(namespace=NAMESPACE, kubeconfig=str(kubeconfig))
        asyncio.run(h.Install(cfg).run("goodput", str(CHART), values=values or None, wait=False,
                                       timeout=60))
        return [o for o in api.created if o.get("type") != "helm.sh/release.v1"]


def validate_object(obj, where):
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate
    kind = (obj.get("apiVersion"), obj.get("kind"))
    name = f"{where}: {kind[1]} {obj.get('metadata', {}).get('name')}"
    if kind in CRD_TYPED:
        schema = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                  "additionalProperties": False,
                  "properties": dict({"apiVersion": {}, "kind": {}, "metadata": META}, **CRD_TYPED[kind])}
        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            fail(f"{name}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
        if kind[1] == "PrometheusRule":
            promtool_check(obj["spec"], name)
        return
    try:
        validate(obj, K8S_VERSION, strict=True)
    except ValidationError as e:
        fail(f"{name}: {e.message} at {'/'.join(map(str, e.path))}")
    except SchemaNotFoundError:
        fail(f"{name}: no Kubernetes {K8S_VERSION} schema and no structural schema in CRD_TYPED")


def promtool_check(spec, name):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(spec, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{name}: promtool check rules: {r.stdout}{r.stderr}")


def check_pod_spec(obj, where):
    name = f"{where}: {obj['kind']} {obj['metadata']['name']}"
    pod = obj["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(f"{name}: pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{name}: pod seccompProfile is not RuntimeDefault")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}/{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}/{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{name}/{c['name']}: capabilities are not all dropped")
        if not c.get("resources", {}).get("requests"):
            fail(f"{name}/{c['name']}: no resource requests")
        live = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
        ready = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
        if live != "/healthz" or ready not in ("/readyz", "/healthz"):
            fail(f"{name}/{c['name']}: probes are {live} / {ready}")


def check_rbac(obj, where):
    for rule in obj.get("rules", []):
        for field in ("verbs", "resources", "apiGroups"):
            if "*" in rule.get(field, []):
                fail(f"{where}: {obj['kind']} {obj['metadata']['name']} has a wildcard in {field}")
        if "secrets" in rule.get("resources", []):
            fail(f"{where}: {obj['kind']} {obj['metadata']['name']} grants access to secrets")


def check_sources():
    print("chart-checks: the chart's copies of alerts/ and dashboards/")
    if (CHART / "files" / "goodput.rules.yaml").read_bytes() != (ROOT / "alerts" / "goodput.rules.yaml").read_bytes():
        fail("charts/goodput/files/goodput.rules.yaml differs from alerts/goodput.rules.yaml "
             "(cp alerts/goodput.rules.yaml charts/goodput/files/)")
    src = {p.name: p.read_bytes() for p in (ROOT / "dashboards").glob("*.json")}
    dst = {p.name: p.read_bytes() for p in (CHART / "files" / "dashboards").glob("*.json")}
    if src != dst:
        fail("charts/goodput/files/dashboards/ differs from dashboards/*.json "
             "(cp dashboards/*.json charts/goodput/files/dashboards/)")


def check_binary(rendered):
    """The chart's flags against the binary's --help, and crds/ against `goodput crd`."""
    binary = os.environ.get("GOODPUT_BIN")
    strict = os.environ.get("GOODPUT_CHART_STRICT") == "1"
    if not binary:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        binary = str(target / "debug" / "goodput")
    if not os.access(binary, os.X_OK):
        msg = f"no goodput binary at {binary}: flags and CRDs not compared (set GOODPUT_BIN)"
        fail(msg) if strict else print(f"  NOTE {msg}")
        return
    print(f"chart-checks: container args against `{binary} ... --help`")
    seen, noted = set(), set()
    for where, objs in rendered.items():
        for o in objs:
            if o["kind"] != "Deployment":
                continue
            for c in o["spec"]["template"]["spec"]["containers"]:
                args = c.get("args", [])
                sub = [a for a in args[:2] if not a.startswith("-")]
                # Environment the binary reads (clap's `env`): each must be one --help names.
                envs = tuple(e["name"] for e in c.get("env", [])
                             if e["name"].startswith(("GOODPUT_", "OTEL_")))
                key = (tuple(sub), tuple(a.split("=")[0] for a in args if a.startswith("--")), envs)
                if key in seen:
                    continue
                seen.add(key)
                r = subprocess.run([binary, *sub, "--help"], capture_output=True, text=True)
                if r.returncode != 0:
                    msg = f"`goodput {' '.join(sub)}` is not in this binary: its flags are unchecked"
                    if msg not in noted:
                        noted.add(msg)
                        fail(msg) if strict else print(f"  NOTE {msg}")
                    continue
                for flag in key[1]:
                    if not re.search(rf"(^|\s){re.escape(flag)}[\s=<,]", r.stdout, re.M):
                        fail(f"{where}: `goodput {' '.join(sub)}` has no flag {flag}")
                for env in envs:
                    if f"[env: {env}=" not in r.stdout:
                        fail(f"{where}: `goodput {' '.join(sub)}` reads no environment variable {env}")
    r = subprocess.run([binary, "crd"], capture_output=True, text=True)
    if r.returncode != 0:
        msg = "`goodput crd` is not in this binary: crds/ not compared with it"
        fail(msg) if strict else print(f"  NOTE {msg}")
        return
    ours = [d for d in yaml.safe_load_all((CHART / "crds" / "goodput.dev.yaml").read_text()) if d]
    theirs = [d for d in yaml.safe_load_all(r.stdout) if d]
    key = lambda d: d["metadata"]["name"]
    if sorted(ours, key=key) != sorted(theirs, key=key):
        fail("charts/goodput/crds/goodput.dev.yaml differs from `goodput crd` "
             "(goodput crd > charts/goodput/crds/goodput.dev.yaml)")


def main():
    check_sources()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="goodput-chart-"))
    rendered = {}
    try:
        for name, values in VALUE_SETS.items():
            print(f"chart-checks: values set '{name}'")
            copy_dir = tmp / name / "goodput"
            shutil.copytree(CHART, copy_dir)
            (copy_dir / "values.yaml").write_text(yaml.safe_dump(deep_merge(defaults, values)))
            bad, result = lint(copy_dir)
            if bad or result.get("Errors"):
                fail(f"helm lint ({name}): {json.dumps(result)}")
            try:
                objs = install(values, tmp / name)
            except Exception as e:  # the library raises its own error types
                fail(f"helm install ({name}): {e}")
                continue
            rendered[name] = objs
            kinds = {}
            for o in objs:
                kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
                validate_object(o, name)
                if o["kind"] == "Deployment":
                    check_pod_spec(o, name)
                if o["kind"] in ("Role", "ClusterRole"):
                    check_rbac(o, name)
                if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {}):
                    if o["metadata"]["labels"]["grafana_dashboard"] != "1":
                        fail(f"{name}: dashboard ConfigMap label is not grafana_dashboard=1")
                    for key, text in o["data"].items():
                        src = ROOT / "dashboards" / key.removeprefix("goodput-")
                        if json.loads(text) != json.loads(src.read_text()):
                            fail(f"{name}: ConfigMap {key} differs from {src}")
            print(f"  {len(objs)} objects validated: "
                  + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        # What each set must render.
        expect = {"defaults": {"CustomResourceDefinition": 2, "Deployment": 1, "ConfigMap": 4},
                  "predictor": {"Deployment": 2},
                  "scheduler": {"Deployment": 2, "ConfigMap": 5, "Role": 1},
                  "hpa": {"HorizontalPodAutoscaler": 2}, "keda": {"ScaledObject": 2},
                  "keda-external": {"ScaledObject": 2},
                  "everything": {"ServiceMonitor": 3, "PodMonitor": 1, "PrometheusRule": 1,
                                 "ScaledObject": 2, "RoleBinding": 2, "Deployment": 3},
                  "podmonitors": {"PodMonitor": 2, "Role": 0},
                  # Discovery: the scheduler's own Role (pods; InferencePools when named), no
                  # endpoints ConfigMap.
                  "scheduler-selector": {"Deployment": 2, "ConfigMap": 4, "Role": 2, "RoleBinding": 2},
                  "scheduler-inferencepool": {"Deployment": 2, "ConfigMap": 4, "Role": 2}}
        for name, want in expect.items():
            got = {}
            for o in rendered.get(name, []):
                got[o["kind"]] = got.get(o["kind"], 0) + 1
            for kind, n in want.items():
                if got.get(kind, 0) != n:
                    fail(f"values set '{name}' rendered {got.get(kind, 0)} {kind}, want {n}")
        rule = [o for o in rendered.get("everything", []) if o["kind"] == "PrometheusRule"]
        if rule:
            text = json.dumps(rule[0]["spec"])
            if 'le=\\"0.5\\"' not in text or 'le=\\"0.05\\"' not in text or 'le=\\"1.0\\"' in text:
                fail("prometheusRule.slo thresholds were not applied")
        for name, values in BAD_VALUE_SETS.items():
            print(f"chart-checks: values refused: {name}")
            try:
                install(values, tmp)
                fail(f"values '{name}' were accepted")
            except Exception as e:
                if "schema" not in str(e):
                    fail(f"values '{name}' failed for another reason: {e}")
        for name, (values, message) in REFUSED_BY_TEMPLATE.items():
            print(f"chart-checks: values refused: {name}")
            try:
                install(values, tmp)
                fail(f"values '{name}' were accepted")
            except Exception as e:
                if message not in str(e):
                    fail(f"values '{name}' failed for another reason: {e}")
        check_binary(rendered)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        sys.exit(f"chart-checks: {len(failures)} failure(s)")
    print("chart-checks: ok")


if __name__ == "__main__":
    main()
