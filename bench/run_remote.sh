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

fail() { echo "run_remote.sh: $*" >&2; exit 1; }
for tool in cmake python3 taskset; do
  command -v "${tool}" > /dev/null || fail "${tool} not found"
done

# --- Build -----------------------------------------------------------------
if [[ ! -f "${BUILD}/CMakeCache.txt" ]]; then
  echo "run_remote.sh: configuring ${BUILD} (Release)" >&2
  cmake -S "${ROOT}" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
    -DDCHAN_BUILD_TESTS=OFF -DDCHAN_BUILD_BENCH=ON > /dev/null \
    || fail "cmake configure failed"
fi
build_type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "${BUILD}/CMakeCache.txt")"
[[ "${build_type}" == "Release" ]] \
  || echo "run_remote.sh: warning: ${BUILD} is a '${build_type}' build, not Release" >&2
# remote_bench depends on dchan-broker, so this builds the broker too.
cmake --build "${BUILD}" -j "${JOBS}" --target remote_bench > /dev/null \
  || fail "building remote_bench failed"
BENCH="${BUILD}/bench/remote_bench"

mkdir -p "${OUT}"

# --- Run -------------------------------------------------------------------
# Results of different placements are only comparable within one run; keep
# the machine otherwise idle.
{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo n/a)$(
    git -C "${ROOT}" diff --quiet HEAD -- lib client server proto 2>/dev/null \
      || echo ' (lib/ client/ server/ or proto/ modified)')"
  echo "nproc:   $(nproc)"
  echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort | uniq -c | sed 's/^ *//')"
  echo "kernel:  $(uname -r)"
  echo "grpc:    $(dpkg-query -W -f '${Version}' libgrpc++-dev 2>/dev/null || echo n/a)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
} | tee "${OUT}/machine.txt" >&2

gbench_args=(--benchmark_filter="${FILTER}"
             --benchmark_repetitions="${REPS}"
             --benchmark_report_aggregates_only=true
             --benchmark_format=json)

echo "run_remote.sh: remote_bench, unpinned" >&2
"${BENCH}" "${gbench_args[@]}" > "${OUT}/remote_bench.unpinned.json"
echo "run_remote.sh: remote_bench, taskset -c 0 (broker and baseline too)" >&2
taskset -c 0 "${BENCH}" "${gbench_args[@]}" > "${OUT}/remote_bench.pinned.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "${OUT}/machine.txt" >&2

# --- Report ----------------------------------------------------------------
python3 "${ROOT}/bench/remote_table.py" "${OUT}" | tee "${OUT}/table.md"
echo "run_remote.sh: raw results in ${OUT}" >&2
