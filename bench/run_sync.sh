#!/usr/bin/env bash
# bench/run_sync.sh — Mutex, WaitGroup, go() and AtomicValue: dchan vs
# std:: / absl:: vs Go, in one run, unpinned and pinned to one CPU; prints a
# Markdown table of medians with ratios (docs/BENCHMARKS.md, "sync").
#
# Usage: bench/run_sync.sh [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
# Environment:
#   JOBS   parallel build jobs (default 2)
#   REPS   repetitions per benchmark (default 5)
#   OUT    where raw results and the table go (default BUILD_DIR/sync-results)
#   BENCH  use this sync_bench binary instead of building one
#
# Needs: cmake, g++, libbenchmark-dev, golang-go (optional), python3, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
OUT="$(realpath -m "${OUT:-${BUILD}/sync-results}")"

fail() { echo "run_sync.sh: $*" >&2; exit 1; }
for tool in python3 taskset; do
  command -v "${tool}" > /dev/null || fail "${tool} not found"
done

# --- Build -----------------------------------------------------------------
if [[ -z "${BENCH:-}" ]]; then
  command -v cmake > /dev/null || fail "cmake not found"
  if [[ ! -f "${BUILD}/CMakeCache.txt" ]]; then
    echo "run_sync.sh: configuring ${BUILD} (Release)" >&2
    cmake -S "${ROOT}" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
      -DDCHAN_BUILD_TESTS=OFF -DDCHAN_BUILD_BENCH=ON > /dev/null \
      || fail "cmake configure failed"
  fi
  cmake --build "${BUILD}" -j "${JOBS}" --target sync_bench > /dev/null \
    || fail "building sync_bench failed"
  BENCH="${BUILD}/bench/sync_bench"
fi

mkdir -p "${OUT}"
GO_TEST=""
if command -v go > /dev/null; then
  GO_TEST="${OUT}/sync_go.test"
  (cd "${ROOT}/bench/go" && GOPROXY=off GOFLAGS=-mod=mod \
     go test -c -o "${GO_TEST}" ./sync) \
    || fail "building the Go benchmarks failed"
else
  echo "run_sync.sh: go not found; the table will have no Go column" >&2
fi

# --- Run -------------------------------------------------------------------
{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo n/a)$(
    git -C "${ROOT}" diff --quiet HEAD -- lib 2>/dev/null || echo ' (lib/ modified)')"
  echo "nproc:   $(nproc)"
  echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort | uniq -c | sed 's/^ *//')"
  echo "kernel:  $(uname -r)"
  [[ -n "${GO_TEST}" ]] && echo "go:      $(go version | cut -d' ' -f3)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
} | tee "${OUT}/machine.txt" >&2

gbench_args=(--benchmark_repetitions="${REPS}"
             --benchmark_report_aggregates_only=true
             --benchmark_format=json)
go_args=(-test.run '^$' -test.bench '^BenchmarkSync' -test.count "${REPS}")

echo "run_sync.sh: sync_bench, unpinned" >&2
"${BENCH}" "${gbench_args[@]}" > "${OUT}/sync_bench.unpinned.json"
echo "run_sync.sh: sync_bench, taskset -c 0" >&2
taskset -c 0 "${BENCH}" "${gbench_args[@]}" > "${OUT}/sync_bench.pinned.json"
if [[ -n "${GO_TEST}" ]]; then
  echo "run_sync.sh: Go, GOMAXPROCS=2 unpinned" >&2
  (cd "${OUT}" && GOMAXPROCS=2 "${GO_TEST}" "${go_args[@]}") > "${OUT}/go.unpinned.txt"
  echo "run_sync.sh: Go, taskset -c 0" >&2
  (cd "${OUT}" && env -u GOMAXPROCS taskset -c 0 "${GO_TEST}" "${go_args[@]}") \
    > "${OUT}/go.pinned.txt"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "${OUT}/machine.txt" >&2

# --- Report ----------------------------------------------------------------
python3 "${ROOT}/bench/sync_table.py" "${OUT}" | tee "${OUT}/table.md"
echo "run_sync.sh: raw results in ${OUT}" >&2
