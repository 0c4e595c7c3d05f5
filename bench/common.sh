# shellcheck shell=bash
# bench/common.sh — what the run_*.sh benchmark scripts share; sourced, not
# run. The caller sets ROOT, BUILD, JOBS, REPS and OUT first.
#
# Optional environment, for every script that sources this:
#   BENCH_MIN_TIME  --benchmark_min_time of every Google Benchmark run
#                   (seconds; default: the library's 0.5)
#   GO_BENCHTIME    -test.benchtime of every Go benchmark run (default 1s)

# The calling script's name, for messages.
SCRIPT="$(basename "$0")"

fail() { echo "${SCRIPT}: $*" >&2; exit 1; }

# need TOOL...: fails naming the first one missing.
need() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" > /dev/null || fail "${tool} not found"
  done
}

# build_bench TARGET: configures BUILD as a Release tree unless it has a
# cache already (warning when that cache is not Release), then builds
# TARGET (and what it depends on) there.
build_bench() {
  local target="$1" build_type
  if [[ ! -f "${BUILD}/CMakeCache.txt" ]]; then
    echo "${SCRIPT}: configuring ${BUILD} (Release)" >&2
    cmake -S "${ROOT}" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
      -DDCHAN_BUILD_TESTS=OFF -DDCHAN_BUILD_BENCH=ON > /dev/null \
      || fail "cmake configure failed"
  fi
  build_type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "${BUILD}/CMakeCache.txt")"
  [[ "${build_type}" == "Release" ]] \
    || echo "${SCRIPT}: warning: ${BUILD} is a '${build_type}' build, not Release" >&2
  cmake --build "${BUILD}" -j "${JOBS}" --target "${target}" > /dev/null \
    || fail "building ${target} failed"
}

# machine_info "DIR..." [LINE...]: writes the run's header — date, commit
# (and whether DIRs have uncommitted changes), CPU, kernel, load, plus the
# caller's LINEs — to OUT/machine.txt and stderr. Results of different
# placements are only comparable within one run; keep the machine otherwise
# idle.
machine_info() {
  local -a dirs
  read -r -a dirs <<< "$1"
  shift
  {
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit:  $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo n/a)$(
      git -C "${ROOT}" diff --quiet HEAD -- "${dirs[@]}" 2>/dev/null \
        || echo " (${dirs[*]/%//} modified)")"
    echo "nproc:   $(nproc)"
    echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort | uniq -c | sed 's/^ *//')"
    echo "kernel:  $(uname -r)"
    local line
    for line in "$@"; do echo "${line}"; done
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (before the run)"
  } | tee "${OUT}/machine.txt" >&2
}

# run_gbench BINARY NAME [ARG...]: runs a Google Benchmark binary with REPS
# repetitions (aggregates only, JSON) unpinned and under `taskset -c 0`,
# into OUT/NAME.unpinned.json and OUT/NAME.pinned.json. Child processes the
# binary starts inherit the pinning.
run_gbench() {
  local bench="$1" name="$2"
  shift 2
  local -a args=("$@" --benchmark_repetitions="${REPS}"
                 --benchmark_report_aggregates_only=true
                 --benchmark_format=json)
  [[ -z "${BENCH_MIN_TIME:-}" ]] || args+=(--benchmark_min_time="${BENCH_MIN_TIME}")
  echo "${SCRIPT}: ${name}, unpinned" >&2
  "${bench}" "${args[@]}" > "${OUT}/${name}.unpinned.json"
  echo "${SCRIPT}: ${name}, taskset -c 0" >&2
  taskset -c 0 "${bench}" "${args[@]}" > "${OUT}/${name}.pinned.json"
}

# build_go_bench PACKAGE BINARY: builds the Go baselines' test binary
# (bench/go, offline).
build_go_bench() {
  (cd "${ROOT}/bench/go" && GOPROXY=off GOFLAGS=-mod=mod \
     go test -c -o "$2" "$1") \
    || fail "building the Go benchmarks failed"
}

# run_go_bench BINARY REGEX: runs the Go benchmarks matching REGEX, REPS
# times, with GOMAXPROCS=2 unpinned and under `taskset -c 0` (where Go sizes
# GOMAXPROCS from the affinity mask, 1, as on a one-CPU machine), into
# OUT/go.unpinned.txt and OUT/go.pinned.txt.
run_go_bench() {
  local -a args=(-test.run '^$' -test.bench "$2" -test.count "${REPS}")
  [[ -z "${GO_BENCHTIME:-}" ]] || args+=(-test.benchtime "${GO_BENCHTIME}")
  echo "${SCRIPT}: Go, GOMAXPROCS=2 unpinned" >&2
  (cd "${OUT}" && GOMAXPROCS=2 "$1" "${args[@]}") > "${OUT}/go.unpinned.txt"
  echo "${SCRIPT}: Go, taskset -c 0" >&2
  (cd "${OUT}" && env -u GOMAXPROCS taskset -c 0 "$1" "${args[@]}") \
    > "${OUT}/go.pinned.txt"
}

# report TABLE_SCRIPT: tabulates OUT (printed and kept in OUT/table.md).
report() {
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "${OUT}/machine.txt" >&2
  python3 "${ROOT}/bench/$1" "${OUT}" | tee "${OUT}/table.md"
  echo "${SCRIPT}: raw results in ${OUT}" >&2
}
