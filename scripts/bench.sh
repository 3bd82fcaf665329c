#!/usr/bin/env bash
# Regenerates perf/: release build, the full default suite (every scenario ×
# every system, client CPU0 / server CPU1), results.md, results.json and the
# SVG plots. Extra arguments go to `muxado bench` (e.g. --duration 2).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin muxado
mkdir -p perf
echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
./target/release/muxado bench --out perf/ "$@" | tee perf/results.txt
