#!/usr/bin/env bash
# Install the JavaScript SDK v3 clients of the conformance suite (tests/compat/) into
# the ignored tests/compat/js/node_modules, exactly as pinned by
# tests/compat/js/package.json and its committed package-lock.json (`npm ci`).
#
# Idempotent: a stamp inside node_modules records a hash of package-lock.json and of
# the Node version; when both match, nothing is installed.
#
# Needs Node.js 18+ and npm. On a Debian machine without them, nodejs and npm are
# installed with apt-get (needs root). Any failure exits non-zero: the suite must not
# run (and pass) without its clients.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
js_dir="$repo_root/tests/compat/js"
stamp="$js_dir/node_modules/.credvend-lock.stamp"

log() { printf 'setup-node: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$js_dir/package-lock.json" ]] || die "missing $js_dir/package-lock.json"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]] \
    || die "node and npm are required (Debian: apt-get install nodejs npm, as root)"
  log "installing nodejs and npm with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null || die "apt-get install nodejs npm failed"
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || die "node $(node --version) is too old; the pinned AWS SDK needs Node.js 18 or newer"

want_stamp="$({ cat "$js_dir/package-lock.json"; node --version; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]]; then
  log "$js_dir/node_modules is up to date"
  exit 0
fi

log "npm ci in $js_dir (node $(node --version), npm $(npm --version))"
(cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
(cd "$js_dir" && node -e 'require.resolve("@aws-sdk/client-sts"); require.resolve("@aws-sdk/credential-providers")') \
  || die "npm ci finished but the AWS SDK packages do not resolve"
printf '%s\n' "$want_stamp" >"$stamp"
log "ready"
