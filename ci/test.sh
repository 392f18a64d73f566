#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs every test, the way CI does:
#   1. the whole suite (unit, the real SoftHSM2 token, SQLite, the CLI, batch crash/resume, the
#      fleet plane with mosquitto, a token that fails on purpose) in ./build, then the token tests
#      on Debian's opencryptoki as a second PKCS#11 module;
#   2. every fuzz target's corpus, then each target fuzzed for FLEETSIGN_FUZZ_SECONDS (default 15)
#      (ci/fuzz.sh, build-fuzz);
#   3. with FLEETSIGN_SANITIZERS=1, the whole suite again under AddressSanitizer + UBSan +
#      LeakSanitizer and the pipeline, token and auth tests under ThreadSanitizer (ci/sanitize.sh;
#      not yet part of CI: see README "Sanitizers").
# Any failing test, fuzz finding or sanitizer report fails the run. Extra arguments go to step 1's
# ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/install-deps.sh
bash ci/format-check.sh
bash ci/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@")
# The token and CA tests again against a second PKCS#11 implementation, Debian's opencryptoki
# soft token (RSA only), so that "any PKCS#11 module" stays true. FLEETSIGN_SKIP_OPENCRYPTOKI=1
# leaves it out (e.g. on a developer machine whose opencryptoki token is in use).
if [[ ${FLEETSIGN_SKIP_OPENCRYPTOKI:-0} != 1 ]]; then
  ock_dir=$(mktemp -d)
  bash ci/opencryptoki.sh "$ock_dir"
  (set -a && . "$ock_dir/env" && set +a && cd build &&
    ctest --output-on-failure --timeout 900 -L opencryptoki)
fi
echo "ci/test.sh: suite passed after $(($(date +%s) - start)) s"
bash ci/fuzz.sh "${FLEETSIGN_FUZZ_SECONDS:-15}"
if [[ ${FLEETSIGN_SANITIZERS:-0} == 1 ]]; then
  FLEETSIGN_SKIP_OPENCRYPTOKI=1 bash ci/sanitize.sh address
  bash ci/sanitize.sh thread
fi
echo "ci/test.sh: everything passed in $(($(date +%s) - start)) s"
