#!/usr/bin/env bash
# Runs examples/hello_remote as a user would: a broker on a free loopback
# port, a receiver process, a sender process. Passes when the receiver got
# every greeting and saw the close. Used by ctest (examples label).
#   run_remote_example.sh BROKER HELLO_REMOTE
set -euo pipefail
broker_bin="$1"; hello="$2"
out="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "${out}"' EXIT
# shellcheck source=examples/broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"
start_broker "${broker_bin}" "${out}/broker"
timeout 30 "${hello}" recv --broker="${addr}" > "${out}/recv" &
recv_pid=$!
timeout 30 "${hello}" send --broker="${addr}" --count=3
wait "${recv_pid}"
cat "${out}/recv"
grep -q "received: hello 3 from pid" "${out}/recv"
grep -q "channel closed after 3 greetings" "${out}/recv"
echo "hello_remote: ok"
