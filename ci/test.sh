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
# The token and CA tests again against a second PKCS#11 implementation, Debian's opencryptoki
# soft token (RSA only), so that "any PKCS#11 module" stays true. FLEETSIGN_SKIP_OPENCRYPTOKI=1
# leaves it out (e.g. on a developer machine whose opencryptoki token is in use).
if [[ ${FLEETSIGN_SKIP_OPENCRYPTOKI:-0} != 1 ]]; then
  ock_dir=$(mktemp -d)
  bash ../ci/opencryptoki.sh "$ock_dir"
  (set -a && . "$ock_dir/env" && set +a && ctest --output-on-failure --timeout 900 -L opencryptoki)
fi
