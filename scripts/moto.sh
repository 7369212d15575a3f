#!/usr/bin/env bash
# Start and stop a moto server (the AWS emulator; credvend uses its STS) on loopback.
#
#   scripts/moto.sh start [PORT]   start moto on 127.0.0.1:PORT (default: a free port),
#                                  wait until it answers, print its URL on stdout
#   scripts/moto.sh stop           stop the moto started from the same state directory
#   scripts/moto.sh url            print the URL of the running moto (exit 1 if none)
#
# State (PID, port, log) lives in $MOTO_STATE_DIR (default <repo>/.tools/moto), so
# callers that want a private moto (scripts/demo.sh) pass their own directory and
# `trap '... stop' EXIT`. `start` while one is already running there prints its URL.
# Needs the venv from scripts/setup-python.sh (or TEST_VENV naming another one).
#
# moto behaviour credvend relies on (moto 5.2):
#   - STS AssumeRole succeeds for any role ARN and any base credentials;
#     GetCallerIdentity with the returned credentials answers the assumed-role ARN
#     arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION.
#   - GET /moto-api/data.json lists the STS calls it served under
#     .sts.AssumedRole[] (role_arn, external_id, session_name, access_key_id, ...).
#   - POST /moto-api/reset forgets all state.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TEST_VENV:-$repo_root/.venv}"
state_dir="${MOTO_STATE_DIR:-$repo_root/.tools/moto}"
pid_file="$state_dir/moto.pid"
port_file="$state_dir/moto.port"
log_file="$state_dir/moto.log"
start_timeout_s=30

log() { printf 'moto.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The PID in the state directory, if that process is still a moto server.
running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # Guard against a recycled PID: the process must still be moto_server.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server || return 1
  printf '%s\n' "$pid"
}

free_port() {
  "$venv/bin/python" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

answers() {
  curl --silent --fail --max-time 2 --output /dev/null "http://127.0.0.1:$1/moto-api/" 2>/dev/null
}

cmd_start() {
  local requested_port="${1:-}" pid port attempt deadline
  [[ -x "$venv/bin/moto_server" ]] \
    || die "$venv/bin/moto_server not found; run scripts/setup-python.sh first"
  command -v curl >/dev/null 2>&1 || die "curl is required"
  mkdir -p "$state_dir"

  if pid="$(running_pid)"; then
    port="$(cat "$port_file")"
    log "already running (pid $pid)"
    printf 'http://127.0.0.1:%s\n' "$port"
    return 0
  fi

  # A free port can be taken between probing and binding: try a few.
  for attempt in 1 2 3; do
    port="${requested_port:-$(free_port)}"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$pid_file"
    printf '%s\n' "$port" >"$port_file"

    deadline=$((SECONDS + start_timeout_s))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if answers "$port"; then
        log "started pid $pid on 127.0.0.1:$port (log: $log_file)"
        printf 'http://127.0.0.1:%s\n' "$port"
        return 0
      fi
      sleep 0.2
    done

    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      rm -f "$pid_file"
      die "moto did not answer on 127.0.0.1:$port within ${start_timeout_s}s; log: $log_file"
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    log "moto exited during start-up (attempt $attempt); last log lines:"
    tail -n 5 "$log_file" >&2 || true
    [[ -z "$requested_port" ]] || die "could not start moto on port $requested_port"
  done
  die "could not start moto; see $log_file"
}

cmd_stop() {
  local pid i
  if ! pid="$(running_pid)"; then
    rm -f "$pid_file" "$port_file"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 5s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file" "$port_file"
  log "stopped pid $pid"
}

cmd_url() {
  running_pid >/dev/null || die "no moto running from $state_dir"
  printf 'http://127.0.0.1:%s\n' "$(cat "$port_file")"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  *)
    printf 'usage: %s start [PORT] | stop | url\n' "$0" >&2
    exit 64
    ;;
esac
