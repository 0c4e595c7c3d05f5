#!/usr/bin/env bash
# tests/install_consumer/run.sh BUILD_DIR — installs the dchan built in
# BUILD_DIR into a temporary prefix, then configures, builds and runs the
# outside project beside this script against it with find_package(dchan),
# and runs it: a local channel across threads (dchan::dchan) and, when the
# package has them, a round trip through the installed dchan-broker with
# dchan::client. Exits non-zero if any step or check fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="${1:?usage: run.sh BUILD_DIR}"
BUILD="$(cd "${BUILD}" && pwd)"
JOBS="${JOBS:-2}"

WORK="$(mktemp -d /tmp/dchan-install-consumer.XXXXXX)"
trap 'rm -rf "${WORK}"' EXIT

echo "install_consumer: installing ${BUILD} into ${WORK}/prefix"
cmake --install "${BUILD}" --prefix "${WORK}/prefix" > "${WORK}/install.log" \
  || { cat "${WORK}/install.log" >&2; echo "install_consumer: cmake --install failed" >&2; exit 1; }

echo "install_consumer: configuring and building the consumer"
cmake -S "${HERE}" -B "${WORK}/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="${WORK}/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF > "${WORK}/configure.log" 2>&1 \
  || { cat "${WORK}/configure.log" >&2; echo "install_consumer: configure (find_package(dchan)) failed" >&2; exit 1; }
cmake --build "${WORK}/build" -j "${JOBS}" > "${WORK}/build.log" 2>&1 \
  || { cat "${WORK}/build.log" >&2; echo "install_consumer: build against installed dchan failed" >&2; exit 1; }

"${WORK}/build/consumer"
# The installed package has dchan::client whenever the build had it.
if grep -q 'dchan::client' "${WORK}"/prefix/lib*/cmake/dchan/dchanTargets.cmake; then
  [[ -x "${WORK}/build/client_consumer" ]] \
    || { echo "install_consumer: dchan::client exported but client_consumer not built" >&2; exit 1; }
  "${WORK}/build/client_consumer"

  # And the installed broker: a round trip between the two over loopback.
  BROKER="$(ls "${WORK}"/prefix/bin/dchan-broker 2>/dev/null || true)"
  if [[ -n "${BROKER}" ]]; then
    broker_pid=""
    trap '[[ -n "${broker_pid}" ]] && kill "${broker_pid}" 2>/dev/null; rm -rf "${WORK}"' EXIT
    for attempt in 1 2 3 4 5; do
      port=$(( 20000 + RANDOM % 20000 ))
      "${BROKER}" --listen "127.0.0.1:${port}" > "${WORK}/broker.log" 2>&1 &
      broker_pid=$!
      for _ in $(seq 50); do
        grep -q "listening" "${WORK}/broker.log" && break
        kill -0 "${broker_pid}" 2>/dev/null || break
        sleep 0.1
      done
      grep -q "listening" "${WORK}/broker.log" && break
      kill "${broker_pid}" 2>/dev/null || true
      wait "${broker_pid}" 2>/dev/null || true
      broker_pid=""
    done
    [[ -n "${broker_pid}" ]] || { cat "${WORK}/broker.log" >&2; echo "install_consumer: installed dchan-broker did not start" >&2; exit 1; }
    timeout 60 "${WORK}/build/client_consumer" "127.0.0.1:${port}" \
      || { cat "${WORK}/broker.log" >&2; echo "install_consumer: round trip through the installed broker failed" >&2; exit 1; }
    kill "${broker_pid}"
    wait "${broker_pid}" 2>/dev/null || true
    broker_pid=""
  fi
fi
echo "install_consumer: ok"
