#!/usr/bin/env bash
# tests/install_consumer/run.sh BUILD_DIR — installs the dchan built in
# BUILD_DIR into a temporary prefix, then configures, builds and runs the
# outside project beside this script against it with find_package(dchan),
# and runs it: a local channel across threads (dchan::dchan) and a round
# trip through the installed dchan-broker with dchan::client. Unless BUILD_DIR
# was configured with DCHAN_LIB_ONLY, the package must export dchan::client
# and install an executable bin/dchan-broker: a build that drops either
# fails here. Exits non-zero if any step or check fails.
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

# A lib-only build (DCHAN_LIB_ONLY) installs neither dchan::client nor the
# broker; every other build must install both.
LIB_ONLY=OFF
if grep -Eiq '^DCHAN_LIB_ONLY:BOOL=(ON|TRUE|YES|Y|1)$' "${BUILD}/CMakeCache.txt"; then
  LIB_ONLY=ON
fi
TARGETS_FILE="$(ls "${WORK}"/prefix/lib*/cmake/dchan/dchanTargets.cmake 2>/dev/null | head -1 || true)"
[[ -n "${TARGETS_FILE}" ]] \
  || { echo "install_consumer: no lib*/cmake/dchan/dchanTargets.cmake in the installed package" >&2; exit 1; }
BROKER="${WORK}/prefix/bin/dchan-broker"
if [[ "${LIB_ONLY}" == OFF ]]; then
  grep -q '^add_library(dchan::client ' "${TARGETS_FILE}" \
    || { echo "install_consumer: the installed package does not export dchan::client (${TARGETS_FILE})" >&2; exit 1; }
  [[ -f "${BROKER}" && -x "${BROKER}" ]] \
    || { echo "install_consumer: no executable bin/dchan-broker in the installed prefix" >&2; exit 1; }
fi

echo "install_consumer: configuring and building the consumer (lib only: ${LIB_ONLY})"
cmake -S "${HERE}" -B "${WORK}/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCONSUMER_LIB_ONLY="${LIB_ONLY}" \
  -DCMAKE_PREFIX_PATH="${WORK}/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF > "${WORK}/configure.log" 2>&1 \
  || { cat "${WORK}/configure.log" >&2; echo "install_consumer: configure (find_package(dchan)) failed" >&2; exit 1; }
cmake --build "${WORK}/build" -j "${JOBS}" > "${WORK}/build.log" 2>&1 \
  || { cat "${WORK}/build.log" >&2; echo "install_consumer: build against installed dchan failed" >&2; exit 1; }

"${WORK}/build/consumer"
if [[ "${LIB_ONLY}" == OFF ]]; then
  "${WORK}/build/client_consumer"

  # And the installed broker: a round trip between the two over loopback.
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
echo "install_consumer: ok"
