#!/usr/bin/env bash
# Make this host ready to build and run sandboxes: a running Docker engine with gVisor
# (`runsc`) registered and live-restore on, debootstrap, chromium (browser tests), the
# OpenSSH client and promtool (unpacked under .cache, no Prometheus server). Idempotent: a ready host costs about a second and touches nothing. Needs
# root only when something has to be installed, configured or started.
set -euo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKERD_LOG="${SEALROOM_DOCKERD_LOG:-/var/log/sealroom-dockerd.log}"
DOCKER_WAIT_S="${SEALROOM_DOCKER_WAIT_S:-60}"
DAEMON_JSON="${SEALROOM_DAEMON_JSON:-/etc/docker/daemon.json}"
DOCKERD_PIDFILE="${SEALROOM_DOCKERD_PIDFILE:-/var/run/docker.pid}"

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
# The SSH gateway's tests use the real clients: ssh, scp, sftp (openssh-client) and rsync.
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# gVisor: the second kernel a policy may ask for (`isolation: gvisor`).
command -v runsc >/dev/null 2>&1 || [[ -x /usr/bin/runsc ]] || missing+=(runsc)

if [[ ${#missing[@]} -gt 0 ]]; then
    need_root "installing ${missing[*]}"
    say "installing ${missing[*]} (apt)"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
else
    say "packages present (docker, dockerd, runsc, debootstrap, chromium, ssh, rsync)"
fi

# 1b. promtool (the monitoring docs' rules and the /metrics output are checked with it),
#     unpacked under .cache, never installed as a service.
bash "$HERE/ensure-promtool.sh" || die "promtool could not be made available"

# 2. The engine's configuration: gVisor registered as runtime `runsc` (ptrace platform, its
#    own network stack off so Docker's --network=none works) and live-restore on, merged into
#    whatever daemon.json already holds. Both are reloadable: a running engine gets SIGHUP,
#    which keeps every container running; it is never stopped or restarted here.
runsc_path="$(command -v runsc 2>/dev/null || echo /usr/bin/runsc)"
config_changed=0
verdict="$(python3 "$HERE/daemon_json.py" --check "$DAEMON_JSON" "$runsc_path")" \
    || die "cannot merge into $DAEMON_JSON (see above); fix it by hand"
if [[ "$verdict" == changed ]]; then
    need_root "registering runsc and live-restore in $DAEMON_JSON"
    python3 "$HERE/daemon_json.py" "$DAEMON_JSON" "$runsc_path" >/dev/null \
        || die "could not write $DAEMON_JSON"
    say "registered runtime runsc ($runsc_path) and live-restore in $DAEMON_JSON"
    config_changed=1
fi

engine_has_config() {
    local runtimes live
    runtimes="$(timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null)" || return 1
    live="$(timeout 10 docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)" || return 1
    [[ "$runtimes" == *'"runsc"'* && "$live" == true ]]
}

find_dockerd() {
    local pid
    if [[ -r "$DOCKERD_PIDFILE" ]]; then
        pid="$(cat "$DOCKERD_PIDFILE")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
        then
            echo "$pid"
            return 0
        fi
    fi
    pid="$(pgrep -x dockerd || true)"
    [[ -n "$pid" && "$pid" != *$'\n'* ]] && echo "$pid"
}

reload_engine() {
    # The engine already answers: SIGHUP makes it reread daemon.json (runtimes and
    # live-restore are among the options it reloads); containers keep running.
    if engine_has_config; then
        say "docker engine has runsc and live-restore"
        return 0
    fi
    local pid
    pid="$(find_dockerd)" || true
    [[ -n "$pid" ]] || die "the engine lacks runsc/live-restore and no single dockerd \
process was found to reload; reload it by hand (kill -HUP <dockerd pid>)"
    need_root "reloading dockerd"
    say "reloading dockerd (pid $pid, SIGHUP: containers keep running)"
    kill -HUP "$pid"
    for ((waited = 0; waited < DOCKER_WAIT_S; waited++)); do
        if engine_has_config; then
            say "docker engine has runsc and live-restore after ${waited} s"
            return 0
        fi
        sleep 1
    done
    die "dockerd did not pick up $DAEMON_JSON within ${DOCKER_WAIT_S} s; see its log"
}

# 3. The engine: start dockerd detached from this shell (and from make) unless it answers.
if docker_answers; then
    say "docker engine answers"
    if ((config_changed)) || ! engine_has_config; then
        reload_engine
    fi
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
        engine_has_config || reload_engine
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
