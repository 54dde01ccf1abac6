#!/usr/bin/env bash
# Instructions per operation of the local post path, counted by callgrind.
#
# Usage: scripts/instr.sh [SCENARIO...]     (default: every evbus and tokio scenario of examples/instr.rs)
#        INSTR_N=1000000 scripts/instr.sh   (operations per measured run; default 100000)
#        scripts/instr.sh churn_forward churn_reverse churn_random churn_sessions
#                                           (registration churn on one channel, not run by default:
#                                           one operation is one listener added and removed)
#
# Builds examples/instr.rs in release, runs each scenario under valgrind's callgrind twice,
# with N = 0 (setup and teardown only) and with N operations, and prints
# (count(N) - count(0)) / N. Instruction counts do not depend on the machine's load, so two
# runs of the same build agree (to within an instruction per operation, whatever the
# allocator or the environment shifts), and two builds can be compared on a noisy machine.
# Needs valgrind (Debian's `valgrind` package).
set -euo pipefail

cd "$(dirname "$0")/.."
n="${INSTR_N:-100000}"
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(handle name listeners16 stream streams16 tokio_broadcast16 tokio_stream)
fi

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind not found: install it (Debian: apt-get install valgrind)" >&2
    exit 1
fi
case "$n" in
'' | *[!0-9]* | 0)
    echo "INSTR_N must be a positive integer, not '$n'" >&2
    exit 1
    ;;
esac

cargo build --quiet --release --example instr
target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/release/examples/instr"

# The total instruction count of one run: callgrind's "Collected : <count>" line.
count() {
    local out
    out="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 >/dev/null)" || {
        printf '%s\n' "$out" | grep -v '^==[0-9]*==' >&2
        echo "instr $1 $2 failed under valgrind" >&2
        exit 1
    }
    printf '%s\n' "$out" | sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p'
}

printf '%-20s %16s\n' scenario instructions/op
for scenario in "${scenarios[@]}"; do
    base="$(count "$scenario" 0)"
    total="$(count "$scenario" "$n")"
    if [ -z "$base" ] || [ -z "$total" ]; then
        echo "no instruction count in callgrind's output for $scenario" >&2
        exit 1
    fi
    awk -v s="$scenario" -v a="$base" -v b="$total" -v n="$n" \
        'BEGIN { printf "%-20s %16.1f\n", s, (b - a) / n }'
done
