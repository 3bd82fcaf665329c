#!/usr/bin/env bash
# Soak: many checksummed sessions against `muxado serve --cores 2 --mode echo`
# with random stream resets, half-closes, GOAWAYs, session closes in
# mid-transfer and killed clients (TCP reset), for MINUTES (default 5).
#
# The client is the release build of tests/soak.rs (it starts and stops the
# server itself). It prints bytes verified, errors by kind, and the server's
# RSS and descriptors, each idle sample taken with no session connected and
# after the server's trim ticks: at start (after a warm-up of a tenth of the
# run, at most 180 s, for the server's buffer pools to fill: see
# tests/soak.rs), then after each of the phases the run is cut into (10 for
# runs of a minute or more), so that a plateau shows apart from a leak. The
# last one is the end sample; an RSS change of more than 5% from start to
# end is flagged. RSS under load is sampled in the middle of each phase.
# It fails on any byte lost or corrupted, any error on an undisturbed
# stream, or descriptors not back to the idle count at any idle sample.
#
# Environment: SOAK_SEED (a number), SOAK_SESSIONS (sessions at a time per
# client thread, default 8), SOAK_PHASES (idle checkpoints), SOAK_JSON (write
# the figures there as JSON too), MUXADO_MALLOC_INFO=PATH (diagnostics: the
# server writes glibc's malloc_info there after each trim, and the client
# keeps a copy per idle sample as PATH.start, PATH.phase-01, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: scripts/soak.sh [MINUTES]" >&2
    exit 2
fi
secs=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
ulimit -n "$(ulimit -Hn)"
cargo build --release --tests --bin muxado
echo "soak: ${minutes} min against muxado serve --cores 2; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
SOAK_SECS="$secs" cargo test --release --test soak -- --nocapture --test-threads 1 2>&1 \
    | grep --line-buffered -E '^soak|^test |panicked|test result'
