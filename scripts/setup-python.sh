#!/usr/bin/env bash
# Create or update <repo>/.venv with the pinned Python tooling (moto, boto3, AWS CLI v1,
# the Kubernetes client) from scripts/python-requirements.txt.
#
# Idempotent: a stamp file inside the venv records a hash of the requirement lines
# (comments ignored) and of the interpreter version; when both match and the venv
# still imports its packages, nothing is installed. Otherwise the venv is rebuilt
# from scratch.
#
# Environment:
#   PYTHON   interpreter to build the venv from (default: python3; needs 3.11+, which the
#            pinned set requires: networkx, pulled in by moto[server], needs 3.11)
#
# On a Debian machine whose python3 lacks the venv module, python3-venv is installed
# with apt-get (needs root). Nothing is installed outside .venv otherwise.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
requirements="$repo_root/scripts/python-requirements.txt"
stamp="$venv/.credvend-requirements.stamp"
python="${PYTHON:-python3}"

log() { printf 'setup-python: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$python" >/dev/null 2>&1 \
  || die "'$python' not found; install Python 3.11 (Debian: apt-get install python3) or set PYTHON"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "'$python' is $("$python" -V 2>&1); Python 3.11 or newer is required (set PYTHON)"
[[ -f "$requirements" ]] || die "missing $requirements"

# Debian splits venv/ensurepip out of the python3 package.
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 \
    || die "'$python' has no venv/ensurepip module and apt-get is unavailable; install the venv module for it"
  [[ "$(id -u)" -eq 0 ]] \
    || die "'$python' has no venv/ensurepip module; run 'apt-get install python3-venv' as root"
  py_minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  log "installing python3-venv with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3-venv "python${py_minor}-venv" >/dev/null \
    || apt-get install -y -qq python3-venv >/dev/null
  "$python" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "python3-venv installed but '$python' still lacks the venv module"
fi

want_stamp="$(
  {
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$requirements"
    "$python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] \
  && "$venv/bin/python" -c 'import boto3, moto, awscli, kubernetes' >/dev/null 2>&1; then
  log "$venv is up to date"
  exit 0
fi

if [[ -e "$venv" ]]; then
  log "rebuilding $venv (requirements or interpreter changed, or venv broken)"
  rm -rf "$venv"
fi

log "creating $venv with $("$python" -V 2>&1)"
"$python" -m venv "$venv"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log "installing pinned packages (about a minute on a cold cache)"
"$venv/bin/python" -m pip install --quiet --requirement "$requirements"
"$venv/bin/python" -c 'import boto3, moto, awscli, kubernetes' \
  || die "packages installed but 'import boto3, moto, awscli, kubernetes' fails"
[[ -x "$venv/bin/moto_server" && -x "$venv/bin/aws" ]] \
  || die "moto_server or aws missing from $venv/bin after install"

printf '%s\n' "$want_stamp" >"$stamp"
log "ready: $("$venv/bin/aws" --version 2>&1)"
