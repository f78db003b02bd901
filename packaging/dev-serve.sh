#!/usr/bin/env bash
# Newcomer's daemon: install what Draupnir needs, build it, and run it with
# config.toml.example (data on a 20G sparse btrfs file it makes itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/setup-debian.sh
cargo build --release
exec ./target/release/draupnir serve --config "${1:-config.toml.example}"
