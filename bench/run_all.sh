#!/usr/bin/env bash
# bench/run_all.sh — the whole benchmark suite in one command (issue 7):
# installs what is missing (scripts/install-deps.sh), builds a Release tree
# of the benchmark targets only, runs bench/run_chan.sh, run_sync.sh,
# run_remote.sh and, when it exists, bench/run_baselines.sh (Redis, NATS,
# etcd), each unpinned and pinned to one CPU, then prints ONE table — every
# dchan figure next to its baselines from this run, as ratios — and writes
# it into docs/BENCHMARKS.md between `<!-- run_all:begin -->` and
# `<!-- run_all:end -->`.
#
# Usage: bench/run_all.sh [BUILD_DIR]
#   BUILD_DIR  the Release tree to build in and reuse (default build-bench/
#              in the repository)
# Environment:
#   QUICK=1    checks the pipeline end to end in under a minute after the
#              build: 2 repetitions, tiny minimum times; the figures are
#              not worth reading and docs/ is left alone unless WRITE_DOC=1
#   REPS       repetitions per benchmark (default 5; QUICK: 2)
#   BENCH_MIN_TIME, GO_BENCHTIME  per-benchmark minimum time of the
#              in-process Google Benchmark runs (seconds) and of the Go runs
#              (see bench/common.sh; defaults 0.05 and 0.2s, QUICK: 0.01 and
#              2000x)
#   REMOTE_MIN_TIME  the same for remote_bench (default: the library's 0.5;
#              QUICK: 0.01)
#   WRITE_DOC  1: update docs/BENCHMARKS.md (default 1, QUICK: 0)
#   OUT        results directory (default BUILD_DIR/all-results); the
#              table is also kept in OUT/table.md
#   JOBS       parallel build jobs (default 2)
#   SKIP_DEPS=1  do not run scripts/install-deps.sh
#
# The baselines script, if present, is called as
#   OUT=DIR REPS=N QUICK=0|1 JOBS=N BENCH_MIN_TIME=REMOTE_MIN_TIME \
#     REMOTE_RESULTS=OUT/remote bench/run_baselines.sh [--smoke] BUILD_DIR
# (--smoke with QUICK=1; REMOTE_RESULTS holds this run's remote_bench JSON,
# so that it need not run remote_bench again) and is expected to start and
# stop its own servers on loopback, run each workload unpinned and under
# `taskset -c 0`, and leave in DIR one JSON object per repetition (as
# bench/remote_go prints them: {"bench": NAME, "rep": N, "ops": N,
# "us_per_op": X, "p50_us": X, "p99_us": X} or {..., "msgs_per_s": X}) in
# files named *.unpinned.jsonl / *.pinned.jsonl, and/or Google Benchmark
# JSON as *.unpinned.json / *.pinned.json. bench/all_table.py pairs them
# with the dchan rows by name (nats_rr, redis*, relay/grpc, etcd_put,
# etcd*lock*, nats_pubsub) and lists the others unpaired.
#
# Keep the machine otherwise idle while it runs: figures of a loaded
# machine are not comparable (the header records the load average).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
export JOBS="${JOBS:-2}"
QUICK="${QUICK:-0}"
# The budget (issue 7): the whole command in under 15 minutes on a 2-vCPU
# VM, cold build (~1.5 minutes, ~2.5 while others compile) included. The
# slow rows of the in-process benchmarks (tens of µs per op on a busy
# machine) run whole batches per repetition, so a short minimum time still
# gives thousands of ops per repetition.
if [[ "${QUICK}" == 1 ]]; then
  export REPS="${REPS:-2}"
  BENCH_MIN_TIME="${BENCH_MIN_TIME:-0.01}"
  REMOTE_MIN_TIME="${REMOTE_MIN_TIME:-0.01}"
  GO_BENCHTIME="${GO_BENCHTIME:-2000x}"
  WRITE_DOC="${WRITE_DOC:-0}"
else
  export REPS="${REPS:-5}"
  BENCH_MIN_TIME="${BENCH_MIN_TIME:-0.05}"
  REMOTE_MIN_TIME="${REMOTE_MIN_TIME:-}"
  GO_BENCHTIME="${GO_BENCHTIME:-0.2s}"
  WRITE_DOC="${WRITE_DOC:-1}"
fi
export GO_BENCHTIME
OUT="$(realpath -m "${OUT:-${BUILD}/all-results}")"
DOC="${ROOT}/docs/BENCHMARKS.md"
source "${ROOT}/bench/common.sh"

(( REPS >= 2 )) || fail "REPS must be at least 2 (medians need repetitions)"
if [[ "${WRITE_DOC}" == 1 ]]; then
  grep -q '^<!-- run_all:begin -->$' "${DOC}" \
    || fail "${DOC} lacks the <!-- run_all:begin --> marker"
fi

START=$(date +%s)
STARTED="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
stamp() { echo "$(( $(date +%s) - START ))"; }

if [[ "${SKIP_DEPS:-0}" != 1 ]]; then
  echo "${SCRIPT}: scripts/install-deps.sh" >&2
  "${ROOT}/scripts/install-deps.sh" >&2
fi
need cmake go python3 taskset

rm -rf "${OUT}"
mkdir -p "${OUT}"

# One build of every benchmark target (and only what they need: lib, the
# client, the broker), so that the build time is known on its own.
t0=$(stamp)
BUILD_TARGETS=(chan_bench sync_bench remote_bench)
if [[ ! -f "${BUILD}/CMakeCache.txt" ]]; then
  echo "${SCRIPT}: configuring ${BUILD} (Release)" >&2
  cmake -S "${ROOT}" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
    -DDCHAN_BUILD_TESTS=OFF -DDCHAN_BUILD_BENCH=ON > "${OUT}/configure.log" \
    || { cat "${OUT}/configure.log" >&2; fail "cmake configure failed"; }
fi
# The baselines script's own programs, when this tree has them.
all_targets="$(cmake --build "${BUILD}" --target help 2>/dev/null || true)"
for t in baseline_bench broker_scale; do
  [[ "${all_targets}" != *" ${t}"* ]] || BUILD_TARGETS+=("${t}")
done
echo "${SCRIPT}: building ${BUILD_TARGETS[*]} in ${BUILD} (-j${JOBS})" >&2
cmake --build "${BUILD}" -j "${JOBS}" --target "${BUILD_TARGETS[@]}" \
  > "${OUT}/build.log" 2>&1 \
  || { tail -50 "${OUT}/build.log" >&2; fail "build failed (${OUT}/build.log)"; }
BUILD_SECS=$(( $(stamp) - t0 ))

# Each part: its own results directory, its stdout (its own table) kept
# there; progress goes to stderr. A failed part is recorded and the others
# still run; the command then exits non-zero.
declare -A SECS STATUS
FAILED=0
part() {
  local name="$1" min_time="$2"
  shift 2
  local t
  t=$(stamp)
  echo "${SCRIPT}: ---- ${name}" >&2
  if OUT="${OUT}/${name}" QUICK="${QUICK}" BENCH_MIN_TIME="${min_time}" \
       "$@" "${BUILD}" \
       > "${OUT}/${name}.stdout" 2> >(tee "${OUT}/${name}.stderr" >&2); then
    STATUS[${name}]=ok
  else
    STATUS[${name}]="FAILED (exit $?, see ${OUT}/${name}.stderr)"
    FAILED=1
  fi
  SECS[${name}]=$(( $(stamp) - t ))
}

PARTS=(chan sync remote)
part chan "${BENCH_MIN_TIME}" "${ROOT}/bench/run_chan.sh"
part sync "${BENCH_MIN_TIME}" "${ROOT}/bench/run_sync.sh"
part remote "${REMOTE_MIN_TIME}" "${ROOT}/bench/run_remote.sh"
if [[ -f "${ROOT}/bench/run_baselines.sh" ]]; then
  PARTS+=(baselines)
  smoke=()
  [[ "${QUICK}" != 1 ]] || smoke=(--smoke)
  part baselines "${REMOTE_MIN_TIME}" env REMOTE_RESULTS="${OUT}/remote" \
    bash "${ROOT}/bench/run_baselines.sh" "${smoke[@]}"
else
  echo "${SCRIPT}: bench/run_baselines.sh not found: no Redis/NATS/etcd rows" >&2
fi

times=""
for p in "${PARTS[@]}"; do times+=" ${p} ${SECS[${p}]}s (${STATUS[${p}]}),"; done
{
  echo "date:     ${STARTED} to $(date -u '+%H:%M:%S UTC')"
  echo "command:  $( [[ "${QUICK}" == 1 ]] && echo 'QUICK=1 ' )bench/run_all.sh (REPS=${REPS}, BENCH_MIN_TIME=${BENCH_MIN_TIME}, REMOTE_MIN_TIME=${REMOTE_MIN_TIME:-0.5}, GO_BENCHTIME=${GO_BENCHTIME})"
  echo "commit:   $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo n/a)$(
    git -C "${ROOT}" diff --quiet HEAD -- lib client server proto bench 2>/dev/null \
      || echo ' (with uncommitted changes)')"
  echo "machine:  $(nproc) vCPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort -u | head -1), kernel $(uname -r)"
  echo "tools:    $(g++ -dumpfullversion 2>/dev/null | sed 's/^/g++ /') -O3 (Release), $(go version | cut -d' ' -f3), gRPC $(dpkg-query -W -f '${Version}' libgrpc++-dev 2>/dev/null || echo n/a)"
  echo "load:     ${LOAD_BEFORE} before, $(cut -d' ' -f1-3 /proc/loadavg) after"
  echo "time:     $(stamp)s in all: build ${BUILD_SECS}s,${times%,}"
} > "${OUT}/run.txt"

python3 "${ROOT}/bench/all_table.py" "${OUT}" > "${OUT}/table.md"
if [[ "${WRITE_DOC}" == 1 ]]; then
  python3 "${ROOT}/bench/all_table.py" "${OUT}" --doc "${DOC}" > /dev/null
  echo "${SCRIPT}: table written into ${DOC}" >&2
fi
cat "${OUT}/table.md"
echo "${SCRIPT}: raw results in ${OUT}" >&2
(( FAILED == 0 )) || fail "some parts failed: see the table header"
