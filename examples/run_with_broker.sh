#!/usr/bin/env bash
# Runs one example program against its own dchan-broker on a free loopback
# port, as a user would, and passes only if the program exits 0 and its
# output matches every extended regular expression given after "--".
# Stops the broker on every exit path. Used by ctest (examples label).
#   run_with_broker.sh BROKER EXAMPLE [ARGS...] -- REGEX...
# EXAMPLE runs as: EXAMPLE --broker=127.0.0.1:PORT ARGS...
set -euo pipefail
broker_bin="$1"; example="$2"; shift 2
args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do args+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the "--"
out="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "${out}"' EXIT
# shellcheck source=examples/broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"
start_broker "${broker_bin}" "${out}/broker"
rc=0
timeout 50 "${example}" --broker="${addr}" "${args[@]}" > "${out}/example" 2>&1 || rc=$?
cat "${out}/example"
[[ ${rc} -eq 0 ]] || { echo "$(basename "${example}") exited ${rc}"; exit 1; }
for re in "$@"; do
  grep -Eq -- "${re}" "${out}/example" || { echo "no line matches: ${re}"; exit 1; }
done
echo "$(basename "${example}"): ok"
