#!/usr/bin/env bash
# docker/e2e.sh — dchan as users run it in Docker, end to end. Run as root
# from anywhere; scripts/test.sh runs it as its `docker` stage.
#
#   1. engine   installs Debian's docker.io when dockerd is missing (and
#               docker-compose when no compose is there); starts dockerd when
#               none answers, and stops that one (only that one) on exit.
#   2. bases    debian:bookworm and debian:bookworm-slim when present or
#               pullable; else one local bookworm image made with debootstrap
#               --variant=minbase from the mirror apt uses, imported as
#               ${LOCAL_BASE} (kept: later runs reuse it) for both.
#   3. images   docker/Dockerfile's targets, built with --network host:
#               dchan-build:e2e, dchan-worker:e2e, dchan-broker:e2e (their
#               layers are the cache of the next run; older e2e images are
#               pruned).
#   4. run      the broker container with host networking on a free loopback
#               port until Docker reports it healthy (its HEALTHCHECK), then
#               examples/hello_remote's receiver and sender as two worker
#               containers; checks what the receiver printed.
#   5. job      examples/job_coordinator + 3 examples/job_worker containers
#               against a fresh broker container: the batch completes (exit
#               0, right summary); then again with worker-2's container killed
#               mid-batch: the coordinator exits 1 naming "worker-2".
#   6. compose  docker/compose.yaml with docker/compose.host.yaml (host
#               networking, the same free port) through every compose found
#               (Debian's docker-compose 1.29, the v2 plugin if present);
#               `up --exit-code-from coordinator coordinator` must exit 0 with
#               the coordinator's right summary.
#
# Every container and compose project it starts is removed on exit, also on
# failure or Ctrl-C. When the Docker engine cannot run here, it fails and
# says why: it never passes without having run the containers.
#
# Environment: JOBS (default 2) the image build's parallelism;
# DCHAN_E2E_LOG (default a temporary folder) where logs are kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${JOBS:-2}"
# The local base's recipe is make_local_base below: change the tag when the
# recipe changes, so that machines which cached the old one make it anew.
LOCAL_BASE="dchan-e2e/debian:bookworm-slim-1"
BROKER_IMAGE="dchan-broker:e2e"
WORKER_IMAGE="dchan-worker:e2e"
BUILD_IMAGE_TAG="dchan-build:e2e"
PREFIX="dchan-e2e-$$"          # names of the containers this run starts
LOG="${DCHAN_E2E_LOG:-$(mktemp -d /tmp/dchan-e2e.XXXXXX)}"
mkdir -p "${LOG}"
# The legacy builder works with every engine and CLI version (a CLI with
# BuildKit on but no buildx plugin refuses to build).
export DOCKER_BUILDKIT=0
START=$(date +%s)

CHECKS=0   # end-to-end checks passed
say() { echo "e2e [$(( $(date +%s) - START ))s]: $*"; }
fail() { echo "e2e: FAILED: $*" >&2; exit 1; }

# ------------------------------------------------------------ cleanup (trap)
CONTAINERS=()        # names of containers started by this run
COMPOSE_FILES=(-f "${ROOT}/docker/compose.yaml" -f "${ROOT}/docker/compose.host.yaml")
COMPOSE_PROJECTS=()  # "COMPOSE-COMMAND|PROJECT" of compose projects started
DOCKERD_PID=""       # the dockerd this run started, if any
cleanup() {
  local rc=$?
  set +e
  for c in "${CONTAINERS[@]}"; do
    docker rm -f "${c}" > /dev/null 2>&1
  done
  for p in "${COMPOSE_PROJECTS[@]}"; do
    # ${p%%|*} is "docker-compose" or "docker compose": split on purpose.
    ${p%%|*} -p "${p#*|}" "${COMPOSE_FILES[@]}" down --remove-orphans \
      --timeout 5 > /dev/null 2>&1
  done
  if [[ -n "${DOCKERD_PID}" ]]; then
    say "stopping the dockerd this run started (pid ${DOCKERD_PID})"
    kill "${DOCKERD_PID}" 2>/dev/null
    for _ in $(seq 100); do
      kill -0 "${DOCKERD_PID}" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "${DOCKERD_PID}" 2>/dev/null
    wait "${DOCKERD_PID}" 2>/dev/null
  fi
  if [[ ${rc} -ne 0 ]]; then
    echo "e2e: logs in ${LOG}" >&2
  elif [[ -z "${DCHAN_E2E_LOG:-}" ]]; then
    rm -rf "${LOG}"
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ "$(id -u)" -eq 0 ]] || fail "run as root (it installs packages and starts dockerd)"

# ------------------------------------------------------------------ 1. engine
APT_UPDATED=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ ${APT_UPDATED} -eq 0 ]]; then
    apt-get update -q > "${LOG}/apt-update.log" 2>&1 \
      || { cat "${LOG}/apt-update.log" >&2; fail "apt-get update failed"; }
    APT_UPDATED=1
  fi
  # Packages must not start their services (docker.io would start a dockerd
  # of its own through its init script): policy-rc.d says no while we install.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e "${policy}" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "${policy}"
    chmod +x "${policy}"
    own_policy=1
  fi
  say "apt-get install $*"
  local rc=0
  apt-get install -y -q "$@" > "${LOG}/apt-install.log" 2>&1 || rc=$?
  [[ ${own_policy} -eq 1 ]] && rm -f "${policy}"
  [[ ${rc} -eq 0 ]] || { tail -30 "${LOG}/apt-install.log" >&2; fail "apt-get install $* failed"; }
}

COMPOSES=()   # compose commands to run compose.yaml with
find_composes() {
  COMPOSES=()
  if command -v docker-compose > /dev/null 2>&1; then COMPOSES+=("docker-compose"); fi
  if docker compose version > /dev/null 2>&1; then COMPOSES+=("docker compose"); fi
}

need=()
command -v dockerd > /dev/null 2>&1 || need+=(docker.io)
command -v docker-compose > /dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap > /dev/null 2>&1 || need+=(debootstrap)
[[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"
command -v docker > /dev/null 2>&1 || fail "docker.io is installed but there is no docker command"

if docker info > /dev/null 2>&1; then
  say "using the running Docker engine ($(docker version -f '{{.Server.Version}}'))"
else
  say "no Docker engine answers: starting dockerd"
  dockerd > "${LOG}/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do
    docker info > /dev/null 2>&1 && break
    kill -0 "${DOCKERD_PID}" 2>/dev/null || break
    sleep 0.5
  done
  if ! docker info > /dev/null 2>&1; then
    tail -40 "${LOG}/dockerd.log" >&2
    fail "the Docker engine cannot start on this machine (dockerd's log above: ${LOG}/dockerd.log)"
  fi
  say "dockerd $(docker version -f '{{.Server.Version}}') up (pid ${DOCKERD_PID})"
fi
find_composes
[[ ${#COMPOSES[@]} -gt 0 ]] || fail "no docker-compose and no docker compose plugin"

# ------------------------------------------------------------------- 2. bases
# The first deb URI of apt's sources whose suites include $1 (deb822 files
# first, then one-line sources); empty if none.
apt_uri_for_suite() {
  local suite="$1" f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "${f}" ]] || continue
    uri="$(awk -v suite="${suite}" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line); types = line }
          if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line); uris = line }
          if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line); suites = line }
          if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = line }
        }
        if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") &&
            enabled != "no") { split(uris, u, " "); print u[1]; exit }
      }' "${f}")"
    [[ -n "${uri}" ]] && { echo "${uri}"; return; }
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | sed -e 's/#.*//' -e 's/\[[^]]*\]//' \
    | awk -v suite="${suite}" '$1 == "deb" && $3 == suite { print $2; exit }'
}

make_local_base() {
  local mirror security rootfs
  mirror="$(apt_uri_for_suite bookworm)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  security="$(apt_uri_for_suite bookworm-security)"
  rootfs="$(mktemp -d /var/tmp/dchan-e2e-rootfs.XXXXXX)"
  say "making ${LOCAL_BASE}: debootstrap --variant=minbase bookworm from ${mirror}"
  if ! debootstrap --variant=minbase bookworm "${rootfs}" "${mirror}" \
       > "${LOG}/debootstrap.log" 2>&1; then
    tail -30 "${LOG}/debootstrap.log" >&2
    rm -rf "${rootfs}"
    fail "debootstrap failed (log above)"
  fi
  # apt sources as in Debian's own images: the release, its updates and,
  # when apt here knows a security mirror, the security updates.
  rm -f "${rootfs}/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\n' "${mirror}"
    printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [[ -n "${security}" ]]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\n' "${security}"
      printf 'Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } > "${rootfs}/etc/apt/sources.list.d/debian.sources"
  # Slim like debian:bookworm-slim: no docs, man pages or translations, now
  # or in packages installed later, and no apt caches left in layers.
  cat > "${rootfs}/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
DPKG
  cat > "${rootfs}/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  find "${rootfs}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "${rootfs}/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${rootfs}"/usr/share/{groff,info,linda,locale,man}/* \
         "${rootfs}"/var/cache/apt/* "${rootfs}"/var/lib/apt/lists/* \
         "${rootfs}"/var/log/* "${rootfs}"/tmp/*
  tar -C "${rootfs}" -c . | docker import \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm ${mirror}" \
    - "${LOCAL_BASE}" > /dev/null
  rm -rf "${rootfs}"
}

if docker image inspect debian:bookworm debian:bookworm-slim > /dev/null 2>&1 ||
   { timeout 60 docker pull -q debian:bookworm > /dev/null 2>&1 &&
     timeout 60 docker pull -q debian:bookworm-slim > /dev/null 2>&1; }; then
  BUILD_BASE=debian:bookworm
  RUNTIME_BASE=debian:bookworm-slim
else
  if docker image inspect "${LOCAL_BASE}" > /dev/null 2>&1; then
    say "debian:bookworm* cannot be pulled: reusing ${LOCAL_BASE}"
  else
    say "debian:bookworm* cannot be pulled"
    make_local_base
  fi
  BUILD_BASE="${LOCAL_BASE}"
  RUNTIME_BASE="${LOCAL_BASE}"
fi
say "bases: build ${BUILD_BASE}, runtime ${RUNTIME_BASE}"

# ------------------------------------------------------------------ 3. images
build_target() {
  local target="$1" tag="$2" t0
  t0=$(date +%s)
  say "docker build --target ${target} -t ${tag}"
  if ! docker build --network host --force-rm -f "${ROOT}/docker/Dockerfile" \
       --build-arg BUILD_IMAGE="${BUILD_BASE}" \
       --build-arg BASE_IMAGE="${RUNTIME_BASE}" \
       --build-arg JOBS="${JOBS}" \
       --label dchan.e2e=1 \
       --target "${target}" -t "${tag}" "${ROOT}" > "${LOG}/build-${target}.log" 2>&1; then
    tail -40 "${LOG}/build-${target}.log" >&2
    fail "docker build --target ${target} failed (log: ${LOG}/build-${target}.log)"
  fi
  say "built ${tag} in $(( $(date +%s) - t0 ))s"
}
build_target build "${BUILD_IMAGE_TAG}"
build_target worker "${WORKER_IMAGE}"
build_target broker "${BROKER_IMAGE}"
# Images of earlier runs, untagged by this one, only take space.
docker image prune -f --filter label=dchan.e2e=1 > /dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E '^dchan-(broker|worker):e2e' | sed 's/^/e2e: image /'
for image in "${BROKER_IMAGE}" "${WORKER_IMAGE}"; do
  [[ "$(docker image inspect -f '{{.Config.User}}' "${image}")" == dchan ]] \
    || fail "${image} does not run as the non-root user dchan"
done

# --------------------------------------------------------------------- 4. run
# A TCP port nobody listens on, below the ephemeral range: 20000-32767.
free_port() {
  local used port
  used="$(awk 'NR > 1 && $4 == "0A" { n = split($2, a, ":"); print a[n] }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null \
          | while read -r hex; do echo $(( 16#${hex} )); done)"
  for _ in $(seq 100); do
    port=$(( 20000 + RANDOM % 12768 ))
    grep -qx "${port}" <<< "${used}" || { echo "${port}"; return; }
  done
  fail "no free port found"
}

# Starts the broker container $1 on 127.0.0.1:$2 (host network) and waits
# until Docker's HEALTHCHECK calls it healthy.
start_broker() {
  local name="$1" port="$2" status=""
  CONTAINERS+=("${name}")
  docker run -d --name "${name}" --network host \
    -e DCHAN_HEALTH_ADDR="127.0.0.1:${port}" \
    --health-interval=1s --health-start-period=10s \
    "${BROKER_IMAGE}" --listen="127.0.0.1:${port}" > /dev/null
  for _ in $(seq 60); do
    status="$(docker inspect -f '{{.State.Health.Status}} {{.State.Status}}' "${name}")"
    [[ "${status}" == "healthy running" ]] && break
    [[ "${status}" == *running ]] || break
    sleep 0.5
  done
  if [[ "${status}" != "healthy running" ]]; then
    docker logs "${name}" >&2 || true
    docker inspect -f '{{json .State.Health}}' "${name}" >&2 || true
    fail "broker container ${name} is not healthy (${status})"
  fi
  say "broker ${name} healthy on 127.0.0.1:${port}"
}

# Runs a worker container named $1 in the background: the command follows.
start_worker() {
  local name="$1"; shift
  CONTAINERS+=("${name}")
  docker run -d --name "${name}" --network host "${WORKER_IMAGE}" "$@" > /dev/null
}

# Waits (at most $2 s) for container $1 to exit; prints its exit code.
wait_exit() {
  local name="$1" limit="$2" rc
  if ! rc="$(timeout "${limit}" docker wait "${name}")"; then
    docker logs "${name}" >&2 || true
    fail "container ${name} did not exit within ${limit}s"
  fi
  echo "${rc}"
}

PORT="$(free_port)"
start_broker "${PREFIX}-broker" "${PORT}"
ADDR="127.0.0.1:${PORT}"

say "hello_remote: receiver and sender containers"
start_worker "${PREFIX}-recv" hello_remote recv --broker="${ADDR}"
start_worker "${PREFIX}-send" hello_remote send --broker="${ADDR}" --count=3
rc_send="$(wait_exit "${PREFIX}-send" 60)"
rc_recv="$(wait_exit "${PREFIX}-recv" 60)"
docker logs "${PREFIX}-recv" > "${LOG}/hello-recv.log" 2>&1
docker logs "${PREFIX}-send" > "${LOG}/hello-send.log" 2>&1
sed 's/^/  recv| /' "${LOG}/hello-recv.log"
[[ "${rc_send}" == 0 && "${rc_recv}" == 0 ]] \
  || fail "hello_remote exited ${rc_send} (send) / ${rc_recv} (recv)"
if ! grep -q "received: hello 3 from pid" "${LOG}/hello-recv.log" ||
   ! grep -q "channel closed after 3 greetings" "${LOG}/hello-recv.log"; then
  fail "hello_remote's receiver did not get the 3 greetings and the close"
fi
say "hello_remote across containers: ok"
CHECKS=$(( CHECKS + 1 ))

# --------------------------------------------------------------------- 5. job
docker rm -f "${PREFIX}-broker" "${PREFIX}-recv" "${PREFIX}-send" > /dev/null

# Starts a fresh broker ("jobs" stays closed after a batch), three workers
# (extra worker flags in $2) and the coordinator (--jobs=$3), containers
# named ${PREFIX}-$1-*; sets JOB_ADDR.
start_job() {
  local run="$1" worker_flags="$2" jobs="$3"
  PORT="$(free_port)"
  JOB_ADDR="127.0.0.1:${PORT}"
  start_broker "${PREFIX}-${run}-broker" "${PORT}"
  for id in 1 2 3; do
    # shellcheck disable=SC2086  # worker_flags: zero or more flags
    start_worker "${PREFIX}-${run}-worker-${id}" job_worker \
      --broker="${JOB_ADDR}" --id="${id}" ${worker_flags}
  done
  start_worker "${PREFIX}-${run}-coordinator" job_coordinator \
    --broker="${JOB_ADDR}" --jobs="${jobs}" --workers=3
}

say "job: coordinator + 3 workers, the whole batch"
start_job complete "" 30
rc="$(wait_exit "${PREFIX}-complete-coordinator" 120)"
docker logs "${PREFIX}-complete-coordinator" > "${LOG}/job-complete.log" 2>&1
sed 's/^/  | /' "${LOG}/job-complete.log"
[[ "${rc}" == 0 ]] || fail "job: the coordinator exited ${rc}"
grep -q "coordinator: 30 jobs done (.*), sum of squares 9455: ok" "${LOG}/job-complete.log" \
  || fail "job: no right summary from the coordinator"
for id in 1 2 3; do
  rc="$(wait_exit "${PREFIX}-complete-worker-${id}" 30)"
  [[ "${rc}" == 0 ]] || fail "job: worker ${id} exited ${rc}"
done
say "job complete across containers: ok"
CHECKS=$(( CHECKS + 1 ))

say "job: worker-2's container killed mid-batch"
start_job lost "--job_ms=200" 30
for _ in $(seq 300); do
  docker logs "${PREFIX}-lost-worker-2" 2>&1 | grep -q "worker-2: job" && break
  sleep 0.1
done
docker logs "${PREFIX}-lost-worker-2" 2>&1 | grep -q "worker-2: job" \
  || fail "job: worker-2 did no job"
docker kill "${PREFIX}-lost-worker-2" > /dev/null
rc="$(wait_exit "${PREFIX}-lost-coordinator" 60)"
docker logs "${PREFIX}-lost-coordinator" > "${LOG}/job-lost.log" 2>&1
sed 's/^/  | /' "${LOG}/job-lost.log"
[[ "${rc}" == 1 ]] || fail "job: with worker-2 killed the coordinator exited ${rc}, not 1"
grep -q 'coordinator: batch failed: .*participant "worker-2".* lost' "${LOG}/job-lost.log" \
  || fail "job: the coordinator did not name the lost worker-2"
say "job with a lost worker across containers: ok"
CHECKS=$(( CHECKS + 1 ))
for c in "${CONTAINERS[@]}"; do docker rm -f "${c}" > /dev/null 2>&1 || true; done

# ----------------------------------------------------------------- 6. compose
# shellcheck disable=SC2086  # ${compose} is one or two words, split on purpose
for compose in "${COMPOSES[@]}"; do
  PORT="$(free_port)"
  # docker-compose (v1) or docker compose (v2)
  project="${PREFIX}-$([[ "${compose}" == docker-compose ]] && echo v1 || echo v2)"
  export DCHAN_PORT="${PORT}" DCHAN_TAG=e2e
  COMPOSE_PROJECTS+=("${compose}|${project}")
  say "${compose} ($(${compose} version --short 2>/dev/null || echo '?')): up on 127.0.0.1:${PORT}"
  rc=0
  timeout 180 ${compose} -p "${project}" "${COMPOSE_FILES[@]}" up --no-build \
    --exit-code-from coordinator coordinator > "${LOG}/compose-${project}.log" 2>&1 \
    || rc=$?
  ${compose} -p "${project}" "${COMPOSE_FILES[@]}" logs --no-color \
    > "${LOG}/compose-${project}-all.log" 2>&1 || true
  ${compose} -p "${project}" "${COMPOSE_FILES[@]}" down --remove-orphans --timeout 5 \
    > /dev/null 2>&1 || true
  grep "coordinator: " "${LOG}/compose-${project}.log" \
    | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/  | /'
  [[ ${rc} -eq 0 ]] || fail "${compose} up: the coordinator exited ${rc}"
  grep -q "coordinator: 30 jobs done (.*), sum of squares 9455: ok" \
    "${LOG}/compose-${project}.log" \
    || fail "${compose} up: no right summary from the coordinator"
  say "${compose}: ok"
  CHECKS=$(( CHECKS + 1 ))
done

say "all green"
echo "e2e: ${CHECKS} checks passed"
