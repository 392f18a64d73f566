#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs every test, the way CI does (.ci/run runs this):
#   1. the whole suite (unit, the real SoftHSM2 token, SQLite, the CLI, batch crash/resume, the
#      fleet plane with mosquitto, a token that fails on purpose), built with AddressSanitizer +
#      UndefinedBehaviorSanitizer + LeakSanitizer in ./build-asan (ci/sanitize.sh address), then
#      the token tests again on Debian's opencryptoki as a second PKCS#11 module;
#   2. the batch pipeline, token and auth tests under ThreadSanitizer in ./build-tsan
#      (ci/sanitize.sh thread);
#   3. every fuzz target's corpus, then each target fuzzed for FLEETSIGN_FUZZ_SECONDS (default 15)
#      (ci/fuzz.sh, ./build-fuzz).
# Steps 2 and 3 are built while step 1's tests run, at the lowest CPU priority: the tests wait on
# sockets, timers and child processes about a third of the time, and the builds take that idle
# CPU (about 5 minutes saved on a 2-core machine). Any failing test, sanitizer report or fuzz
# finding fails the run.
#   bash ci/test.sh -L unit        extra arguments narrow step 1's ctest, and skip steps 2 and 3
#   FLEETSIGN_PLAIN=1              step 1 on the plain optimised build (./build, ci/build.sh), no
#                                  sanitizers: quicker to build, and the two tests that cannot run
#                                  sanitized (valgrind, ulimit -v) run too
#   FLEETSIGN_SKIP_OPENCRYPTOKI=1  leaves out the opencryptoki run (ci/ctest.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash ci/install-deps.sh
bash ci/format-check.sh
if [[ ${FLEETSIGN_PLAIN:-0} == 1 ]]; then
  bash ci/build.sh
else
  FLEETSIGN_BUILD_ONLY=1 bash ci/sanitize.sh address
fi
echo "ci/test.sh: built after $(($(date +%s) - start)) s"

background=0
if (($# == 0)); then
  mkdir -p build-logs
  # Its own process group (setsid), so that a failing suite stops the builds too.
  setsid nice -n 19 bash -c 'FLEETSIGN_BUILD_ONLY=1 bash ci/sanitize.sh thread &&
    FLEETSIGN_BUILD_ONLY=1 bash ci/fuzz.sh' >build-logs/background-builds.log 2>&1 &
  background=$!
  trap 'kill -- -$background 2>/dev/null || true' EXIT
fi
if [[ ${FLEETSIGN_PLAIN:-0} == 1 ]]; then
  bash ci/ctest.sh build "$@"
else
  bash ci/sanitize.sh address "$@"
fi
echo "ci/test.sh: suite passed after $(($(date +%s) - start)) s"
(($# == 0)) || exit 0

if ! wait "$background"; then
  echo "ci/test.sh: building the ThreadSanitizer or fuzz targets failed:" >&2
  tail -50 build-logs/background-builds.log >&2
  exit 1
fi
trap - EXIT
echo "ci/test.sh: ThreadSanitizer and fuzz targets built beside the suite (build-logs/background-builds.log)"
bash ci/sanitize.sh thread
bash ci/fuzz.sh "${FLEETSIGN_FUZZ_SECONDS:-15}"
echo "ci/test.sh: everything passed in $(($(date +%s) - start)) s"
