#!/usr/bin/env bash
# Runs every test the way CI does (as root: the tests make loop-mounted
# btrfs file systems and run postgres as the instance user).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/setup-debian.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# --no-fail-fast: one run reports every failing test binary, not just the first.
cargo test --locked --all-targets --no-fail-fast
