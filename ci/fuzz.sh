#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz: FLEETSIGN_FUZZ=ON, Debian's clang, ASan + UBSan,
# ccache when installed), runs every checked-in corpus input once (the CTest tests labelled
# fuzz), then fuzzes each fuzz_* target for SECONDS (default 30) on a copy of its corpus, so
# tests/fuzz/corpus is never modified. Fails on any crash, leak, UB report, timeout (10 s per
# input), out-of-memory (2 GiB) or invariant violation, and prints each reproducer's path and the
# command that replays it.
#   usage: ci/fuzz.sh [SECONDS]        SECONDS=0: the corpus regression run only
#   FLEETSIGN_FUZZ_TARGETS="csr der"   only these targets (default: all)
#   FLEETSIGN_FUZZ_OUT=DIR             reproducers and logs (default: build-fuzz/fuzz-out)
#   FLEETSIGN_FUZZ_JOBS=N              build jobs (default: nproc)
#   FLEETSIGN_BUILD_ONLY=1             build, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: ci/fuzz.sh [SECONDS]" >&2; exit 2; }
top=$(pwd)
build=$top/build-fuzz
out=${FLEETSIGN_FUZZ_OUT:-$build/fuzz-out}
clang=${FLEETSIGN_FUZZ_CLANG:-/usr/bin/clang++}
[[ -x $clang ]] || { echo "ci/fuzz.sh: $clang not found (apt-get install clang)" >&2; exit 2; }

# 1. Configure and build only the fuzz targets (and what they link).
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DFLEETSIGN_FUZZ=ON -DCMAKE_CXX_COMPILER="$clang" \
  "${launcher[@]}" >/dev/null
cmake --build "$build" -j "${FLEETSIGN_FUZZ_JOBS:-$(nproc)}" --target fuzz
echo "fuzz: built in $(($(date +%s) - start)) s"
[[ ${FLEETSIGN_BUILD_ONLY:-0} == 1 ]] && exit 0

targets=${FLEETSIGN_FUZZ_TARGETS:-$(cd tests/fuzz/corpus && ls)}
regex=$(printf '%s|' $targets)
regex="^fuzz_(${regex%|})_corpus\$"

# 2. Every checked-in input once (regressions of fixed findings included).
ctest --test-dir "$build" -L fuzz -R "$regex" --output-on-failure

[[ $seconds == 0 ]] && exit 0

# 3. Fuzz each target for $seconds.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
printf '%-16s %10s %10s %8s  %s\n' target execs exec/s corpus result >"$out/summary.txt"
for t in $targets; do
  bin=$build/tests/fuzz/fuzz_$t
  artifacts=$out/$t
  rm -rf "$artifacts" && mkdir -p "$artifacts"
  cp -r "tests/fuzz/corpus/$t" "$work/$t"
  echo "fuzz: fuzz_$t for ${seconds} s"
  rc=0
  "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work/$t" >"$out/$t.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$t.log" | tail -1)
  size=$(ls "$work/$t" | wc -l)
  if [[ $rc != 0 ]]; then
    failed+=("$t")
    printf '%-16s %10s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$size" FAILED \
      >>"$out/summary.txt"
    echo "fuzz: fuzz_$t FAILED (exit $rc); the end of $out/$t.log:" >&2
    grep -E 'ERROR|SUMMARY|violated|runtime error' "$out/$t.log" | head -20 >&2 || true
    for f in "$artifacts"/*; do
      [[ -e $f ]] || continue
      echo "fuzz: reproducer $f  (replay: $bin $f)" >&2
    done
  else
    printf '%-16s %10s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$size" ok \
      >>"$out/summary.txt"
  fi
done
cat "$out/summary.txt"
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (reproducers under $out)" >&2
  exit 1
fi
echo "fuzz: every target ran ${seconds} s without a finding"
