#!/usr/bin/env bash
# credvend end to end on this machine, against the moto STS emulator:
#
#   1. sets up .venv (moto, AWS CLI) and builds credvend (debug profile: it shares the
#      build with scripts/test.sh and the demo does not need an optimised binary);
#   2. starts moto and `credvend serve` on 127.0.0.1 with a private copy (mode 0600) of
#      config/demo.toml in .tools/demo/, and dummy base credentials (moto accepts any);
#   3. runs `aws sts get-caller-identity` with nothing but the container-credentials
#      variables, as a sync worker would, and expects the demo role's assumed-role ARN;
#   4. shows the raw credential response (secret and session token redacted);
#   5. stops everything, on success and on failure, and fails if the run changed the
#      working tree (scripts/tree-state.sh): it writes only into .venv/, target/ and
#      .tools/demo/.
#
# Environment:
#   DEMO_CREDVEND_BIN   use this credvend binary instead of building one
#
# Logs of the last run stay in .tools/demo/.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

config="config/demo.toml"
# Must match config/demo.toml: the token whose SHA-256 is the mapping's token_sha256.
demo_token="credvend-demo-token-do-not-use-in-production-4f1c9a7e"
mapping="demo-s3"
expected_arn="arn:aws:sts::111122223333:assumed-role/demo-sync/credvend-demo-s3"
default_listen_port=8911
default_admin_port=8912
ready_timeout_s=30

venv="$repo_root/.venv"
run_dir="$repo_root/.tools/demo"
credvend_log="$run_dir/credvend.log"
credvend_pid=""
tree_state=""

if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
fail() {
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  local status=$?
  if [[ -n "$credvend_pid" ]] && kill -0 "$credvend_pid" 2>/dev/null; then
    kill -TERM "$credvend_pid" 2>/dev/null || true
    wait "$credvend_pid" 2>/dev/null || true
  fi
  MOTO_STATE_DIR="$run_dir/moto" scripts/moto.sh stop 2>/dev/null || true
  [[ -z "$tree_state" ]] || rm -f "$tree_state"
  if ((status != 0)) && [[ -s "$credvend_log" ]]; then
    printf '\n--- last lines of %s ---\n' "$credvend_log" >&2
    tail -n 40 "$credvend_log" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v curl >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" -ne 0 ]]; then
    fail "curl is required (Debian: apt-get install curl)"
  fi
  say "Installing curl (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
[[ -f "$config" ]] || fail "$config is missing"
tree_state="$(mktemp "${TMPDIR:-/tmp}/credvend-tree-state.XXXXXX")"
scripts/tree-state.sh save "$tree_state"

# --- set up ---------------------------------------------------------------------

say "Python tooling (.venv)"
scripts/setup-python.sh

if [[ -n "${DEMO_CREDVEND_BIN:-}" ]]; then
  credvend_bin="$DEMO_CREDVEND_BIN"
else
  say "Building credvend (cargo build, debug profile)"
  command -v cargo >/dev/null 2>&1 || fail "cargo not found; install a Rust toolchain"
  credvend_bin="$(
    cargo build --bin credvend --message-format=json-render-diagnostics |
      "$venv/bin/python" -c '
import json, sys
paths = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m.get("executable")
         and m["target"]["name"] == "credvend"]
print(paths[-1] if paths else "")'
  )" || fail "cargo build failed"
fi
[[ -x "$credvend_bin" ]] || fail "no credvend binary at '${credvend_bin}'"

rm -rf "$run_dir"
mkdir -p "$run_dir"

# The demo ports, or free ones when those are taken.
port_or_free() {
  "$venv/bin/python" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}
listen_port="$(port_or_free "$default_listen_port")"
admin_port="$(port_or_free "$default_admin_port")"
[[ "$listen_port" != "$admin_port" ]] || admin_port="$(port_or_free 0)"

# --- run ------------------------------------------------------------------------

say "Starting moto (STS emulator) on loopback"
moto_url="$(MOTO_STATE_DIR="$run_dir/moto" scripts/moto.sh start)"
echo "moto: $moto_url"

# credvend warns about config files readable by others (they may hold External IDs),
# and git does not keep a file's mode: serve a private copy rather than chmod the
# committed file.
served_config="$run_dir/demo.toml"
install -m 0600 "$config" "$served_config"
say "Starting credvend serve --config $served_config (a copy of $config)"
# Only what credvend needs: dummy base credentials for moto, no profile files, no
# instance metadata, and the port overrides.
env -i \
  PATH="$PATH" HOME="$run_dir" LANG=C.UTF-8 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  CREDVEND_SERVER__LISTEN="[\"127.0.0.1:$listen_port\"]" \
  CREDVEND_SERVER__ADMIN_LISTEN="127.0.0.1:$admin_port" \
  CREDVEND_STS__ENDPOINT_URLS__us-east-1="$moto_url" \
  "$credvend_bin" serve --config "$served_config" >"$credvend_log" 2>&1 &
credvend_pid=$!
echo "credvend: pid $credvend_pid, credentials on 127.0.0.1:$listen_port, admin on 127.0.0.1:$admin_port"
echo "credvend log: $credvend_log"

deadline=$((SECONDS + ready_timeout_s))
until curl --silent --fail --max-time 2 --output /dev/null "http://127.0.0.1:$admin_port/readyz"; do
  kill -0 "$credvend_pid" 2>/dev/null || fail "credvend exited during start-up"
  ((SECONDS < deadline)) || fail "credvend not ready on http://127.0.0.1:$admin_port/readyz after ${ready_timeout_s}s"
  sleep 0.2
done
echo "credvend: /readyz answered 200"

credentials_uri="http://127.0.0.1:$listen_port/v1/credentials/$mapping"

say "A worker's view: aws sts get-caller-identity with only the container-credentials variables"
cat <<EOF
  AWS_CONTAINER_CREDENTIALS_FULL_URI=$credentials_uri
  AWS_CONTAINER_AUTHORIZATION_TOKEN=<demo token>
  aws --endpoint-url $moto_url sts get-caller-identity
EOF
identity="$(
  env -i \
    PATH="$PATH" HOME="$run_dir" LANG=C.UTF-8 \
    AWS_CONTAINER_CREDENTIALS_FULL_URI="$credentials_uri" \
    AWS_CONTAINER_AUTHORIZATION_TOKEN="$demo_token" \
    AWS_DEFAULT_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    "$venv/bin/aws" --endpoint-url "$moto_url" sts get-caller-identity --output json
)" || fail "aws sts get-caller-identity failed (see its error above)"
printf '%s\n' "$identity"
arn="$("$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["Arn"])' <<<"$identity")"
[[ "$arn" == "$expected_arn" ]] || fail "expected Arn $expected_arn, got $arn"

say "The raw credential response (curl; secret and session token redacted)"
echo "  curl -i -H 'Authorization: <demo token>' $credentials_uri"
raw="$(curl --silent --show-error --include --max-time 5 \
  -H "Authorization: $demo_token" "$credentials_uri")" || fail "curl $credentials_uri failed"
"$venv/bin/python" -c '
import json, sys
raw = sys.stdin.read()
head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
print(head)
print()
try:
    creds = json.loads(body)
except ValueError:
    print("(body is not JSON; not shown)")
    sys.exit(1)
for key in ("SecretAccessKey", "Token"):
    if key in creds:
        creds[key] = f"<redacted, {len(creds[key])} chars>"
print(json.dumps(creds, indent=2))
' <<<"$raw" || fail "the credential response is not JSON"

say "What moto received"
curl --silent --fail --max-time 5 "$moto_url/moto-api/data.json" |
  "$venv/bin/python" -c '
import json, sys
calls = json.load(sys.stdin).get("sts", {}).get("AssumedRole", [])
print(f"{len(calls)} AssumeRole call(s)")
for call in calls:
    external_id = "sent" if call["external_id"] else "MISSING"
    print("  role", call["role_arn"], "| session", call["session_name"],
          "| External ID", external_id)
' || fail "could not read moto's call log"

say "credvend's log (one audit line per vend)"
cat "$credvend_log"

say "Stopping credvend (SIGTERM)"
kill -TERM "$credvend_pid"
credvend_status=0
wait "$credvend_pid" || credvend_status=$?
credvend_pid=""
((credvend_status == 0)) || fail "credvend exited with status $credvend_status on SIGTERM"
echo "credvend exited 0"

scripts/tree-state.sh check "$tree_state" || fail "the demo changed the working tree"

say "Demo succeeded: the worker ran as $arn"
