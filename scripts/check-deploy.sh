#!/usr/bin/env bash
# Checks of what users deploy and look at: alerts (promtool), dashboards (static checks and the
# live-stack test: every panel query against a real Prometheus scraping the running stack), the
# Helm chart (Helm's library, Kubernetes 1.33 schemas) and the Dockerfile (hadolint).
#
#   bash scripts/check-deploy.sh           all of it; the live test needs the goodput binary
#   bash scripts/check-deploy.sh static    everything but the live-stack test (no binary needed)
#   bash scripts/check-deploy.sh live      the checks that run the binary: the CLI reference and
#                                          the live-stack test
#
# Tools: promtool/prometheus (Debian package `prometheus`), and from scripts/tools.sh
# (.tools/venv, or $GOODPUT_TOOLS): python with helm-sdkpy, kubernetes-validate, pyyaml, and
# hadolint. A missing tool fails with a message naming its installer; nothing is skipped.
# The goodput binary: $GOODPUT_BIN, else ${CARGO_TARGET_DIR:-target}/debug/goodput (built by
# `cargo test --workspace --all-features` in scripts/test.sh before this runs).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${GOODPUT_TOOLS:-$(pwd)/.tools/venv/bin}"
what="${1:-all}"

need() {
  [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || { echo "check-deploy: $1 is missing: $2"; exit 1; }
}
need promtool "apt-get install -y prometheus"
need prometheus "apt-get install -y prometheus"
need "$tools/python" "run scripts/tools.sh"
need "$tools/hadolint" "run scripts/tools.sh"
"$tools/python" -c 'import helm_sdkpy, kubernetes_validate, yaml, jsonschema' 2>/dev/null \
  || { echo "check-deploy: helm-sdkpy, kubernetes-validate or pyyaml missing in $tools: run scripts/tools.sh"; exit 1; }

if [ "$what" = all ] || [ "$what" = static ]; then
  echo "==> alerts: promtool check rules, promtool test rules"
  promtool check rules alerts/goodput.rules.yaml
  promtool test rules alerts/tests/*.yaml
  # Every alert has a unit test in which it fires.
  "$tools/python" - <<'PY'
import glob, sys, yaml
alerts = {r["alert"] for g in yaml.safe_load(open("alerts/goodput.rules.yaml"))["groups"]
          for r in g["rules"] if "alert" in r}
fired = set()
for f in glob.glob("alerts/tests/*.yaml"):
    for t in yaml.safe_load(open(f))["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fired.add(a["alertname"])
missing = sorted(alerts - fired)
if missing:
    sys.exit(f"alerts without a promtool test in which they fire: {missing}")
print(f"{len(alerts)} alerts, each fires in a promtool test")
PY

  echo "==> dashboards: static checks"
  "$tools/python" scripts/deploy/dashboard_checks.py

  echo "==> chart: helm lint, render, Kubernetes schemas"
  "$tools/python" scripts/deploy/chart_checks.py

  echo "==> docker: hadolint"
  "$tools/hadolint" docker/Dockerfile
  echo "hadolint: docker/Dockerfile clean"
fi

if [ "$what" = all ] || [ "$what" = live ]; then
  echo "==> docs: docs/reference/cli.md against the binary's --help"
  "$tools/python" scripts/deploy/cli_reference.py --check

  echo "==> dashboards: live-stack test"
  "$tools/python" scripts/deploy/live_dashboards.py
fi
echo "check-deploy: ok"
