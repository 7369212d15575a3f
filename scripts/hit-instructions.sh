#!/usr/bin/env bash
# User-space instructions per cache hit (docs/performance.md, "The cache hit's own cost"):
# runs examples/bare_hyper and credvend (and BENCH_BASELINE, another credvend binary, if
# set) under valgrind's callgrind, sends wrk load (one thread, 32 connections, log level
# `warn`) for a few seconds after a warm-up, and prints the instructions executed in that
# window over the requests served. Deterministic where the CPU-time ratio of
# `scripts/bench.sh throughput` is noisy: the same build gives the same count to ~1 %.
#
# SHA-256 (the token check) is shown and subtracted: under valgrind `sha2` runs its
# software rounds, natively it uses the CPU's SHA extensions.
#
#   scripts/hit-instructions.sh            # release binaries of this tree
#   BENCH_BASELINE=/path/to/credvend scripts/hit-instructions.sh
#
# Needs: valgrind, wrk, the venv's moto_server (scripts/setup-python.sh) for the first
# AssumeRole. Knobs: HIT_SECONDS (wrk seconds, default 5), HIT_RUNS (windows per server,
# default 2). Load goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target_dir="${CARGO_TARGET_DIR:-target}"
seconds="${HIT_SECONDS:-5}"
runs="${HIT_RUNS:-2}"
for tool in valgrind callgrind_control callgrind_annotate wrk; do
  command -v "$tool" >/dev/null || { echo "hit-instructions.sh: $tool not found" >&2; exit 1; }
done
[[ -x .venv/bin/moto_server ]] || { echo "hit-instructions.sh: .venv missing; run scripts/setup-python.sh" >&2; exit 1; }
if [[ "${HIT_NO_BUILD:-0}" != 1 ]]; then
  cargo build --release --locked --bin credvend --example bare_hyper
fi

work=$(mktemp -d)
chmod 700 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${HIT_KEEP:-}" ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "hit-instructions.sh: nothing listening on $1" >&2
  exit 1
}

sts_port=$(port)
env -i PATH="$PATH" HOME="$work" .venv/bin/moto_server -H 127.0.0.1 -p "$sts_port" >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$sts_port"

token=hit-instructions-token-0123456789abcdef
token_sha=$(printf %s "$token" | sha256sum | cut -d' ' -f1)

# Starts binary $2 (label $1) under callgrind; sets `listen` and `server_pid`.
start_server() {
  local label=$1 binary=$2
  listen=$(port)
  local out="$work/callgrind.$label"
  if [[ $label == bare ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$binary" "127.0.0.1:$listen" "$work/body.json" >"$work/$label.log" 2>&1 &
  else
    local admin
    admin=$(port)
    cat >"$work/$label.toml" <<EOF
[server]
listen = ["127.0.0.1:$listen"]
admin_listen = "127.0.0.1:$admin"

[log]
level = "warn"

[sts]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:$sts_port"

[verify]
external_id_enforcement = "off"

[mappings.hot]
role_arn = "arn:aws:iam::123456789012:role/hot"
external_id = "hit-instructions-external-id"
token_sha256 = ["$token_sha"]
prefetch = true
EOF
    chmod 600 "$work/$label.toml"
    env -i PATH="$PATH" AWS_ACCESS_KEY_ID=AKIAVENDORBASE000000 AWS_SECRET_ACCESS_KEY=vendor-base-secret \
      AWS_EC2_METADATA_DISABLED=true \
      valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$binary" serve --config "$work/$label.toml" >"$work/$label.log" 2>&1 &
  fi
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$listen"
}

# Instructions (Ir) in callgrind dump $1, and those under sha2's compression.
dump_totals() {
  local file=$1 total sha
  total=$(grep -m1 '^totals:' "$file" | awk '{print $2}')
  sha=$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null \
    | grep -E 'sha2::sha256::compress256 ' \
    | head -1 | awk '{gsub(",","",$1); print $1}' || true)
  echo "$total ${sha:-0}"
}

measure() {
  local label=$1 binary=$2
  start_server "$label" "$binary"
  local url="http://127.0.0.1:$listen/v1/credentials/hot"
  # Warm-up: the first credential (credvend), code paths, connection set-up.
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $token" "$url" || true)
    [[ $code == 200 ]] && break
    sleep 0.2
  done
  [[ $code == 200 ]] || { echo "hit-instructions.sh: $label answered $code" >&2; cat "$work/$label.log" >&2; exit 1; }
  # The bare server sends the very bytes credvend sent.
  [[ -s "$work/body.json" ]] || curl -s -o "$work/body.json" -H "Authorization: $token" "$url"
  wrk -t1 -c32 -d2s -H "Authorization: $token" "$url" >/dev/null
  for run in $(seq 1 "$runs"); do
    callgrind_control -z "$server_pid" >/dev/null 2>&1
    local requests
    requests=$(wrk -t1 -c32 -d"${seconds}s" --timeout 10s -H "Authorization: $token" "$url" \
      | awk '/requests in/ {print $1}')
    callgrind_control -d "hit-$run" "$server_pid" >/dev/null 2>&1
    sleep 0.5
    local file
    file=$(ls -t "$work/callgrind.$label".* | head -1)
    read -r total sha < <(dump_totals "$file")
    awk -v l="$label" -v r="$run" -v n="$requests" -v t="$total" -v s="$sha" 'BEGIN {
      printf "  %-9s window %d: %7d requests  %8.0f instructions/request  (SHA-256 %5.0f; without it %8.0f)\n",
        l, r, n, t / n, s / n, (t - s) / n }'
  done
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
}

echo "callgrind, wrk -t1 -c32 ${seconds}s windows, log level warn (load $(cut -d' ' -f1-3 /proc/loadavg))"
measure credvend "$target_dir/release/credvend"
if [[ -n "${BENCH_BASELINE:-}" ]]; then
  measure baseline "$BENCH_BASELINE"
fi
measure bare "$target_dir/release/examples/bare_hyper"
