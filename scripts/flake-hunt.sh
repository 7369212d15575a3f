#!/usr/bin/env bash
# The test suite under CPU starvation, N times (NOT part of CI): how the suite's
# timing-sensitive tests hold on a machine far busier than CI's.
#
#   scripts/flake-hunt.sh [RUNS] [OUTDIR]      # default: 5 runs into .tools/flake-hunt
#
# Each run is the test step of scripts/test.sh (`cargo nextest run --profile ci` over
# every target but the benchmarks), with the suite and HOGS busy loops pinned to the
# CPUs in PIN, and NEXTEST_TEST_THREADS tests at once:
#
#   PIN=0 HOGS=4 NEXTEST_TEST_THREADS=6   (defaults: one CPU, four spinners, six tests)
#
# that is, every test gets a small share of one core. It prints one line per run
# (exit status, time, nextest's summary) and the name of every test that failed, and
# keeps each run's full output in OUTDIR/runN.log. Run scripts/test.sh once first: it
# installs the Python venv, the JS SDK and the Go SDK the suite needs.
set -uo pipefail

cd "$(dirname "$0")/.."
runs="${1:-5}"
out="${2:-.tools/flake-hunt}"
mkdir -p "$out"
: > "$out/summary.txt"
cargo nextest --version >/dev/null 2>&1 || { echo "flake-hunt: needs cargo-nextest" >&2; exit 1; }
command -v taskset >/dev/null 2>&1 || { echo "flake-hunt: needs taskset (util-linux)" >&2; exit 1; }
export NEXTEST_TEST_THREADS="${NEXTEST_TEST_THREADS:-6}"
pin=(taskset -c "${PIN:-0}")

# Build first, unloaded: the runs measure the tests, not the compiler.
cargo nextest run --locked --profile ci --workspace --lib --bins --tests --examples --no-run >/dev/null 2>&1 \
  || { echo "flake-hunt: build failed (cargo nextest run --no-run)" >&2; exit 1; }

hogs=()
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
for _ in $(seq 1 "${HOGS:-4}"); do
  "${pin[@]}" sh -c 'while :; do :; done' &
  hogs+=($!)
done

echo "flake-hunt: ${runs} runs; suite and ${HOGS:-4} spinners on CPU ${PIN:-0}; ${NEXTEST_TEST_THREADS} tests at once" \
  | tee -a "$out/summary.txt"
failed_runs=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  "${pin[@]}" cargo nextest run --locked --profile ci --workspace --lib --bins --tests --examples >"$out/run$i.log" 2>&1
  rc=$?
  ((rc == 0)) || failed_runs=$((failed_runs + 1))
  summary=$(grep -E "Summary" "$out/run$i.log" | tail -1 | sed 's/^ *//')
  echo "run $i: exit $rc in $(($(date +%s) - start)) s: $summary" | tee -a "$out/summary.txt"
  grep -E "^ +(FAIL|TIMEOUT|SIGSEGV|SIGABRT|SIGKILL) " "$out/run$i.log" | sort -u | tee -a "$out/summary.txt"
done
echo "flake-hunt: $((runs - failed_runs)) of $runs runs passed" | tee -a "$out/summary.txt"
((failed_runs == 0))
