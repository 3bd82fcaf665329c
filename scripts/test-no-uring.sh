#!/usr/bin/env bash
# Runs the test suite with io_uring blocked, as in a container under Docker's
# or containerd's default seccomp profile, and sums up what it saw.
#
# Every test binary (and every process it starts, the `muxado` tool
# included) runs under examples/no_uring.rs, set as cargo's test runner: a
# seccomp filter answers io_uring_setup/enter/register with EPERM, then the
# test binary is exec'd. Expected: every test that does not need the engine
# passes; every test that does fails with a clear "io_uring unavailable"
# message. The summary counts both, and lists any other failure: those are
# the bugs (the script then exits 1).
#
# A test "could not run" when its failure output holds the engine's error:
# "io_uring unavailable: …" (Display) or `Unavailable { reason: "io_uring …`
# (the Debug form that `.expect()` prints).
#
# Usage: scripts/test-no-uring.sh [extra cargo test args, e.g. --lib]
#        scripts/test-no-uring.sh --summary-only   (re-read the last log)
# Needs Linux on x86_64 (the filter checks the arch).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/muxado-no-uring.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The log stays (target/ is cargo's, and ignored by git).
log="$PWD/target/test-no-uring.log"
if [ "${1:-}" = "--summary-only" ]; then
  [ -f "$log" ] || { echo "no log at $log: run without --summary-only first" >&2; exit 2; }
  cargo_status=1
  grep -q '^error: ' "$log" || cargo_status=0
else
  cargo build --quiet --example no_uring
  # A copy: `cargo test` may rebuild the example in place while it runs.
  cp target/debug/examples/no_uring "$work/no_uring"
  "$work/no_uring" true || { echo "cannot install the seccomp filter here" >&2; exit 2; }
  host=$(rustc -vV | sed -n 's/^host: //p')
  runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z.-' 'A-Z__')_RUNNER"
  echo "running cargo test with io_uring blocked ($runner_var=no_uring); log: $log" >&2
  set +e
  env "$runner_var=$work/no_uring" cargo test --no-fail-fast "$@" 2>&1 | tee "$log"
  cargo_status=${PIPESTATUS[0]}
  set -e
fi

# One record per test: binary, name, outcome (ok / ignored / uring / other).
awk '
  function flush() {
    if (cur != "") { why[bin SUBSEP cur] = text }
    cur = ""; text = ""
  }
  /^ *Running / { flush(); bin = ($2 == "unittests") ? $2 " " $3 : $2; next }
  /^ *Doc-tests / { flush(); bin = "doctest:" $2; next }
  /^test .* \.\.\. / {
    name = $0; sub(/^test /, "", name); sub(/ \.\.\. .*$/, "", name)
    res = $0; sub(/^.* \.\.\. /, "", res)
    key = bin SUBSEP name
    if (!(key in result)) { order[++n] = key }
    result[key] = res
    next
  }
  /^---- .* stdout ----$/ {
    flush(); cur = $0; sub(/^---- /, "", cur); sub(/ stdout ----$/, "", cur); next
  }
  /^failures:$/ || /^test result:/ { flush(); next }
  cur != "" { text = text "\n" $0 }
  END {
    flush()
    for (i = 1; i <= n; i++) {
      key = order[i]; split(key, p, SUBSEP); r = result[key]
      if (r ~ /^ok/) kind = "ok"
      else if (r ~ /^ignored/) kind = "ignored"
      else if (why[key] ~ /io_uring unavailable|Unavailable \{ reason: "io_uring /) kind = "uring"
      else kind = "other"
      print kind "\t" p[1] "\t" p[2]
    }
  }
' "$log" > "$work/summary.tsv"

count() { awk -F'\t' -v k="$1" '$1 == k' "$work/summary.tsv" | wc -l; }
passed=$(count ok); ignored=$(count ignored); uring=$(count uring); other=$(count other)
crashed=$(grep -c '^error: test failed, to rerun pass' "$log" || true)

echo
echo "== cargo test with io_uring blocked (seccomp EPERM) =="
echo "passed:                                    $passed"
echo "ignored:                                   $ignored"
echo "could not run (failed: io_uring unavailable): $uring"
echo "failed for another reason:                 $other"
echo "test binaries that failed (cargo's count): $crashed"
if [ "$uring" -gt 0 ]; then
  echo
  echo "-- could not run without io_uring, by test binary:"
  awk -F'\t' '$1 == "uring" { n[$2]++ } END { for (b in n) printf "   %4d  %s\n", n[b], b }' \
    "$work/summary.tsv" | sort -k2
fi
if [ "$other" -gt 0 ]; then
  echo
  echo "-- FAILED for another reason (bugs: these should pass without io_uring):"
  awk -F'\t' '$1 == "other" { printf "   %s  %s\n", $2, $3 }' "$work/summary.tsv"
fi
if [ $((passed + uring + other)) -eq 0 ]; then
  echo
  echo "NO TEST RAN (cargo exit status $cargo_status; a build error?): see $log"
fi
# A binary that failed without any failing test line (a crash, a build
# error) would hide its tests: the log says so above.
if [ "$other" -gt 0 ] || { [ "$cargo_status" -ne 0 ] && [ "$uring" -eq 0 ]; }; then
  exit 1
fi
exit 0
