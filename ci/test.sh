#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs the whole test suite (unit, SoftHSM2 token, SQLite,
# CLI, batch and crash/resume tests). Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh
bash ci/format-check.sh
bash ci/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@"
