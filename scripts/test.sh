#!/usr/bin/env bash
# The whole test suite, as CI runs it: prerequisites, formatting, lints, then every unit and
# integration test (real RabbitMQ, Redis and Docker) on release builds, so the timing-sensitive
# sync tests see the speed users get.
set -euo pipefail
cd "$(dirname "$0")/.."

TS_REQUIRE_DOCKER=1 bash scripts/setup.sh
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --release --all-targets -- -D warnings
echo "[test] cargo test --release"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release -- --nocapture 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last being doc tests).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
