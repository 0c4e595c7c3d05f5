#!/usr/bin/env bash
# Runs examples/job_coordinator and three examples/job_worker processes as a
# user would, against a broker on a free loopback port, twice (a fresh
# broker each time: "jobs" stays closed after a batch):
#   1. the batch completes: the coordinator exits 0 with a right summary;
#   2. worker 2 is killed (SIGKILL) after its first job: the coordinator
#      exits 1 and names "worker-2" as the lost participant.
# Used by ctest (examples label).
#   run_job_example.sh BROKER JOB_COORDINATOR JOB_WORKER
set -euo pipefail
broker_bin="$1"; coordinator="$2"; worker="$3"
out="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "${out}"' EXIT

# shellcheck source=examples/broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"

# 1. A whole batch.
start_broker "${broker_bin}" "${out}/broker1"
for id in 1 2 3; do
  "${worker}" --broker="${addr}" --id="${id}" > "${out}/w${id}" 2>&1 &
  pids+=($!)
done
timeout 60 "${coordinator}" --broker="${addr}" --jobs=30 --workers=3 \
  > "${out}/coordinator1" 2>&1 || { cat "${out}"/coordinator1 "${out}"/w*; exit 1; }
cat "${out}/coordinator1"
grep -q "coordinator: 30 jobs done (.*), sum of squares 9455: ok" "${out}/coordinator1"

# 2. Worker 2 lost mid-batch.
start_broker "${broker_bin}" "${out}/broker2"
for id in 1 2 3; do
  "${worker}" --broker="${addr}" --id="${id}" --job_ms=100 > "${out}/v${id}" 2>&1 &
  pids+=($!)
done
victim="${pids[-2]}"  # worker 2
timeout 60 "${coordinator}" --broker="${addr}" --jobs=60 --workers=3 \
  > "${out}/coordinator2" 2>&1 &
coordinator_pid=$!
pids+=("${coordinator_pid}")
for _ in $(seq 200); do
  grep -q "worker-2: job" "${out}/v2" && break
  sleep 0.05
done
grep -q "worker-2: job" "${out}/v2" || { echo "worker-2 did no job"; exit 1; }
{ kill -9 "${victim}"; wait "${victim}"; } 2>/dev/null || true
rc=0
wait "${coordinator_pid}" || rc=$?
cat "${out}/coordinator2"
[[ ${rc} -eq 1 ]] || { echo "coordinator exited ${rc}, not 1"; exit 1; }
grep -q 'coordinator: batch failed: .*"worker-2".*lost' "${out}/coordinator2"
echo "job example: ok"
