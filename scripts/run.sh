#!/usr/bin/env bash
# scripts/run.sh — the main command: installs dependencies, builds what the
# main job needs (RelWithDebInfo, into build/) and runs it.
#
# The main job is the broker: dchan-broker, in memory, listening on its
# default address 0.0.0.0:7070 (extra arguments are passed to it, e.g.
# --listen=127.0.0.1:7171). Stop it with Ctrl-C or SIGTERM.
#
# Environment: JOBS (default 2) parallel build jobs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
JOBS="${JOBS:-2}"

fail() { echo "run.sh: $*" >&2; exit 1; }

"${ROOT}/scripts/install-deps.sh" || fail "installing dependencies failed"

echo "run.sh: building dchan-broker and the examples into build/"
log="$(mktemp /tmp/dchan-configure.XXXXXX)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo > "${log}" 2>&1 \
  || { cat "${log}" >&2; fail "cmake configure failed (log above)"; }
rm -f "${log}"
cmake --build build -j "${JOBS}" --target dchan-broker hello_remote pipeline \
  || fail "build failed"

echo "run.sh: running build/server/dchan-broker $*"
exec "${ROOT}/build/server/dchan-broker" "$@"
