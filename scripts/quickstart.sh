#!/usr/bin/env bash
# Brings up a time-sync cluster on this machine and shows its synced clocks:
# prerequisites (scripts/setup.sh), a release build, `tsc init`, `tsc bootstrap` (Docker when a
# daemon answers, local processes otherwise; 3 server replicas), `tsc wait`, `tsc servers list`,
# `tsc clients list -v`.
# Run again to just show the clocks of the running cluster; `tsc teardown` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "[quickstart] cargo build --release"
cargo build --release --quiet
export PATH="$PWD/target/release:$PATH"

tsc init
rc=0
tsc status >/dev/null 2>&1 || rc=$?
if [ "$rc" -eq 4 ]; then    # 4: no cluster yet
  tsc bootstrap --servers 3 "$@"
fi
tsc wait --timeout 120
tsc servers list
tsc clients list -v
echo
echo "[quickstart] tsc is in $PWD/target/release; try: tsc dashboard (then open http://127.0.0.1:8480/), tsc status, tsc clients add -n 3, tsc clients tail -c ID -f, tsc teardown"
