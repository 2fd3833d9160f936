#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) with cargo-fuzz for a bounded time each:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs the nightly toolchain; installs cargo-fuzz if missing. A crash leaves its input under
# fuzz/artifacts/<target>/ and fails the script; `cargo +nightly fuzz run <target> <file>`
# replays it. Seeds are in fuzz/seeds/<target>/ (valid messages from docs/PROTOCOL.md).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
log() { echo "fuzz: $*" >&2; }

rustup toolchain list | grep -q '^nightly' || { log "needs the nightly toolchain (rustup toolchain install nightly)"; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
summary=()
for t in $targets; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  log "$t for ${secs}s"
  out=$(cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40 >&2
    log "$t FAILED (input under fuzz/artifacts/$t/)"
    exit 1
  }
  runs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p' | tail -1)
  cov=$(echo "$out" | grep -o 'cov: [0-9]*' | tail -1 | cut -d' ' -f2)
  summary+=("$t=${runs:-?}")
  log "$t: ${runs:-?} runs, coverage ${cov:-?} edges, no crash"
done
echo "fuzz_targets=$(echo "$targets" | wc -w) seconds_each=$secs ${summary[*]}"
