#!/usr/bin/env bash
# Install the Go SDK v2 client toolchain of the conformance suite (tests/compat/): Go and
# the AWS SDK for Go v2 source, both from Debian's packages at pinned versions. The
# suite (tests/compat/main.rs) builds tests/compat/go/src/credvendcompat in GOPATH mode
# against /usr/share/gocode, offline: nothing comes from the Go module proxy.
#
# Idempotent: nothing is installed when the pinned versions are already there. Needs
# root and apt-get when they are not. Any failure exits non-zero: the suite must not
# run (and pass) without its clients.
#
# Pins (Debian 12 "bookworm"): bump them together with the Go row of the client table in docs/compatibility.md.
set -euo pipefail

packages=(
  "golang-go=2:1.19~1"
  "golang-github-aws-aws-sdk-go-v2-dev=1.17.1-3"
)

log() { printf 'setup-go: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

installed_version() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null \
    | awk '$1 == "install" && $3 == "installed" { print $4 }'
}

missing=()
for pin in "${packages[@]}"; do
  name="${pin%%=*}"
  version="${pin#*=}"
  [[ "$(installed_version "$name")" == "$version" ]] || missing+=("$pin")
done

if ((${#missing[@]} > 0)); then
  command -v apt-get >/dev/null 2>&1 || die "apt-get is required to install ${missing[*]}"
  [[ "$(id -u)" -eq 0 ]] || die "run as root to install ${missing[*]} with apt-get"
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH after installing golang-go"
[[ -d /usr/share/gocode/src/github.com/aws/aws-sdk-go-v2/config ]] \
  || die "/usr/share/gocode lacks github.com/aws/aws-sdk-go-v2/config"
log "ready: $(go version), aws-sdk-go-v2 $(installed_version golang-github-aws-aws-sdk-go-v2-dev)"
