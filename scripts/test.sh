#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration tests and the end-to-end
# test against the moto STS emulator. .ci/run calls this; so should you.
#
# Installs what the tests need by itself, into ignored folders or through rustup/apt:
#   - rustfmt and clippy (rustup component add, when missing)
#   - <repo>/.venv with moto, boto3, the AWS CLI, the Kubernetes client, cfn-lint and
#     python-hcl2, and <repo>/.venv/checkov with checkov (scripts/setup-python.sh),
#     which tests/e2e_moto.rs, tests/compat/, tests/kubernetes_manifests.rs and
#     tests/onboarding_templates.rs use
#   - the JS SDK v3 into tests/compat/js/node_modules (scripts/setup-node.sh) and Go plus
#     Debian's AWS SDK for Go v2 (scripts/setup-go.sh, apt-get) for tests/compat/
#
# Steps: fmt, clippy, rustdoc (broken or private doc links fail), a `cargo check` of
# the cargo-fuzz crate in fuzz/ (its own workspace, which nothing else builds; its
# seeds are replayed by tests/fuzz_seeds.rs),
# doctests, one pass of each criterion benchmark in test mode (proves the benches still
# build and run, and is not counted as tests), then the tests of the library, the
# binary, tests/ and examples/. Every step runs even when an earlier one failed, so one
# run reports everything; the exit status is non-zero if any step failed. Last, the
# tree-unchanged step fails when the run left the working tree different from how it
# found it (`git status` or a tracked file's mode; scripts/tree-state.sh): a run may
# write only into ignored folders (target/, .venv/, .tools/, node_modules/). Tests run with
# cargo-nextest when it is installed (profile `ci` in .config/nextest.toml: per-test
# timeout, no fail-fast), otherwise with `cargo test`. tests/compat fails when the
# committed client table (docs/compatibility.md) differs from its results;
# `UPDATE_COMPAT_TABLE=1 scripts/test.sh` rewrites it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 || die "cargo not found; install a Rust toolchain (rustup)"

# The tree as this run found it, local edits included; compared again at the end.
tree_state="$(mktemp "${TMPDIR:-/tmp}/credvend-tree-state.XXXXXX")"
trap 'rm -f "$tree_state"' EXIT
scripts/tree-state.sh save "$tree_state"

# --- prerequisites ----------------------------------------------------------------

ensure_component() {
  local cargo_subcommand="$1" component="$2"
  cargo "$cargo_subcommand" --version >/dev/null 2>&1 && return 0
  command -v rustup >/dev/null 2>&1 \
    || die "'cargo $cargo_subcommand' is missing and rustup is not available to add $component"
  log "installing rust component $component"
  rustup component add "$component" || die "rustup component add $component failed"
}

# Debian packages for tools the tests run: promtool (package prometheus) lints the
# metrics output and alert rules; systemd-analyze (package systemd) verifies the unit
# file and its exposure score.
ensure_debian_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  log "installing Debian packages: ${missing[*]}"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# Disk: a clean build of every test, example and bench target takes about 1.5 GB
# (2 GB with clippy's metadata). Say so up front rather than let the linker die with
# SIGBUS on a full disk halfway through.
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
mkdir -p "$target_dir"
free_kb="$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')"
log "disk: $((free_kb / 1024)) MiB free for $target_dir"
((free_kb > 3 * 1024 * 1024)) \
  || printf 'test.sh: warning: less than 3 GiB free; the build may run out of disk\n' >&2
# CI builds once from a clean clone: incremental state would only cost disk and time.
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

log "prerequisites"
ensure_component fmt rustfmt
ensure_component clippy clippy
ensure_debian_tools
scripts/setup-python.sh
scripts/setup-node.sh
scripts/setup-go.sh
# tests/e2e_moto.rs finds the venv at <repo>/.venv by itself (TEST_VENV overrides it).

# --- steps ------------------------------------------------------------------------

failed=()
run_step() {
  local name="$1"
  shift
  log "$name: $*"
  if ! "$@"; then
    failed+=("$name")
  fi
}

run_step fmt cargo fmt --all --check
run_step clippy cargo clippy --locked --all-targets -- -D warnings
# The library's API docs build without broken or private links (a module doc that
# names a moved or private item fails here, not in a reader's browser).
run_step rustdoc env RUSTDOCFLAGS="-D warnings" cargo doc --locked --lib --no-deps
# The fuzz targets are thin wrappers around fuzz/checks/*.rs, which the main crate's
# tests compile too; this catches drift in the wrappers, fuzz/Cargo.toml and
# fuzz/Cargo.lock (--locked: update it when the main crate's dependencies change, see
# fuzz/README.md). Into the main target dir, so there is one directory to cache and
# clean; a cold check of the fuzz crate's dependency tree costs about 1.5 CPU-minutes.
run_step fuzz-build cargo check --locked --manifest-path fuzz/Cargo.toml \
  --target-dir "$target_dir" --bins
# Doctests and the benchmark smoke run go before the tests so that the test summary
# closes the output (nextest does not run doctests at all).
run_step doctests cargo test --locked --doc
# benches/ (harness = false, criterion): `cargo test` runs each benchmark once, without
# measuring. `--bench '*'` selects only bench targets (`--benches` would also pick the
# library, whose tests the next step runs).
run_step bench-smoke cargo test --locked --bench '*'
# Every target but the benchmarks (examples hold no tests today; they are built in test
# mode so one that gains a #[test] is run).
test_targets=(--lib --bins --tests --examples)
if cargo nextest --version >/dev/null 2>&1; then
  run_step tests cargo nextest run --locked --profile ci --workspace "${test_targets[@]}"
else
  run_step tests cargo test --locked --workspace "${test_targets[@]}" --no-fail-fast
fi

# Nothing above may rewrite, add or chmod a file outside the ignored folders.
# UPDATE_COMPAT_TABLE=1 asks tests/compat to rewrite docs/compatibility.md, so the
# check would only report that.
if [[ "${UPDATE_COMPAT_TABLE:-}" == 1 ]]; then
  log "tree-unchanged: skipped (UPDATE_COMPAT_TABLE=1 rewrites docs/compatibility.md)"
else
  run_step tree-unchanged scripts/tree-state.sh check "$tree_state"
fi

if ((${#failed[@]} > 0)); then
  printf '\ntest.sh: FAILED steps: %s\n' "${failed[*]}" >&2
  exit 1
fi
