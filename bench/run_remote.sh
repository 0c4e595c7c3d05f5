#!/usr/bin/env bash
# bench/run_remote.sh — broker-backed channels (dchan::Client + dchan-broker)
# and broker locks vs raw gRPC streams, in one run, unpinned and pinned to one
# CPU; prints a Markdown table of medians with ratios (docs/BENCHMARKS.md,
# issues 4 and 5).
#
# Usage: bench/run_remote.sh [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
# Environment:
#   JOBS   parallel build jobs (default 2)
#   REPS   repetitions per benchmark (default 5)
#   OUT    where raw results and the table go (default BUILD_DIR/remote-results)
#   FILTER a --benchmark_filter regex (default: every benchmark), e.g.
#          'lock|roundtrip' for the lock rows and their baseline alone
#
# remote_bench starts its own dchan-broker (the one built in BUILD_DIR) and an
# in-process gRPC echo server (and, for lock_handoff, a partner process);
# under `taskset -c 0` the broker, the clients, the partner and the baseline
# all inherit the pinning, i.e. share CPU 0.
#
# Needs: cmake, g++, libbenchmark-dev, gRPC/protobuf dev packages, python3,
# taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
OUT="$(realpath -m "${OUT:-${BUILD}/remote-results}")"
FILTER="${FILTER:-.}"
source "${ROOT}/bench/common.sh"
need cmake python3 taskset

# remote_bench depends on dchan-broker, so this builds the broker too.
build_bench remote_bench
mkdir -p "${OUT}"

machine_info "lib client server proto" \
  "grpc:    $(dpkg-query -W -f '${Version}' libgrpc++-dev 2>/dev/null || echo n/a)"
# Under taskset -c 0 the broker, the partner and the baseline server run on
# CPU 0 too.
run_gbench "${BUILD}/bench/remote_bench" remote_bench \
  --benchmark_filter="${FILTER}"
report remote_table.py
