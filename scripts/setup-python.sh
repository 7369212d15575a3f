#!/usr/bin/env bash
# Create or update <repo>/.venv with the pinned Python tooling (moto, boto3, AWS CLI v1,
# the Kubernetes client, cfn-lint, python-hcl2) from scripts/python-requirements.txt,
# and <repo>/.venv/checkov, a venv of its own for checkov, from
# scripts/python-requirements-checkov.txt (checkov's pins conflict with moto's; that
# file says which).
#
# Idempotent: a stamp file inside each venv records a hash of its requirement lines
# (comments ignored) and of the interpreter version; when both match and the venv
# still imports its packages, nothing is installed. Otherwise that venv is rebuilt
# from scratch (rebuilding the main one removes the checkov one inside it too).
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
checkov_venv="$venv/checkov"
checkov_requirements="$repo_root/scripts/python-requirements-checkov.txt"
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

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# ensure_venv DIR REQUIREMENTS IMPORTS: build DIR from REQUIREMENTS unless its stamp
# matches and `import IMPORTS` works in it.
ensure_venv() {
  local venv="$1" requirements="$2" imports="$3"
  local stamp="$venv/.credvend-requirements.stamp"
  [[ -f "$requirements" ]] || die "missing $requirements"
  local want_stamp
  want_stamp="$(
    {
      grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$requirements"
      "$python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
  )"

  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] \
    && "$venv/bin/python" -c "import $imports" >/dev/null 2>&1; then
    log "$venv is up to date"
    return 0
  fi

  if [[ -e "$venv" ]]; then
    log "rebuilding $venv (requirements or interpreter changed, or venv broken)"
    rm -rf "$venv"
  fi

  log "creating $venv with $("$python" -V 2>&1)"
  "$python" -m venv "$venv"
  log "installing pinned packages from $(basename "$requirements") (about a minute on a cold cache)"
  "$venv/bin/python" -m pip install --quiet --requirement "$requirements"
  "$venv/bin/python" -c "import $imports" \
    || die "packages installed but 'import $imports' fails in $venv"
  printf '%s\n' "$want_stamp" >"$stamp"
}

ensure_venv "$venv" "$requirements" 'boto3, moto, awscli, kubernetes, cfnlint, hcl2'
[[ -x "$venv/bin/moto_server" && -x "$venv/bin/aws" && -x "$venv/bin/cfn-lint" ]] \
  || die "moto_server, aws or cfn-lint missing from $venv/bin after install"
log "ready: $("$venv/bin/aws" --version 2>&1)"

ensure_venv "$checkov_venv" "$checkov_requirements" 'checkov'
[[ -x "$checkov_venv/bin/checkov" ]] || die "checkov missing from $checkov_venv/bin after install"
log "ready: checkov $("$checkov_venv/bin/checkov" --version 2>&1)"
