#!/usr/bin/env bash
# Make this host ready to build and run sandboxes: a running Docker engine, debootstrap,
# chromium (browser tests) and the OpenSSH client. Idempotent: a ready host costs about a
# second and touches nothing. Needs root only when something has to be installed or started.
set -euo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

DOCKERD_LOG="${SEALROOM_DOCKERD_LOG:-/var/log/sealroom-dockerd.log}"
DOCKER_WAIT_S="${SEALROOM_DOCKER_WAIT_S:-60}"

say() { echo "ensure-host: $*"; }
die() { echo "ensure-host: error: $*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "$1 needs root; run this script as root"
}

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# 1. Packages: one `apt-get update` and one install for everything missing.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
if ! command -v docker >/dev/null 2>&1 && [[ " ${missing[*]-} " != *" docker.io "* ]]; then
    missing+=(docker.io)
fi
command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)

if [[ ${#missing[@]} -gt 0 ]]; then
    need_root "installing ${missing[*]}"
    say "installing ${missing[*]} (apt)"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
else
    say "packages present (docker, dockerd, debootstrap, chromium, ssh)"
fi

# 2. The engine: start dockerd detached from this shell (and from make) unless it answers.
if docker_answers; then
    say "docker engine answers"
    exit 0
fi
if pgrep -x dockerd >/dev/null 2>&1; then
    say "dockerd is running but not answering yet; waiting"
else
    need_root "starting dockerd"
    say "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    dockerd_pid=$!
    disown || true
fi
for ((waited = 0; waited < DOCKER_WAIT_S; waited++)); do
    if docker_answers; then
        say "docker engine answers after ${waited} s"
        exit 0
    fi
    if [[ -n "${dockerd_pid-}" ]] && ! kill -0 "$dockerd_pid" 2>/dev/null; then
        echo "ensure-host: error: dockerd exited during start-up" >&2
        break
    fi
    sleep 1
done
if ((waited >= DOCKER_WAIT_S)); then
    echo "ensure-host: error: docker engine did not answer within ${DOCKER_WAIT_S} s" >&2
fi
if [[ -f "$DOCKERD_LOG" ]]; then
    echo "ensure-host: last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2
fi
exit 1
