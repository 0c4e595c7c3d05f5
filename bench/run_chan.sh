#!/usr/bin/env bash
# bench/run_chan.sh — channels and select: dchan vs a std::mutex +
# std::condition_variable queue vs Go, in one run, unpinned and pinned to one
# CPU; prints a Markdown table of medians with ratios (docs/BENCHMARKS.md).
#
# Usage: bench/run_chan.sh [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
# Environment:
#   JOBS   parallel build jobs (default 2)
#   REPS   repetitions per benchmark (default 5)
#   OUT    where raw results and the table go (default BUILD_DIR/chan-results)
#
# Needs: cmake, g++, libbenchmark-dev, golang-go, python3, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
OUT="$(realpath -m "${OUT:-${BUILD}/chan-results}")"

fail() { echo "run_chan.sh: $*" >&2; exit 1; }
for tool in cmake go python3 taskset; do
  command -v "${tool}" > /dev/null || fail "${tool} not found"
done

# --- Build -----------------------------------------------------------------
if [[ ! -f "${BUILD}/CMakeCache.txt" ]]; then
  echo "run_chan.sh: configuring ${BUILD} (Release)" >&2
  cmake -S "${ROOT}" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
    -DDCHAN_BUILD_TESTS=OFF -DDCHAN_BUILD_BENCH=ON > /dev/null \
    || fail "cmake configure failed"
fi
build_type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "${BUILD}/CMakeCache.txt")"
[[ "${build_type}" == "Release" ]] \
  || echo "run_chan.sh: warning: ${BUILD} is a '${build_type}' build, not Release" >&2
cmake --build "${BUILD}" -j "${JOBS}" --target chan_bench > /dev/null \
  || fail "building chan_bench failed"
BENCH="${BUILD}/bench/chan_bench"

mkdir -p "${OUT}"
GO_TEST="${OUT}/chan_go.test"
(cd "${ROOT}/bench/go" && GOPROXY=off GOFLAGS=-mod=mod go test -c -o "${GO_TEST}" .) \
  || fail "building the Go benchmarks failed"

# --- Run -------------------------------------------------------------------
# Results of different placements are only comparable within one run; keep
# the machine otherwise idle.
{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo n/a)$(
    git -C "${ROOT}" diff --quiet HEAD -- lib 2>/dev/null || echo ' (lib/ modified)')"
  echo "nproc:   $(nproc)"
  echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort | uniq -c | sed 's/^ *//')"
  echo "kernel:  $(uname -r)"
  echo "go:      $(go version | cut -d' ' -f3)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
} | tee "${OUT}/machine.txt" >&2

gbench_args=(--benchmark_repetitions="${REPS}"
             --benchmark_report_aggregates_only=true
             --benchmark_format=json)
go_args=(-test.run '^$' -test.bench '^BenchmarkChan' -test.count "${REPS}")

echo "run_chan.sh: chan_bench, unpinned" >&2
"${BENCH}" "${gbench_args[@]}" > "${OUT}/chan_bench.unpinned.json"
echo "run_chan.sh: chan_bench, taskset -c 0" >&2
taskset -c 0 "${BENCH}" "${gbench_args[@]}" > "${OUT}/chan_bench.pinned.json"
echo "run_chan.sh: Go, GOMAXPROCS=2 unpinned" >&2
(cd "${OUT}" && GOMAXPROCS=2 "${GO_TEST}" "${go_args[@]}") > "${OUT}/go.unpinned.txt"
# Pinned, Go sizes GOMAXPROCS from the affinity mask (1), as it would on a
# one-CPU machine.
echo "run_chan.sh: Go, taskset -c 0" >&2
(cd "${OUT}" && env -u GOMAXPROCS taskset -c 0 "${GO_TEST}" "${go_args[@]}") \
  > "${OUT}/go.pinned.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "${OUT}/machine.txt" >&2

# --- Report ----------------------------------------------------------------
python3 "${ROOT}/bench/chan_table.py" "${OUT}" | tee "${OUT}/table.md"
echo "run_chan.sh: raw results in ${OUT}" >&2
