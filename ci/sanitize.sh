#!/usr/bin/env bash
# Builds fleetsign with sanitizers into a build dir of its own and runs tests there. Any sanitizer
# report fails the run: UB does not recover (-fno-sanitize-recover=all), a report makes the process
# exit non-zero, and every report is also written under build-*/sanitizer-logs, which must be empty
# at the end (a report from a process whose exit status no test reads, a device agent or mosquitto,
# counts too).
#   usage: ci/sanitize.sh address [CTEST ARGS…]   ASan + UBSan + LeakSanitizer, build-asan,
#                                                  the whole suite (ctest args narrow it: -L unit)
#          ci/sanitize.sh thread [CTEST ARGS…]    TSan, build-tsan, the tests labelled tsan
#                                                  (batch pipeline, token, auth, fault)
#   FLEETSIGN_SANITIZE_JOBS=N   build and test jobs (default: nproc)
#   FLEETSIGN_BUILD_ONLY=1      build, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
mode=${1:-}
shift || true
jobs=${FLEETSIGN_SANITIZE_JOBS:-$(nproc)}
case $mode in
  address) build=$top/build-asan; flags=address,undefined; select=() ;;
  thread) build=$top/build-tsan; flags=thread; select=(-L tsan) ;;
  *) echo "usage: ci/sanitize.sh address|thread [ctest args]" >&2; exit 2 ;;
esac

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLEETSIGN_SANITIZE=$flags \
  -DFLEETSIGN_BENCH=OFF "${launcher[@]}" >/dev/null
if [[ $mode == thread ]]; then
  # Only what the tsan tests need: the CLI (the batch tests run it) and their executables.
  targets=(fleetsign fleetsign-faulty fleetsign_fault_pkcs11 token_test auth_test issuer_test
           batch_writer_test batch_crash_test batch_rejects_test batch_output_test
           batch_inputs_test fault_batch_test)
  cmake --build "$build" -j "$jobs" --target "${targets[@]}"
else
  cmake --build "$build" -j "$jobs"
fi
echo "sanitize $mode: built in $(($(date +%s) - start)) s"
[[ ${FLEETSIGN_BUILD_ONLY:-0} == 1 ]] && exit 0

logs=$build/sanitizer-logs
rm -rf "$logs" && mkdir -p "$logs"
supp=$top/tests/sanitizers
export ASAN_OPTIONS="log_path=$logs/asan:detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0:strict_string_checks=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$logs/ubsan:print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="log_path=$logs/tsan:halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp"
if [[ $mode == address ]]; then
  # tests/sanitizers/swift_demangle.c says why mosquitto needs this one too (uninstrumented).
  shim=$build/libfleetsign-swift-demangle.so
  cc -shared -fPIC -O2 -o "$shim" "$supp/swift_demangle.c"
  export FLEETSIGN_SANITIZER_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so) $(g++ -print-file-name=libstdc++.so.6) $shim"
  export FLEETSIGN_MOSQUITTO=$supp/mosquitto
fi

start=$(date +%s)
rc=0
# Only the address run covers the opencryptoki subset (ci/ctest.sh): the thread run picks the tsan
# label.
skip_ock=${FLEETSIGN_SKIP_OPENCRYPTOKI:-0}
[[ $mode == address ]] || skip_ock=1
# The whole suite's tests wait on sockets, timers and child processes about a third of the time
# (69 % CPU with one test per core, measured): one test more than cores keeps the cores busy. The
# tsan run keeps one per core.
test_jobs=$jobs
[[ $mode == address ]] && test_jobs=$((jobs + 1))
FLEETSIGN_TEST_JOBS=${FLEETSIGN_TEST_JOBS:-$test_jobs} FLEETSIGN_SKIP_OPENCRYPTOKI=$skip_ock \
  bash "$top/ci/ctest.sh" "$build" "${select[@]}" "$@" || rc=$?
echo "sanitize $mode: tests ran in $(($(date +%s) - start)) s"
# A log holds a report when it has one of the sanitizers' report lines (ASan also logs notices, e.g.
# that it cannot follow a swapcontext, which are not findings).
reports=$(grep -lE 'ERROR: (Address|Leak|Thread|UndefinedBehavior)Sanitizer|WARNING: ThreadSanitizer|CHECK failed|runtime error:|SUMMARY: ' \
  -r "$logs" 2>/dev/null | sort || true)
if [[ -n $reports ]]; then
  echo "sanitize $mode: sanitizer reports:" >&2
  for f in $reports; do
    echo "==== $f" >&2
    head -60 "$f" >&2
  done
  exit 1
fi
exit $rc
