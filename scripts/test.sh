#!/usr/bin/env bash
# scripts/test.sh — the one test command: installs dependencies, builds, and
# runs every test dchan has. Used by CI (.ci/run) and by developers alike.
#
# Stages (each fails fast with a message naming it):
#   1. build   RelWithDebInfo build of everything into build/, ctest
#   2. tsan    ThreadSanitizer build of lib only into build-tsan/, ctest
#   3. clang   clang++ build of lib (+ its tests) with -Wthread-safety
#              -Werror=thread-safety into build-clang/, ctest
#   3b. asan   AddressSanitizer + UBSan build of everything but the
#              benchmarks (broker, client, integration tests, lib) into
#              build-asan/, ctest, leak detection on (scripts/lsan.supp)
#   4. install `cmake --install build` into a temporary prefix, then the
#              find_package(dchan) consumer in tests/install_consumer/
#   5. bench   every Google Benchmark binary in build/bench once with a tiny
#              iteration count, the Go baselines (bench/go*/) once each,
#              bench/run_baselines.sh --smoke (Redis, NATS, etcd servers it
#              starts itself), and the bench scripts parse (bash -n,
#              py_compile); no timing is asserted, this only keeps them
#              working
#   6. docker  docker/e2e.sh: the images of docker/Dockerfile, the broker
#              and example programs in containers (host network, loopback),
#              docker/compose.yaml through docker-compose; logs in
#              build-docker/. Installs and starts Docker when needed.
#
# Ends with "summary: N passed, 0 failed" (N: ctest tests of every stage +
# the consumer + benchmark programs run); any failure exits non-zero at once.
#
# Environment: JOBS (default 2) parallel jobs for builds and ctest;
# TEST_STAGES (default "build tsan clang asan install bench docker") the stages
# to run, for quicker local iterations (install and bench need build's tree;
# docker needs nothing else).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
JOBS="${JOBS:-2}"
START=$(date +%s)
STAGE="setup"
PASSED=0    # tests that passed, summed over every stage
STAGES_DONE=()
TEST_STAGES="${TEST_STAGES:-build tsan clang asan install bench docker}"
want() { [[ " ${TEST_STAGES} " == *" $1 "* ]]; }

trap 'rc=$?; echo; echo "test.sh: FAILED in stage \"${STAGE}\" (exit ${rc}) after $(( $(date +%s) - START ))s" >&2' ERR

stage() {
  STAGE="$1"
  echo
  echo "==== test.sh: ${STAGE} ($(( $(date +%s) - START ))s) ===="
}

# Runs ctest in build dir $1 (extra args follow), prefixed by the command in
# CTEST_WRAP if any, and adds its test count to PASSED.
CTEST_WRAP=()
run_ctest() {
  local dir="$1"; shift
  local log="${dir}/ctest.log"
  "${CTEST_WRAP[@]}" ctest --test-dir "${dir}" --output-on-failure --no-tests=error -j "${JOBS}" \
    "$@" 2>&1 | tee "${log}"
  local n
  n="$(sed -n 's/.*tests passed, 0 tests failed out of \([0-9]\+\).*/\1/p' "${log}" | tail -1)"
  PASSED=$(( PASSED + ${n:-0} ))
}

stage "install-deps"
"${ROOT}/scripts/install-deps.sh"

# ---------------------------------------------------------------- 1. build
if want build; then
  stage "build (RelWithDebInfo, build/)"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build build -j "${JOBS}"
  run_ctest build
  STAGES_DONE+=(build)
fi

# ----------------------------------------------------------------- 2. tsan
if want tsan; then
  stage "tsan (lib only, build-tsan/)"
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDCHAN_SANITIZE=thread -DDCHAN_LIB_ONLY=ON -DDCHAN_BUILD_BENCH=OFF
  cmake --build build-tsan -j "${JOBS}"
  # Kernels with more mmap randomisation than TSan's shadow layout expects make
  # every TSan binary die at start-up ("unexpected memory mapping"): run the
  # tests without ASLR there.
  if [[ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)" -gt 28 ]] &&
     setarch "$(uname -m)" -R true 2>/dev/null; then
    CTEST_WRAP=(setarch "$(uname -m)" -R)
  fi
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
  run_ctest build-tsan
  CTEST_WRAP=()
  unset TSAN_OPTIONS
  STAGES_DONE+=(tsan)
fi

# ---------------------------------------------------------------- 3. clang
if want clang; then
  stage "clang -Wthread-safety (lib, build-clang/)"
  cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_COMPILER=clang++ -DDCHAN_LIB_ONLY=ON -DDCHAN_BUILD_BENCH=OFF
  cmake --build build-clang -j "${JOBS}"
  run_ctest build-clang
  STAGES_DONE+=(clang)
fi

# ---------------------------------------------------------------- 3b. asan
if want asan; then
  stage "asan+ubsan (everything but bench, build-asan/)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDCHAN_SANITIZE=address -DDCHAN_BUILD_BENCH=OFF
  cmake --build build-asan -j "${JOBS}"
  # Leaks are errors: LeakSanitizer runs when each test program, worker,
  # example and broker exits (BrokerProcess stops a test's broker with
  # SIGTERM and fails the test unless it exits 0). scripts/lsan.supp may
  # only suppress process-lifetime allocations of gRPC, protobuf or Abseil,
  # never a dchan frame.
  export ASAN_OPTIONS="detect_leaks=1 abort_on_error=1 ${ASAN_OPTIONS:-}"
  export LSAN_OPTIONS="suppressions=${ROOT}/scripts/lsan.supp ${LSAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}"
  run_ctest build-asan
  unset ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS
  STAGES_DONE+=(asan)
fi

# -------------------------------------------------------------- 4. install
if want install; then
  stage "install + find_package consumer"
  "${ROOT}/tests/install_consumer/run.sh" "${ROOT}/build"
  PASSED=$(( PASSED + 1 ))
  STAGES_DONE+=(install)
fi

# ---------------------------------------------------------------- 5. bench
if want bench; then
  stage "bench smoke run (build/bench)"
  nbench=0
  mkdir -p build
  if [[ -d build/bench ]]; then
    while IFS= read -r b; do
      # Only Google Benchmark binaries (linked statically or dynamically).
      # (ldd's output is taken whole: `ldd | grep -q` under pipefail fails
      # whenever grep exits before ldd has written everything, which skipped
      # a benchmark binary at random.)
      libs="$(ldd "${b}" 2>/dev/null || true)"
      if ! grep -qa benchmark_min_time "${b}" &&
         [[ "${libs}" != *libbenchmark* ]]; then
        echo "--- ${b}: not a Google Benchmark binary, skipped"
        continue
      fi
      echo "--- ${b}"
      if ! "${b}" --benchmark_min_time=0.001 --benchmark_repetitions=1 \
           < /dev/null > "${b}.smoke.log" 2>&1; then
        cat "${b}.smoke.log" >&2
        echo "test.sh: FAILED in stage \"${STAGE}\": benchmark ${b}" >&2
        exit 1
      fi
      nbench=$(( nbench + 1 ))
    done < <(find build/bench -type f -perm -u+x -not -path '*/CMakeFiles/*' \
               -not -name '*.sh' -not -name '*.so*' | sort)
  fi
  # The Go baselines (bench/go*/ modules): build them and run each benchmark
  # once, offline, so that they cannot rot either.
  export GOFLAGS=-mod=mod GOPROXY=off
  export GOCACHE="${GOCACHE:-${ROOT}/build/go/cache}"
  export GOPATH="${GOPATH:-${ROOT}/build/go/path}"
  while IFS= read -r mod; do
    dir="$(dirname "${mod}")"
    echo "--- go test -bench . -benchtime=1x ./... (${dir})"
    if ! (cd "${dir}" && go test -run '^$' -bench . -benchtime=1x ./... \
            < /dev/null > "${ROOT}/build/go-bench-smoke.log" 2>&1); then
      cat "${ROOT}/build/go-bench-smoke.log" >&2
      echo "test.sh: FAILED in stage \"${STAGE}\": Go benchmarks in ${dir}" >&2
      exit 1
    fi
    nbench=$(( nbench + 1 ))
  done < <(find bench -name go.mod -not -path '*/vendor/*' 2>/dev/null | sort)
  # The issue 7 remote baselines: bench/run_baselines.sh starts its own
  # nats-server, etcd and (through baseline_bench) redis-server on loopback,
  # builds bench/remote_go offline from Debian's Go packages, and runs every
  # baseline, dchan's rows and broker_scale once with tiny counts.
  echo "--- bench/run_baselines.sh --smoke build"
  if ! "${ROOT}/bench/run_baselines.sh" --smoke "${ROOT}/build" \
        < /dev/null > "${ROOT}/build/baselines-smoke.log" 2>&1; then
    cat "${ROOT}/build/baselines-smoke.log" >&2
    echo "test.sh: FAILED in stage \"${STAGE}\": bench/run_baselines.sh --smoke" >&2
    exit 1
  fi
  nbench=$(( nbench + 1 ))
  # The scripts of bench/run_all.sh: they only run in full outside CI, so at
  # least check that they parse, and that the table scripts import (with
  # their shared bench/gbench.py).
  for script in bench/*.sh; do bash -n "${script}"; done
  PYTHONDONTWRITEBYTECODE=1 python3 - bench/*.py <<'PY'
import importlib, os, sys
sys.path.insert(0, "bench")
for path in sys.argv[1:]:
    importlib.import_module(os.path.basename(path)[:-3])
PY
  echo "bench: ${nbench} benchmark binaries / Go modules / baseline runs ran"
  PASSED=$(( PASSED + nbench ))
  STAGES_DONE+=(bench)
fi

# --------------------------------------------------------------- 6. docker
if want docker; then
  stage "docker (docker/e2e.sh, logs in build-docker/)"
  rm -rf build-docker
  mkdir -p build-docker
  DCHAN_E2E_LOG="${ROOT}/build-docker" "${ROOT}/docker/e2e.sh" 2>&1 \
    | tee build-docker/e2e.out
  n="$(sed -n 's/^e2e: \([0-9]\+\) checks passed$/\1/p' build-docker/e2e.out | tail -1)"
  [[ -n "${n}" ]] || { echo "test.sh: docker/e2e.sh did not report its checks" >&2; false; }
  PASSED=$(( PASSED + n ))
  STAGES_DONE+=(docker)
fi

STAGE="done"
echo
echo "test.sh: stages ${STAGES_DONE[*]} all green in $(( $(date +%s) - START ))s"
echo "summary: ${PASSED} passed, 0 failed"
