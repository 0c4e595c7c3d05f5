#!/usr/bin/env bash
# bench/run_chan.sh — channels and select: dchan vs a std::mutex +
# std::condition_variable queue, moodycamel's queue and Go, with the thread
# hand-off floors of the machine, in one run, unpinned and pinned to one CPU;
# prints a Markdown table of medians with ratios (docs/BENCHMARKS.md).
# bench/run_all.sh runs it as part of the whole suite.
#
# Usage: bench/run_chan.sh [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
# Environment:
#   JOBS   parallel build jobs (default 2)
#   REPS   repetitions per benchmark (default 5)
#   OUT    where raw results and the table go (default BUILD_DIR/chan-results)
#   BENCH_MIN_TIME, GO_BENCHTIME  see bench/common.sh
#
# Needs: cmake, g++, libbenchmark-dev, libconcurrentqueue-dev, golang-go,
# python3, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
OUT="$(realpath -m "${OUT:-${BUILD}/chan-results}")"
source "${ROOT}/bench/common.sh"
need cmake go python3 taskset

build_bench chan_bench
mkdir -p "${OUT}"
build_go_bench . "${OUT}/chan_go.test"

machine_info "lib" "go:      $(go version | cut -d' ' -f3)"
run_gbench "${BUILD}/bench/chan_bench" chan_bench
run_go_bench "${OUT}/chan_go.test" '^BenchmarkChan'
report chan_table.py
