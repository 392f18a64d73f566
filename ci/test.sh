#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs every test, the way CI does (.ci/run runs this):
#   1. the whole suite (unit, the real SoftHSM2 token, SQLite, the CLI, batch crash/resume, the
#      fleet plane with mosquitto, a token that fails on purpose), built with AddressSanitizer +
#      UndefinedBehaviorSanitizer + LeakSanitizer in ./build-asan (ci/sanitize.sh address), then
#      the token tests again on Debian's opencryptoki as a second PKCS#11 module;
#   2. the batch pipeline, token and auth tests under ThreadSanitizer in ./build-tsan
#      (ci/sanitize.sh thread);
#   3. every fuzz target's corpus, then each target fuzzed for FLEETSIGN_FUZZ_SECONDS (default 10)
#      (ci/fuzz.sh, ./build-fuzz).
# Any failing test, sanitizer report or fuzz finding fails the run. The steps run one after the
# other: building the later ones beside the suite (at nice 19) made its tests about 1.8× slower
# on a 2-core machine, which cost more than it saved.
#   bash ci/test.sh -L unit        extra arguments narrow step 1's ctest, and skip steps 2 and 3
#   FLEETSIGN_PLAIN=1              step 1 on the plain optimised build (./build, ci/build.sh), no
#                                  sanitizers: quicker to build, and the tests that cannot run
#                                  sanitized (valgrind, ulimit -v, the writer's task suspension)
#                                  run too
#   FLEETSIGN_SKIP_OPENCRYPTOKI=1  leaves out the opencryptoki run (ci/ctest.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/install-deps.sh
bash ci/format-check.sh
if [[ ${FLEETSIGN_PLAIN:-0} == 1 ]]; then
  bash ci/build.sh
  bash ci/ctest.sh build "$@"
else
  bash ci/sanitize.sh address "$@"
fi
echo "ci/test.sh: suite passed after $(($(date +%s) - start)) s"
(($# == 0)) || exit 0
bash ci/sanitize.sh thread
echo "ci/test.sh: ThreadSanitizer run passed after $(($(date +%s) - start)) s"
bash ci/fuzz.sh "${FLEETSIGN_FUZZ_SECONDS:-10}"
echo "ci/test.sh: everything passed in $(($(date +%s) - start)) s"
