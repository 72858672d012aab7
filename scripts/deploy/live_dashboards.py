#!/usr/bin/env python3
"""Live-stack dashboard test: every Grafana panel's query returns data from a real Prometheus.

What it starts (all real processes on loopback, ephemeral ports, a temporary directory):
  - Prometheus (the Debian binary on PATH), scrape and evaluation interval 1 s, with goodput's
    rules file (alerts/goodput.rules.yaml) loaded, so the recording rules run on live data too;
  - component "vllm": `goodput sim serve` (live vLLM-compatible servers, real `vllm:*` metrics):
    llama-3.1-8b on 2 x H100 and on 1 x L40S, each target labelled as a Kubernetes PodMonitor
    would label it (namespace, pod, variant), driven by `goodput sim load` (open-loop Poisson load);
  - component "predictor": `goodput predictor serve`, fed training rows and bulk predictions by
    this script as a scheduler would;
  - component "advise": `goodput autoscaler advise --prometheus (this Prometheus) --config
    (llama-3.1-8b, variants h100 and l40s) --serve PORT`;
  - component "scheduler": `goodput scheduler serve` over the simulated servers behind a real
    Envoy 1.40 ($GOODPUT_TOOLS/envoy, docs/guides/examples/envoy-ext-proc.yaml), with load and
    SLO-tagged requests sent through Envoy;
  - advise exports the same goodput_* series as the controller (desired/current replicas, load,
    forecast, cost, goodput_reconcile_*, goodput_pool_*), so the controller's panels are checked
    against it; the controller itself needs a Kubernetes API server (its tests use an in-process
    imitation of one).

Then it substitutes every dashboard's template variables (All -> `.*`, custom variables -> their
default, $__rate_interval and $__range -> fixed windows), runs each panel target and each
template-variable query as an instant query through Prometheus' HTTP API, and requires a finite
value for every target whose components are all running. Targets that need a component not
running fail the run (the default, GOODPUT_LIVE_STRICT=1); with GOODPUT_LIVE_STRICT=0 they are
listed by component at the end instead, for a partial run.

Environment:
  GOODPUT_BIN              the goodput binary (default: $CARGO_TARGET_DIR or target, /debug/goodput)
  GOODPUT_LIVE_COMPONENTS  comma list of components to start (default: all of them:
                           vllm,predictor,scheduler,advise)
  GOODPUT_LIVE_STRICT      1 (default): every target of every dashboard must be live-tested
  GOODPUT_LIVE_TIMEOUT_S   how long to wait for all queries to return data (default 120)
"""

import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMPONENTS = "vllm,predictor,scheduler,advise"
ALL_COMPONENTS = ["vllm", "predictor", "scheduler", "advise"]
NAMESPACE = "goodput-live"
MODEL = "llama-3.1-8b"
RATE_INTERVAL = "15s"
RANGE = "5m"


def fail(msg):
    print(f"live-dashboards: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def components_of(expr):
    """Which components must run for `expr` to have data, from the metric names it reads."""
    needs = set()
    for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if name.startswith("vllm:"):
            needs.add("vllm")
        elif name.startswith("goodput_predictor_"):
            needs.add("predictor")
        elif name.startswith("goodput_scheduler_"):
            needs.add("scheduler")
        elif name.startswith("goodput_"):
            needs.add("advise")
    return needs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, data=None, timeout=10):
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, what, timeout=60, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p, name in procs:
            if p.poll() is not None:
                fail(f"{name} exited with {p.returncode} before {url} answered")
        try:
            if http(url, timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.3)
    fail(f"{what} did not answer {url} within {timeout} s")


class Stack:
    def __init__(self, goodput, components, tmp):
        self.goodput, self.components, self.tmp = goodput, components, tmp
        self.procs = []   # (Popen, name)
        self.targets = []  # scrape configs: (job, port, labels)

    def spawn(self, name, args, **kw):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append((p, name))
        return p

    def stop(self):
        for p, _ in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p, _ in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    # -- components -------------------------------------------------------------------------

    def start_vllm(self):
        self.vllm_urls, self.vllm_accels = [], []
        for variant, accel, replicas in [("h100", "h100", 2), ("l40s", "l40s", 1)]:
            base = free_port()
            while any(free_port_taken(base + i) for i in range(replicas)):
                base = free_port()
            self.spawn(f"sim-serve-{variant}", [
                self.goodput, "sim", "serve", "--replicas", str(replicas), "--port-base", str(base),
                "--model", MODEL, "--accelerator", accel, "--time-scale", "10", "--seed", "1"])
            for i in range(replicas):
                port = base + i
                self.vllm_urls.append(f"http://127.0.0.1:{port}")
                self.vllm_accels.append(accel)
                self.targets.append(("vllm", port, {
                    "namespace": NAMESPACE, "pod": f"{MODEL}-{variant}-{i}", "variant": variant}))
        for url in self.vllm_urls:
            wait_http(url + "/health", "goodput sim serve", procs=self.procs)

    def start_vllm_load(self):
        args = [self.goodput, "sim", "load", "--rate", "6", "--duration", "600",
                "--lengths", "sharegpt", "--timeout-s", "60", "--seed", "2"]
        for url in self.vllm_urls:
            args += ["--url", url]
        self.spawn("sim-load", args)

    def start_predictor(self):
        port = free_port()
        self.spawn("predictor", [self.goodput, "predictor", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--retrain-interval-s", "1",
                                 "--min-samples", "100"])
        self.predictor_url = f"http://127.0.0.1:{port}"
        self.targets.append(("predictor", port, {"namespace": NAMESPACE}))
        # /healthz is both probes of the chart's predictor (/readyz waits for a fitted model).
        wait_http(self.predictor_url + "/healthz", "goodput predictor serve", procs=self.procs)

    def feed_predictor(self, rng, rows=200):
        """Training rows and bulk predictions, as a scheduler sends them."""
        entries, requests = [], []
        for _ in range(rows):
            kv = rng.random()
            inp = rng.randint(16, 4096)
            waiting, running = rng.randint(0, 8), rng.randint(0, 64)
            prefix = rng.random() * 0.5
            f = {"kv_cache_percentage": kv, "input_token_length": inp,
                 "num_request_waiting": waiting, "num_request_running": running,
                 "num_tokens_generated": 0, "prefix_cache_score": prefix,
                 "prefill_tokens_in_flight": waiting * 512, "decode_tokens_in_flight": running}
            ttft = (5 + 0.05 * inp * (1 - prefix) + 30 * waiting) * rng.lognormvariate(0, 0.1)
            tpot = (8 + 0.2 * running + 10 * kv) * rng.lognormvariate(0, 0.1)
            entries.append(dict(f, actual_ttft_ms=ttft, actual_tpot_ms=tpot))
            requests.append(dict(f, num_tokens_generated=1))
        http(self.predictor_url + "/add_training_data_bulk", json.dumps({"entries": entries}).encode())
        try:
            http(self.predictor_url + "/predict/bulk/strict",
                 json.dumps({"requests": requests[:50]}).encode())
        except urllib.error.HTTPError as e:
            if e.code != 503:  # 503 until the first model is fitted
                raise

    def start_scheduler(self):
        """`goodput scheduler serve` (issue 6) over the simulated servers, behind a real Envoy
        (docs/guides/examples/envoy-ext-proc.yaml with this run's ports)."""
        grpc, metrics, listener = free_port(), free_port(), free_port()
        endpoints = ",".join(
            f"{url.removeprefix('http://')} accelerator={accel}"
            for url, accel in zip(self.vllm_urls, self.vllm_accels))
        self.spawn("scheduler", [self.goodput, "scheduler", "serve", "--host", "127.0.0.1",
                                 "--port", str(grpc), "--metrics-port", str(metrics),
                                 "--endpoints", endpoints, "--model", MODEL])
        self.targets.append(("scheduler", metrics, {"namespace": NAMESPACE}))
        wait_http(f"http://127.0.0.1:{metrics}/metrics", "goodput scheduler serve", procs=self.procs)
        # The chart probes these (charts/goodput/values.yaml, scheduler.*Probe).
        for path in ("/healthz", "/readyz"):
            wait_http(f"http://127.0.0.1:{metrics}{path}", f"goodput scheduler serve ({path}, the "
                      "chart's probe)", timeout=30, procs=self.procs)
        envoy = Path(os.environ.get("GOODPUT_TOOLS", ROOT / ".tools" / "venv" / "bin")) / "envoy"
        if not os.access(envoy, os.X_OK):
            fail(f"{envoy} is missing: run scripts/tools.sh")
        cfg = (ROOT / "docs" / "guides" / "examples" / "envoy-ext-proc.yaml").read_text()
        cfg = cfg.replace("port_value: 8081", f"port_value: {listener}").replace(
            "port_value: 9002", f"port_value: {grpc}").replace("address: 0.0.0.0", "address: 127.0.0.1")
        (self.tmp / "envoy.yaml").write_text(cfg)
        self.spawn("envoy", [str(envoy), "-c", str(self.tmp / "envoy.yaml"), "--disable-hot-restart",
                             "--concurrency", "1", "--log-level", "warn"])
        self.envoy_url = f"http://127.0.0.1:{listener}"
        deadline = time.time() + 30
        while not port_open(listener):
            if time.time() > deadline:
                fail("Envoy did not listen within 30 s")
            time.sleep(0.2)

    def start_scheduler_load(self):
        # The scheduler, like llm-d's EPP, needs `model` in the body (vLLM itself does not).
        self.spawn("sim-load-envoy", [self.goodput, "sim", "load", "--url", self.envoy_url,
                                      "--model", MODEL, "--rate", "4", "--duration", "600",
                                      "--lengths", "sharegpt", "--timeout-s", "60", "--seed", "3"])

    def feed_scheduler(self):
        """Requests carrying SLO headers through Envoy (the load generator sends none): the
        scheduler's headroom and violation series need them."""
        for ttft, tpot in [("500", "50"), ("2000", "100"), ("1", "1")]:
            req = urllib.request.Request(
                self.envoy_url + "/v1/completions",
                data=json.dumps({"model": MODEL, "prompt": "hello " * 64, "max_tokens": 8,
                                 "stream": True}).encode(),
                headers={"content-type": "application/json", "x-slo-ttft-ms": ttft,
                         "x-slo-tpot-ms": tpot})
            try:
                urllib.request.urlopen(req, timeout=30).read()
            except urllib.error.HTTPError:
                pass  # shed or refused requests are counted by the scheduler too

    def prepare_advise(self):
        """Port and scrape target of `goodput autoscaler advise --serve`, which needs Prometheus
        up before it starts (spawn_advise)."""
        self.advise_port = free_port()
        self.targets.append(("advise", self.advise_port, {}))

    def spawn_advise(self):
        """`goodput autoscaler advise` (issue 7) with a ModelAutoscaler spec for the simulated
        fleet: model llama-3.1-8b in namespace goodput-live, variants h100 and l40s."""
        config = {
            "name": "llama", "namespace": NAMESPACE,
            "spec": {
                "model": MODEL,
                "slo": {"ttft": {"targetMs": 1000, "percentile": 95},
                        "itl": {"targetMs": 60, "percentile": 95}},
                "variants": [
                    {"name": "h100", "pool": "h100", "minReplicas": 1, "maxReplicas": 8,
                     "scaleTargetRef": {"kind": "Deployment", "name": "llama-h100"}},
                    {"name": "l40s", "pool": "l40s", "minReplicas": 0, "maxReplicas": 8,
                     "scaleTargetRef": {"kind": "Deployment", "name": "llama-l40s"}}],
                "policy": {"intervalSeconds": 5},
                "metrics": {"window": "15s", "matchers": {"namespace": NAMESPACE}}},
            "pools": {"h100": {"acceleratorType": "h100", "devices": 8},
                      "l40s": {"acceleratorType": "l40s", "devices": 8}},
        }
        path = self.tmp / "advise.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.spawn("advise", [self.goodput, "autoscaler", "advise", "--prometheus", self.prom,
                              "--config", str(path), "--serve", str(self.advise_port),
                              "--interval", "2"])
        for path in ("/healthz", "/readyz"):
            wait_http(f"http://127.0.0.1:{self.advise_port}{path}", "goodput autoscaler advise",
                      procs=self.procs)

    def start_prometheus(self):
        port = free_port()
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "rule_files": [str(ROOT / "alerts" / "goodput.rules.yaml")],
               "scrape_configs": []}
        for job, tport, labels in self.targets:
            cfg["scrape_configs"].append({
                "job_name": f"{job}-{tport}", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{tport}"], "labels": labels}]})
        path = self.tmp / "prometheus.yml"
        path.write_text(json.dumps(cfg))  # JSON is YAML
        self.spawn("prometheus", [
            "prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
        self.prom = f"http://127.0.0.1:{port}"
        wait_http(self.prom + "/-/ready", "prometheus", procs=self.procs)

    def query(self, expr):
        url = self.prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(http(url)[1])
        except urllib.error.HTTPError as e:
            return None, json.loads(e.read()).get("error", str(e))
        return body["data"]["result"], None


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port_taken(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def substitute(expr, variables):
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in re.sub(r"\$\d", "", expr):
        raise ValueError(f"unsubstituted variable in {expr}")
    return expr


def dashboard_queries(path):
    """(what, expr, kind) for every panel target and template-variable query, substituted."""
    d = json.loads(path.read_text())
    variables = {"__rate_interval": RATE_INTERVAL, "__range": RANGE, "__interval": "1s"}
    out = []
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            variables[v["name"]] = v["allValue"]
        elif v["type"] == "custom":
            variables[v["name"]] = v["current"]["value"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query, re.S)
            if not m:
                fail(f"{path.name}: variable {v['name']}: unsupported query {query}")
            expr = f"count by ({m.group(2)}) ({substitute(m.group(1), variables)})"
            out.append((f"{path.name} variable ${v['name']}", expr, "variable"))
    for p in d["panels"]:
        for t in p["targets"]:
            out.append((f"{path.name} panel {p['id']} \"{p['title']}\" target {t['refId']}",
                        substitute(t["expr"], variables), "panel"))
    return out


def finite(result):
    for s in result:
        v = s.get("value", [None, "NaN"])[1]
        try:
            if math.isfinite(float(v)):
                return True
        except ValueError:
            pass
    return False


def main():
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    goodput = os.environ.get("GOODPUT_BIN", str(target_dir / "debug" / "goodput"))
    if not os.access(goodput, os.X_OK):
        fail(f"goodput binary {goodput} is missing: build it (cargo build -p goodput) or set GOODPUT_BIN")
    if not shutil.which("prometheus"):
        fail("prometheus is not on PATH: apt-get install -y prometheus (scripts/test.sh does)")
    components = [c for c in os.environ.get("GOODPUT_LIVE_COMPONENTS", DEFAULT_COMPONENTS).split(",") if c]
    for c in components:
        if c not in ALL_COMPONENTS:
            fail(f"unknown component {c!r} in GOODPUT_LIVE_COMPONENTS (known: {', '.join(ALL_COMPONENTS)})")
    if "scheduler" in components and "vllm" not in components:
        fail("component 'scheduler' needs component 'vllm' (its endpoints)")
    strict = os.environ.get("GOODPUT_LIVE_STRICT", "1") == "1"
    timeout = float(os.environ.get("GOODPUT_LIVE_TIMEOUT_S", "120"))

    queries = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        queries += dashboard_queries(path)
    required = [(w, e) for w, e, _ in queries if components_of(e) <= set(components)]
    untested = {}
    for w, e, _ in queries:
        missing = components_of(e) - set(components)
        if missing:
            untested.setdefault(",".join(sorted(missing)), []).append(w)
    if strict and untested:
        fail("GOODPUT_LIVE_STRICT=1 but targets need components not running: "
             + "; ".join(f"{k}: {len(v)}" for k, v in untested.items()))

    tmp = Path(tempfile.mkdtemp(prefix="goodput-live-"))
    stack = Stack(goodput, components, tmp)
    rng = random.Random(7)
    ok = False
    try:
        if "vllm" in components:
            stack.start_vllm()
        if "predictor" in components:
            stack.start_predictor()
        if "scheduler" in components:
            stack.start_scheduler()
        if "advise" in components:
            stack.prepare_advise()
        stack.start_prometheus()
        if "advise" in components:
            stack.spawn_advise()
        if "vllm" in components:
            stack.start_vllm_load()
        if "scheduler" in components:
            stack.start_scheduler_load()

        deadline = time.time() + timeout
        pending = list(required)
        errors = {}
        while pending and time.time() < deadline:
            for p, name in stack.procs:
                if p.poll() is not None:
                    fail(f"{name} exited with {p.returncode}; log: {tmp / (name + '.log')}")
            if "predictor" in components:
                stack.feed_predictor(rng)
            if "scheduler" in components:
                stack.feed_scheduler()
            still = []
            for what, expr in pending:
                result, err = stack.query(expr)
                if err:
                    errors[what] = f"query error: {err}"
                    still.append((what, expr))
                elif not finite(result):
                    errors[what] = "no finite value" if result else "no series"
                    still.append((what, expr))
            pending = still
            if pending:
                time.sleep(2)
        if pending:
            for what, expr in pending:
                print(f"  {what}: {errors.get(what)}\n    {expr}", file=sys.stderr)
            fail(f"{len(pending)} of {len(required)} queries returned no data within {timeout:.0f} s "
                 f"(logs in {tmp})")

        # Prometheus loaded and evaluates goodput's rules without errors on live data.
        rules = json.loads(http(stack.prom + "/api/v1/rules")[1])["data"]["groups"]
        bad = [r["name"] for g in rules for r in g["rules"] if r.get("health") == "err"]
        if len(rules) != 5 or bad:
            fail(f"rules: {len(rules)} groups loaded (want 5), unhealthy: {bad}")
        if "vllm" in components:
            deadline = time.time() + 60
            while True:
                result, _ = stack.query("goodput:vllm_ttft_slo_errors:ratio_rate5m")
                if result and finite(result):
                    break
                if time.time() > deadline:
                    fail("recording rule goodput:vllm_ttft_slo_errors:ratio_rate5m has no value")
                time.sleep(2)

        print(f"live-dashboards: {len(required)} queries (panel targets and template variables) "
              f"returned data with components {','.join(components)}")
        for k, v in sorted(untested.items()):
            print(f"live-dashboards: not live-tested, need component(s) {k}: {len(v)}")
            for w in v:
                print(f"    {w}")
        ok = True
    finally:
        stack.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
