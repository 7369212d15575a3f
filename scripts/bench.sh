#!/usr/bin/env bash
# Benchmark harness (docs/performance.md, "Performance"): builds release binaries, then runs every
# scenario of examples/bench_driver.rs against the real credvend binary and the in-repo
# fake STS: cache-hit throughput vs a bare hyper server (wrk, A B A B), the 1,000-request
# cold herd, scale (100,000 idle mappings: start-up, memory, /metrics, a one-file reload;
# then 10,000 prefetch mappings warming), and boto3 time to first credential. Optionally the
# criterion micro-benchmarks (BENCH_MICRO=1).
#
#   scripts/bench.sh [throughput|herd|scale|scale-idle|scale-warm|ttfc|all]
#
# Needs: wrk (apt-get install wrk), .venv with boto3 (scripts/setup-python.sh).
# Knobs (environment): BENCH_DURATION BENCH_CONNECTIONS BENCH_PAIRS BENCH_MAPPINGS
# BENCH_PREFETCH_MAPPINGS BENCH_BASELINE BENCH_START_LIMIT BENCH_PROCESSES — see
# examples/bench_driver.rs. Load goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-all}"
target_dir="${CARGO_TARGET_DIR:-target}"
export BENCH_TARGET="$target_dir/release"

command -v wrk >/dev/null || { echo "bench.sh: wrk not found (apt-get install wrk)" >&2; exit 1; }
if [[ "$scenario" == all || "$scenario" == ttfc ]] && [[ ! -x .venv/bin/python ]]; then
  echo "bench.sh: .venv missing; run scripts/setup-python.sh" >&2
  exit 1
fi

cargo build --release --locked --bin credvend --example bare_hyper --example bench_driver

# 1,000 concurrent connections in the herd need more than the common 1024 descriptors.
ulimit -n 8192 2>/dev/null || true

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uptime)"
"$BENCH_TARGET/examples/bench_driver" "$scenario"
echo "after: $(uptime)"

if [[ "${BENCH_MICRO:-0}" == 1 ]]; then
  cargo bench --locked --bench hot_path
fi
