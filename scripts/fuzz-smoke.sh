#!/usr/bin/env bash
# Fuzz regression smoke run (fuzz/README.md): builds the cargo-fuzz targets in fuzz/
# and runs each one over its committed seed corpus (fuzz/seeds/<target>) plus a short
# bounded fuzzing burst. Any crash, leak or timeout fails the script.
#
#   scripts/fuzz-smoke.sh            # 10 s per target
#   FUZZ_SECONDS=0 scripts/fuzz-smoke.sh   # replay the seeds only
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The stable toolchain is enough:
# RUSTC_BOOTSTRAP=1 lets it accept the sanitizer flags cargo-fuzz passes. New inputs
# go to a temporary directory; the committed seeds are never modified. Long runs: see
# fuzz/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-10}"
targets=(http_request config_load access_checks)
declare -A dicts=([http_request]=fuzz/http.dict [config_load]=fuzz/config.dict)

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not installed: cargo install cargo-fuzz" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build
# Run the built binaries directly: `cargo fuzz run` passes different build settings
# and would rebuild the whole instrumented dependency tree.
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    args=(-rss_limit_mb=2048 -timeout=10 -artifact_prefix="$scratch/$target-")
    if [[ -n "${dicts[$target]:-}" ]]; then args+=(-dict="${dicts[$target]}"); fi
    if [[ "$seconds" == 0 ]]; then
        args+=(-runs=0)
    else
        args+=(-max_total_time="$seconds")
    fi
    echo "== $target"
    "$bin_dir/$target" "${args[@]}" "$scratch/$target" "fuzz/seeds/$target" 2>&1 \
        | grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done|==[0-9]+==|SUMMARY|panicked|thread)' || true
    # grep hides libFuzzer's progress lines; the pipeline status is the fuzzer's.
    [[ "${PIPESTATUS[0]}" == 0 ]] || { echo "fuzz target $target failed" >&2; exit 1; }
done
echo "fuzz smoke: all targets passed"
