# shellcheck shell=bash
# examples/broker.sh — sourced by the run_*.sh scripts that ctest runs.
#
# start_broker BROKER_BIN LOG starts a broker on a free loopback port in the
# calling shell (so that the caller's EXIT trap can stop it), appends its pid
# to the caller's `pids` array and sets `addr` to the address it listens on.
start_broker() {
  local bin="$1" log="$2"
  "${bin}" --listen=127.0.0.1:0 > "${log}" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "listening on" "${log}" && break
    sleep 0.1
  done
  addr="$(sed -n 's/^dchan-broker listening on \([^ ]*\).*/\1/p' "${log}")"
  [[ -n "${addr}" ]] || { echo "broker did not start:"; cat "${log}"; return 1; }
}
