#!/usr/bin/env bash
# Load and soak run (docs/soak.md; NOT part of CI): the release credvend binary
# against the in-repo fake STS for 10 minutes under continuous client load, with
# credentials living ~2 minutes (refreshed at half-life), a SIGHUP reload every 20 s
# (one in five deliberately invalid) and a 90 s STS outage starting at 4 minutes.
# Prints a Markdown report (requests, non-200 inside/outside the outage window, STS
# calls, peak RSS) and exits non-zero if any request outside the outage window failed.
#
#   scripts/soak.sh                       # the full 10-minute run
#   scripts/soak.sh --duration 120 --outage-start 40 --outage-length 30   # quick check
#
# Extra arguments go to the driver (examples/soak.rs; `--help` lists them).
# Everything listens on 127.0.0.1 only; the driver stops itself after --duration.
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release --bin credvend --example soak
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/examples/soak" --credvend "$target_dir/release/credvend" "$@"
