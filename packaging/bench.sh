#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md as root: all of them, or the ones
# named (instances, upload, finalise, density, masking, refresh). Each sets up and tears down
# its own btrfs loop mount, SSH servers and daemon, prints a table
# (baseline, Draupnir, ratio, target) and writes docs/bench/NAME.{txt,json,svg}.
#
#   bash packaging/bench.sh                 # everything (about 15 minutes)
#   bash packaging/bench.sh instances       # one
#   DRAUPNIR_BENCH_ROUNDS=5 bash packaging/bench.sh upload   # fewer rounds
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-}" != 1 ]; then
    bash packaging/setup-debian.sh
fi
if [ $# -eq 0 ]; then
    cargo bench --locked --benches
else
    for b in "$@"; do
        cargo bench --locked --bench "$b"
    done
fi
