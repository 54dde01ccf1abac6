#!/usr/bin/env bash
# A short run of every fuzz target: enough to catch a target that no longer builds, or a
# regression the fuzzer finds within seconds. Longer runs: `cargo +nightly fuzz run TARGET`.
#   usage: fuzz/smoke.sh [seconds per target, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."   # cargo fuzz runs from the project root
seconds="${1:-20}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz smoke: no nightly toolchain, skipped" >&2
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
targets=$(cargo +nightly fuzz list)   # an assignment, so that `set -e` sees a failure
if [ -z "$targets" ]; then
    echo "fuzz smoke: no fuzz targets found" >&2
    exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $targets; do
    echo "fuzz smoke: $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz smoke: $target FAILED (the input is saved under fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units' "$log" || true
done
