"""An imitation of the Kubernetes API server, just enough for Helm's install action.

No API server can run on this machine (DESIGN.md, "Real components"), yet the chart must be
rendered by Helm's own library (PyPI helm-sdkpy), whose only rendering path is an install. This
in-process HTTP server speaks the API's real wire format (discovery documents of a v1.33
cluster, JSON objects, Status errors) for the requests an install makes: /version and
discovery, the release's Secrets, and a create of every object. It records every object Helm
creates; those are exactly the rendered manifests, which chart_checks.py then validates against
the real Kubernetes schemas (kubernetes-validate). It decides nothing: no admission, no
defaulting, no controllers.
"""

import base64
import gzip
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

# group/version -> [(plural, Kind, namespaced, subresources)]
RESOURCES = {
    "v1": [("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
           ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True),
           ("pods", "Pod", True), ("events", "Event", True), ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "coordination.k8s.io/v1": [("leases", "Lease", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
    # The CRD-typed kinds the chart may render (prometheus-operator, KEDA, goodput itself).
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True),
                                 ("podmonitors", "PodMonitor", True),
                                 ("prometheusrules", "PrometheusRule", True)],
    "keda.sh/v1alpha1": [("scaledobjects", "ScaledObject", True)],
    "goodput.dev/v1alpha1": [("modelautoscalers", "ModelAutoscaler", True),
                             ("acceleratorpools", "AcceleratorPool", False)],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _split(gv):
    return ("", gv) if "/" not in gv else tuple(gv.split("/"))


class FakeApiServer:
    def __init__(self):
        self.objects = {}   # path of the object -> object
        self.created = []   # objects in the order Helm created them
        self.requests = []  # (method, path)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if "protobuf" in (self.headers.get("Content-Type") or ""):
                    return server.from_protobuf(raw)
                return json.loads(raw) if raw else None

            def do_GET(self):
                self._send(*server.handle("GET", self.path, None))

            def do_POST(self):
                self._send(*server.handle("POST", self.path, self._body()))

            def do_PUT(self):
                self._send(*server.handle("PUT", self.path, self._body()))

            def do_PATCH(self):
                self._send(*server.handle("PATCH", self.path, self._body()))

            def do_DELETE(self):
                self._send(*server.handle("DELETE", self.path, None))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path, namespace):
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}]}))

    @staticmethod
    def from_protobuf(raw):
        """Helm's release Secret arrives as protobuf (client-go's typed client). Only its name and
        its `release` value (base64 of gzipped JSON, which starts with H4sI) are needed."""
        name = re.search(rb"sh\.helm\.release\.v1\.[a-z0-9.-]+", raw)
        release = re.search(rb"H4sI[A-Za-z0-9+/=]+", raw)
        return {"kind": "Secret", "apiVersion": "v1",
                "metadata": {"name": name.group(0).decode() if name else "unknown"},
                "type": "helm.sh/release.v1",
                "data": {"release": release.group(0).decode() if release else ""}}

    def releases(self):
        """The releases Helm stored, decoded: the last version of each."""
        out = []
        with self.lock:
            for key, obj in self.objects.items():
                if "/secrets/sh.helm.release.v1." in key:
                    data = base64.b64decode(obj["data"]["release"])
                    out.append(json.loads(gzip.decompress(base64.b64decode(data)) if data[:2] != b"\x1f\x8b" else gzip.decompress(data)))
        return out

    @staticmethod
    def status(code, reason, message):
        return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code}

    def handle(self, method, raw_path, body):
        path = urlparse(raw_path).path.rstrip("/")
        with self.lock:
            self.requests.append((method, raw_path))
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                         "gitCommit": "fake", "gitTreeState": "clean",
                         "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
                         "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                         "serverAddress": "127.0.0.1:6443"}]}
        if path == "/apis":
            groups = []
            for gv in RESOURCES:
                if gv == "v1":
                    continue
                g, v = _split(gv)
                ver = {"groupVersion": gv, "version": v}
                groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for gv, resources in RESOURCES.items():
            prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            if path == prefix:
                out = []
                for plural, kind, namespaced in resources:
                    out.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                                "kind": kind, "verbs": VERBS})
                    if kind in ("Deployment", "StatefulSet"):
                        out.append({"name": f"{plural}/scale", "singularName": "", "namespaced": True,
                                    "group": "autoscaling", "version": "v1", "kind": "Scale",
                                    "verbs": ["get", "patch", "update"]})
                    if kind == "CustomResourceDefinition":
                        out.append({"name": f"{plural}/status", "singularName": "", "namespaced": False,
                                    "kind": kind, "verbs": ["get", "patch", "update"]})
                return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                             "resources": out}
            if path.startswith(prefix + "/"):
                return self.resource(method, gv, path[len(prefix) + 1:].split("/"), body)
        return self.status(404, "NotFound", f"the server could not find the requested resource {path}")

    def resource(self, method, gv, parts, body):
        ns = None
        if len(parts) >= 3 and parts[0] == "namespaces":
            ns, parts = parts[1], parts[2:]
        plural = parts[0]
        kinds = {p: k for p, k, _ in RESOURCES[gv]}
        if plural not in kinds:
            return self.status(404, "NotFound", f"{plural} is not served in {gv}")
        collection = f"{gv}/{ns or '-'}/{plural}"
        if len(parts) == 1:
            if method == "GET":
                with self.lock:
                    items = [o for k, o in self.objects.items() if k.startswith(collection + "/")]
                return 200, {"kind": kinds[plural] + "List", "apiVersion": gv,
                             "metadata": {"resourceVersion": "1"}, "items": items}
            if method == "POST":
                meta = body.setdefault("metadata", {})
                name = meta.get("name")
                key = f"{collection}/{name}"
                with self.lock:
                    if key in self.objects:
                        return self.status(409, "AlreadyExists", f'{plural} "{name}" already exists')
                    stored = json.loads(json.dumps(body))
                    self.created.append(json.loads(json.dumps(body)))
                    m = stored["metadata"]
                    if ns:
                        m["namespace"] = ns
                    m.update({"uid": str(uuid.uuid4()), "resourceVersion": str(len(self.objects) + 2),
                              "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "generation": 1})
                    if kinds[plural] == "CustomResourceDefinition":
                        now = m["creationTimestamp"]
                        stored["status"] = {
                            "conditions": [
                                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                 "message": "no conflicts found", "lastTransitionTime": now},
                                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                                 "message": "the initial names have been accepted", "lastTransitionTime": now}],
                            "acceptedNames": stored["spec"]["names"], "storedVersions": ["v1alpha1"]}
                    self.objects[key] = stored
                return 201, stored
            return self.status(405, "MethodNotAllowed", f"{method} on a collection")
        key = f"{collection}/{parts[1]}"
        with self.lock:
            obj = self.objects.get(key)
            if method == "GET":
                return (200, obj) if obj else self.status(404, "NotFound", f'{plural} "{parts[1]}" not found')
            if method in ("PUT", "PATCH"):
                if obj is None:
                    return self.status(404, "NotFound", f'{plural} "{parts[1]}" not found')
                if method == "PUT":
                    body["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
                    self.objects[key] = body
                return 200, self.objects[key]
            if method == "DELETE":
                self.objects.pop(key, None)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        return self.status(405, "MethodNotAllowed", method)
