#!/usr/bin/env bash
# bench/run_baselines.sh — dchan's broker next to what users would pick
# instead (issue 7): Redis, NATS, etcd and a raw gRPC relay, unpinned and
# pinned to one CPU in one run; plus the broker's memory and threads with
# 1 / 100 / 1,000 sessions and 100,000 blocked remote receivers. Prints a
# Markdown table (dchan figure, baseline, ratio dchan / baseline) and keeps
# it in OUT/table.md, ready for docs/BENCHMARKS.md.
#
# Usage: bench/run_baselines.sh [--smoke] [BUILD_DIR]
#   BUILD_DIR  reuse this CMake build tree (configured Release if it has no
#              cache yet); default build-bench/ in the repository.
#   --smoke    one repetition with tiny counts (CI: keeps every program and
#              the table working; the figures mean nothing).
# Environment:
#   JOBS            parallel build jobs (default 2)
#   REPS            repetitions per benchmark (default 5)
#   OUT             raw results and the table (default BUILD_DIR/baselines-results)
#   REMOTE_RESULTS  a directory with remote_bench.{unpinned,pinned}.json from
#                   bench/run_remote.sh of the same run (bench/run_all.sh
#                   passes it): dchan's rows come from there; without it
#                   this script runs the remote_bench rows it needs itself.
#   ETCD_DATA_PARENT  where etcd's temporary data dir goes (default TMPDIR
#                   or /tmp; etcd fsyncs every write there). A second etcd
#                   with its data dir on tmpfs (/dev/shm) runs the lock API
#                   again: etcd's cost without the disk, as dchan's
#                   in-memory broker has none.
#
# What runs (100-byte payloads; every server is started here or by the
# program, on a free loopback port, with a temporary data dir, and stopped
# on every exit path):
#   baseline_bench  Redis LPUSH/BRPOP echo (hiredis; starts its own
#                   redis-server --save '' --appendonly no) and the raw gRPC
#                   relay ping-pong A -> relay -> B -> relay -> A (the relay
#                   is its own process); Google Benchmark, REPS repetitions.
#   remote_go       (bench/remote_go, Go, built offline from Debian's Go
#                   packages in GOPATH mode) against nats-server and etcd
#                   started here: NATS request-reply, NATS pub/sub (the
#                   subscriber in a second process; a one-process run as a
#                   diagnostic), etcd put,
#                   the etcd lock API (clientv3/concurrency Mutex) and
#                   `etcdctl lock` / `etcdctl put` process cycles.
#   remote_bench    dchan's side (unless REMOTE_RESULTS): ping-pong, acked
#                   send, lock + unlock, one-way throughput, raw gRPC round
#                   trip.
#   broker_scale    broker Threads / VmRSS from /proc at each step, REPS
#                   times (a fresh broker each; unpinned only: memory does
#                   not depend on the placement).
# Pinned (`taskset -c 0`): the servers are started under taskset too, so
# clients and servers share CPU 0, as remote_bench's broker does; Go then
# runs with GOMAXPROCS=1.
#
# Needs: cmake, g++, libbenchmark-dev, gRPC/protobuf dev packages,
# libhiredis-dev, redis-server, nats-server, etcd-server, etcd-client,
# golang-go, golang-github-nats-io-go-nats-dev, golang-etcd-server-dev,
# python3, taskset (scripts/install-deps.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=1
  shift
fi
BUILD="$(realpath -m "${1:-${ROOT}/build-bench}")"
JOBS="${JOBS:-2}"
REPS="${REPS:-5}"
[[ "${SMOKE}" == 1 ]] && REPS=1
OUT="$(realpath -m "${OUT:-${BUILD}/baselines-results}")"
REMOTE_RESULTS="${REMOTE_RESULTS:-}"
source "${ROOT}/bench/common.sh"
need cmake python3 taskset go redis-server nats-server etcd etcdctl

# ------------------------------------------------------------ cleanup
# Every server this script starts is recorded here and stopped by its pid on
# any exit; temporary dirs go with them.
PIDS=()
TMPDIRS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "${pid}" 2>/dev/null || true
  done
  PIDS=()
  local d
  for d in "${TMPDIRS[@]}"; do rm -rf "${d}"; done
  TMPDIRS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for WHAT SECONDS CMD...: retries CMD every 0.1 s.
wait_for() {
  local what="$1" secs="$2" i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "${what} did not come up within ${secs} s (logs in ${OUT})"
}

port_open() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_servers PLACEMENT [taskset -c 0]: nats-server and a one-member etcd on
# free loopback ports; sets NATS_URL and ETCD_ADDR.
start_servers() {
  local placement="$1"
  shift
  local nats_port etcd_port peer_port data
  nats_port="$(free_port)"
  "$@" nats-server -a 127.0.0.1 -p "${nats_port}" \
    > "${OUT}/nats-server.${placement}.log" 2>&1 &
  PIDS+=("$!")
  NATS_URL="nats://127.0.0.1:${nats_port}"

  etcd_port="$(free_port)"
  peer_port="$(free_port)"
  data="$(mktemp -d "${ETCD_DATA_PARENT:-${TMPDIR:-/tmp}}/dchan-bench-etcd.XXXXXX")"
  TMPDIRS+=("${data}")
  "$@" etcd --name bench --data-dir "${data}" \
    --listen-client-urls "http://127.0.0.1:${etcd_port}" \
    --advertise-client-urls "http://127.0.0.1:${etcd_port}" \
    --listen-peer-urls "http://127.0.0.1:${peer_port}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${peer_port}" \
    --initial-cluster "bench=http://127.0.0.1:${peer_port}" \
    > "${OUT}/etcd.${placement}.log" 2>&1 &
  PIDS+=("$!")
  ETCD_ADDR="127.0.0.1:${etcd_port}"

  ETCD_MEM_ADDR=""
  if [[ -d /dev/shm && -w /dev/shm ]]; then
    etcd_port="$(free_port)"
    peer_port="$(free_port)"
    data="$(mktemp -d /dev/shm/dchan-bench-etcd.XXXXXX)"
    TMPDIRS+=("${data}")
    "$@" etcd --name bench-mem --data-dir "${data}" \
      --listen-client-urls "http://127.0.0.1:${etcd_port}" \
      --advertise-client-urls "http://127.0.0.1:${etcd_port}" \
      --listen-peer-urls "http://127.0.0.1:${peer_port}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer_port}" \
      --initial-cluster "bench-mem=http://127.0.0.1:${peer_port}" \
      > "${OUT}/etcd-tmpfs.${placement}.log" 2>&1 &
    PIDS+=("$!")
    ETCD_MEM_ADDR="127.0.0.1:${etcd_port}"
  fi

  wait_for nats-server 20 port_open "${nats_port}"
  wait_for etcd 30 etcdctl --endpoints="${ETCD_ADDR}" endpoint health
  if [[ -n "${ETCD_MEM_ADDR}" ]]; then
    wait_for "etcd (tmpfs)" 30 etcdctl --endpoints="${ETCD_MEM_ADDR}" endpoint health
  fi
}

# ------------------------------------------------------------ build
build_bench baseline_bench
build_bench broker_scale
[[ -n "${REMOTE_RESULTS}" ]] || build_bench remote_bench
mkdir -p "${OUT}"
rm -f "${OUT}"/*.json "${OUT}"/*.jsonl "${OUT}"/table.md "${OUT}"/*.log
echo "${SCRIPT}: building bench/remote_go (GOPATH mode, Debian's Go packages)" >&2
(cd "${ROOT}" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS='' \
   GOCACHE="${GOCACHE:-${BUILD}/go-cache}" \
   go build -o "${BUILD}/bench/remote_go" ./bench/remote_go) \
  || fail "building bench/remote_go failed"

etcd_fs="$(df -T "${ETCD_DATA_PARENT:-${TMPDIR:-/tmp}}" | awk 'NR == 2 { print $2 }')"
machine_info "lib client server proto bench" \
  "grpc:    $(dpkg-query -W -f '${Version}' libgrpc++-dev 2>/dev/null || echo n/a)" \
  "redis:   $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')" \
  "nats:    $(nats-server --version | sed 's/^nats-server: //')" \
  "etcd:    $(etcd --version | sed -n 's/^etcd Version: //p') (data dir on ${etcd_fs})" \
  "go:      $(go env GOVERSION)" \
  "mode:    $([[ "${SMOKE}" == 1 ]] && echo 'smoke (tiny counts; figures meaningless)' || echo "${REPS} repetitions")"

# ------------------------------------------------------------ runs
GB_ARGS=()
GO_SMALL=()
if [[ "${SMOKE}" == 1 ]]; then
  GB_ARGS=(--benchmark_min_time=0.001)
  GO_SMALL=(-n 20 -warmup 1)
fi

# run_go PLACEMENT [taskset -c 0]: every remote_go workload into
# OUT/go.PLACEMENT.jsonl.
run_go() {
  local placement="$1" w
  shift
  local -a env_go=(env GOMAXPROCS=2)
  [[ $# -gt 0 ]] && env_go=(env -u GOMAXPROCS)
  : > "${OUT}/go.${placement}.jsonl"
  for w in nats-rr nats-pubsub nats-pubsub-one-process etcd-put etcd-lock \
    etcdctl; do
    echo "${SCRIPT}: remote_go ${w}, ${placement}" >&2
    local -a small=("${GO_SMALL[@]}")
    [[ "${SMOKE}" == 1 && "${w}" == etcdctl ]] && small=(-n 2 -warmup 1)
    "${env_go[@]}" "$@" "${BUILD}/bench/remote_go" -reps "${REPS}" \
      -nats "${NATS_URL}" -etcd "${ETCD_ADDR}" "${small[@]}" "${w}" \
      >> "${OUT}/go.${placement}.jsonl"
  done
  if [[ -n "${ETCD_MEM_ADDR}" ]]; then
    echo "${SCRIPT}: remote_go etcd-lock (etcd on tmpfs), ${placement}" >&2
    "${env_go[@]}" "$@" "${BUILD}/bench/remote_go" -reps "${REPS}" \
      -etcd "${ETCD_MEM_ADDR}" -tag _tmpfs "${GO_SMALL[@]}" etcd-lock \
      >> "${OUT}/go.${placement}.jsonl"
  fi
}

for placement in unpinned pinned; do
  pin=()
  [[ "${placement}" == pinned ]] && pin=(taskset -c 0)
  start_servers "${placement}" "${pin[@]}"
  run_go "${placement}" "${pin[@]}"
  cleanup
done

# baseline_bench starts its own redis-server and relay (children inherit the
# pinning).
run_gbench "${BUILD}/bench/baseline_bench" baseline_bench "${GB_ARGS[@]}"

if [[ -n "${REMOTE_RESULTS}" ]]; then
  for placement in unpinned pinned; do
    [[ -f "${REMOTE_RESULTS}/remote_bench.${placement}.json" ]] \
      || fail "no ${REMOTE_RESULTS}/remote_bench.${placement}.json"
    cp "${REMOTE_RESULTS}/remote_bench.${placement}.json" "${OUT}/"
  done
else
  run_gbench "${BUILD}/bench/remote_bench" remote_bench "${GB_ARGS[@]}" \
    --benchmark_filter='^(pingpong/remote/|acked_send/remote|acked_send_alone/remote|lock_unlock/remote|oneway[^/]*/remote.*|roundtrip/grpc)'
fi

# A fresh broker per repetition; unpinned only.
scale_args=()
[[ "${SMOKE}" == 1 ]] &&
  scale_args=('--sessions=1,4' --waiter_sessions=2 --waiters_per_session=10)
for ((rep = 1; rep <= REPS; rep++)); do
  echo "${SCRIPT}: broker_scale ${rep}/${REPS}" >&2
  "${BUILD}/bench/broker_scale" "${scale_args[@]}" > "${OUT}/broker_scale.${rep}.json"
done

report baselines_table.py
