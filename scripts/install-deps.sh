#!/usr/bin/env bash
# scripts/install-deps.sh — installs the Debian 12 (bookworm) packages that
# building and testing dchan needs. Idempotent: when everything is already
# installed it only asks dpkg and returns within a fraction of a second; it
# runs `apt-get update` and `apt-get install` only for what is missing.
#
# `install-deps.sh --minimal` installs only what a Release build of the
# broker, the client and the examples needs, without tests, benchmarks, clang
# or Go (docker/Dockerfile's build stage uses it).
#
# Run as root (or as a user with sudo). Non-interactive.
set -euo pipefail

MINIMAL_PACKAGES=(
  build-essential
  cmake
  pkg-config
  libabsl-dev
  libgrpc++-dev
  libprotobuf-dev
  protobuf-compiler
  protobuf-compiler-grpc
  libgoogle-perftools-dev  # tcmalloc for dchan-broker (server/CMakeLists.txt)
)

PACKAGES=(
  build-essential
  cmake
  pkg-config
  clang
  clang-14                # the -Wthread-safety build (scripts/test.sh)
  libabsl-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  libgrpc++-dev
  libprotobuf-dev
  protobuf-compiler
  protobuf-compiler-grpc
  libgoogle-perftools-dev  # tcmalloc for dchan-broker (server/CMakeLists.txt)
  golang-go               # Go is a benchmark baseline
  iproute2                # `ip netns`/veth: integration_tests/netns_test.cc
  iptables                # netns_test cuts a host off with DROP rules
  # bench/: what users would pick instead, each started by the benchmark on
  # loopback (issue 7). The distributions' own services, if they start, are
  # not used.
  libconcurrentqueue-dev  # moodycamel::ConcurrentQueue, in-process baseline
  libhiredis-dev          # Redis client for the LPUSH/BRPOP baseline
  redis-server
  nats-server
  golang-github-nats-io-go-nats-dev   # nats.go for the NATS baseline program
  etcd-server
  etcd-client             # etcdctl
  golang-etcd-server-dev  # etcd's Go client (clientv3/concurrency) for the lock baseline
)

case "${1:-}" in
  "") ;;
  --minimal) PACKAGES=("${MINIMAL_PACKAGES[@]}") ;;
  *) echo "usage: install-deps.sh [--minimal]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "${pkg}" 2>/dev/null || true)"
  if [[ "${status}" != "installed" ]]; then
    missing+=("${pkg}")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-deps: missing packages (${missing[*]}) and not root; run as root" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
  --no-install-recommends "${missing[@]}"
echo "install-deps: done"
