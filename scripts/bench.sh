#!/usr/bin/env bash
# Regenerates perf/: release build, the full default suite (every scenario ×
# every system, client CPU0 / server CPU1, 3 interleaved rounds; about
# 3 minutes on 2 cores), results.md, results.json (with the machine, kernel,
# commit, placement and load average before and after) and the SVG plots.
# Extra arguments go to `muxado bench` (e.g. --repeat 5, or
# --baseline perf/results.json to compare with the last saved run — save a
# copy first, since --out perf/ overwrites it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin muxado
mkdir -p perf
ulimit -n "$(ulimit -Hn)"
./target/release/muxado bench --out perf/ "$@" | tee perf/results.txt
