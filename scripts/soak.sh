#!/usr/bin/env bash
# Soak: many checksummed sessions against `muxado serve --cores 2 --mode echo`
# with random stream resets, half-closes, GOAWAYs, session closes in
# mid-transfer and killed clients (TCP reset), for MINUTES (default 5).
#
# The client is the release build of tests/soak.rs (it starts and stops the
# server itself). It prints bytes verified, errors by kind, and the server's
# RSS and descriptors at start (after a warm-up of a tenth of the run, at most
# 30 s) and at end, each taken with no session connected; an RSS change of
# more than 5% is flagged. It fails on any byte lost or corrupted, any error
# on an undisturbed stream, or descriptors not back to the idle count.
#
# Environment: SOAK_SEED (a number), SOAK_SESSIONS (sessions at a time per
# client thread, default 8), SOAK_JSON (write the figures there as JSON too).
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
