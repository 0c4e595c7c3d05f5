#!/usr/bin/env bash
# bench/run_sync.sh — Mutex, WaitGroup, go() and AtomicValue: dchan vs
# std:: / absl:: vs Go, in one run, unpinned and pinned to one CPU; prints a
# Markdown table of medians with ratios (docs/BENCHMARKS.md).
# bench/run_all.sh runs it as part of the whole suite.
#
# Usage: bench/run_sync.sh [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
# Environment:
#   JOBS   parallel build jobs (default 2)
#   REPS   repetitions per benchmark (default 5)
#   OUT    where raw results and the table go (default BUILD_DIR/sync-results)
#   BENCH  use this sync_bench binary instead of building one
#   BENCH_MIN_TIME, GO_BENCHTIME  see bench/common.sh
#
# Needs: cmake, g++, libbenchmark-dev, golang-go (optional), python3, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
OUT="$(realpath -m "${OUT:-${BUILD}/sync-results}")"
source "${ROOT}/bench/common.sh"
need python3 taskset

if [[ -z "${BENCH:-}" ]]; then
  need cmake
  build_bench sync_bench
  BENCH="${BUILD}/bench/sync_bench"
fi
mkdir -p "${OUT}"
go_line=()
if command -v go > /dev/null; then
  build_go_bench ./sync "${OUT}/sync_go.test"
  go_line=("go:      $(go version | cut -d' ' -f3)")
else
  echo "${SCRIPT}: go not found; the table will have no Go column" >&2
fi

machine_info "lib" "${go_line[@]}"
run_gbench "${BENCH}" sync_bench
[[ ${#go_line[@]} -eq 0 ]] || run_go_bench "${OUT}/sync_go.test" '^BenchmarkSync'
report sync_table.py
