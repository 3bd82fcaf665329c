#!/usr/bin/env bash
# Long run of the structured fuzzer of proto::Session (tests/proto_fuzz.rs),
# in release. Usage: scripts/fuzz.sh [FRAMES] [SEED] [PAIRS]
#   FRAMES  frames the hostile-peer driver must feed in total (default 10^7)
#   SEED    first seed (default: from the clock; printed, so a run replays)
#   PAIRS   healthy-pair cases (default 2000)
# A failing case prints the seed that replays it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
frames=${1:-10000000}
seed=${2:-$(date +%s)}
pairs=${3:-2000}
echo "fuzz: ${frames} frames, ${pairs} pair cases, seed ${seed}"
start=$(date +%s)
MUXADO_FUZZ_FRAMES=$frames MUXADO_FUZZ_SEED=$seed MUXADO_FUZZ_PAIRS=$pairs \
    cargo test --release --test proto_fuzz -- --nocapture --test-threads 2
end=$(date +%s)
echo "fuzz: done in $((end - start)) s (including the build)"
