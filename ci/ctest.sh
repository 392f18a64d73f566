#!/usr/bin/env bash
# Runs the suite in a build dir the way CI does: every test (or those the ctest arguments pick),
# one job per core, the longest first; then the token and CA tests again on a second PKCS#11
# implementation, Debian's opencryptoki soft token (RSA only), so that "any PKCS#11 module" stays
# true.
#   usage: ci/ctest.sh BUILD_DIR [CTEST ARGS…]
#   FLEETSIGN_TEST_JOBS=N           tests at once (default: nproc)
#   FLEETSIGN_SKIP_OPENCRYPTOKI=1   leaves out the opencryptoki run (e.g. on a developer machine
#                                   whose opencryptoki token is in use)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: ci/ctest.sh BUILD_DIR [CTEST ARGS]}
shift
# ctest starts the tests it knows to be long first when it has their past times. A fresh build dir
# gets the times of a whole run (ci/ctest-costs.txt, from build-asan), so that a long test does not
# start last and leave the other cores idle at the end.
costs=$build/Testing/Temporary/CTestCostData.txt
if [[ ! -f $costs ]]; then
  mkdir -p "$(dirname "$costs")"
  cp ci/ctest-costs.txt "$costs"
fi
rc=0
(cd "$build" && ctest --output-on-failure -j "${FLEETSIGN_TEST_JOBS:-$(nproc)}" --timeout 900 "$@") ||
  rc=$?
# Only after the whole suite: arguments that pick tests leave it out.
if [[ $rc == 0 && $# == 0 && ${FLEETSIGN_SKIP_OPENCRYPTOKI:-0} != 1 ]]; then
  ock_dir=$(mktemp -d)
  bash ci/opencryptoki.sh "$ock_dir"
  # Under ASan: opencryptoki's soft token leaks (~1 KiB a process), and libp11 unloads the module
  # (dlclose) before LeakSanitizer looks, so no suppression can name it. Leak detection is off for
  # this run only; ASan's other checks and UBSan stay on.
  if [[ -n ${ASAN_OPTIONS:-} ]]; then export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"; fi
  (set -a && . "$ock_dir/env" && set +a && cd "$build" &&
    ctest --output-on-failure --timeout 900 -L opencryptoki) || rc=$?
fi
exit $rc
