#!/usr/bin/env bash
# Start or stop a Docker daemon for pyweave's demo and tests, when the machine has none running.
#
#   scripts/dockerd.sh start    if a daemon already answers, use it (and never stop it); else start
#                               `dockerd --bridge=none --iptables=false --ip-forward=false` in the
#                               background (own session, so Ctrl-C in the terminal does not reach it),
#                               log to /var/log/pyweave-dockerd.log, wait until `docker version`
#                               answers (at most 30 s), and record in /run/pyweave-dockerd.pid that
#                               we started it.
#   scripts/dockerd.sh stop     stop the daemon recorded in that pid file, and only that one: SIGTERM,
#                               wait up to 20 s, then SIGKILL; the same for the containerd it spawned
#                               (dockerd stops its own containerd on SIGTERM; this only makes sure).
#   scripts/dockerd.sh status   exit 0 if a daemon answers, and say whether we started it.
#
# The daemon options keep test containers off every network but pyweave's: no docker0 bridge, no
# iptables rules, no IP forwarding. Overrides (for running a second, private daemon):
#   PYWEAVE_DOCKERD_PIDFILE, PYWEAVE_DOCKERD_LOG, PYWEAVE_DOCKERD_ARGS (extra dockerd arguments),
#   PYWEAVE_DOCKERD_WAIT (seconds), and DOCKER_HOST for the client.
set -euo pipefail

PIDFILE=${PYWEAVE_DOCKERD_PIDFILE:-/run/pyweave-dockerd.pid}
LOG=${PYWEAVE_DOCKERD_LOG:-/var/log/pyweave-dockerd.log}
WAIT=${PYWEAVE_DOCKERD_WAIT:-30}
STOP_WAIT=20
read -r -a EXTRA_ARGS <<<"${PYWEAVE_DOCKERD_ARGS:-}"

say() { printf 'dockerd: %s\n' "$*"; }
die() { printf 'dockerd: error: %s\n' "$*" >&2; exit 1; }

answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# is_proc PID NAME: PID is alive (not a zombie) and its command name is NAME.
is_proc() {
    local pid=$1 name=$2 stat
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

recorded() {  # recorded dockerd|containerd -> the pid in the pid file, or nothing
    [ -f "$PIDFILE" ] || return 0
    sed -n "s/^$1=\([0-9][0-9]*\)\$/\1/p" "$PIDFILE" | head -n1
}

log_tail() {
    [ -f "$LOG" ] || return 0
    echo "--- last lines of $LOG:" >&2
    tail -n 15 "$LOG" >&2
}

# stop_pid PID NAME SECONDS: SIGTERM, wait, SIGKILL. Only if PID still is NAME.
stop_pid() {
    local pid=$1 name=$2 wait=$3 i
    is_proc "$pid" "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait * 10; i++)); do
        is_proc "$pid" "$name" || return 0
        sleep 0.1
    done
    say "$name (pid $pid) did not stop within ${wait}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        is_proc "$pid" "$name" || return 0
        sleep 0.1
    done
}

# wait_for_gone PID NAME SECONDS: returns 0 when PID is no longer NAME, 1 on timeout.
wait_for_gone() {
    local pid=$1 name=$2 wait=$3 i
    for ((i = 0; i < wait * 10; i++)); do
        is_proc "$pid" "$name" || return 0
        sleep 0.1
    done
    return 1
}

do_stop() {
    local dpid cpid
    dpid=$(recorded dockerd)
    cpid=$(recorded containerd)
    if [ ! -f "$PIDFILE" ]; then
        say "no daemon was started by scripts/dockerd.sh ($PIDFILE absent); nothing to stop"
        return 0
    fi
    if is_proc "$dpid" dockerd; then
        say "stopping dockerd (pid $dpid)"
        stop_pid "$dpid" dockerd "$STOP_WAIT"
    else
        say "dockerd (pid ${dpid:-?}) is not running any more"
    fi
    if [ -n "$cpid" ] && is_proc "$cpid" containerd; then
        # dockerd stops the containerd it supervises as it shuts down; give that a moment first.
        if ! wait_for_gone "$cpid" containerd 10; then
            say "containerd (pid $cpid) outlived dockerd; stopping it"
            stop_pid "$cpid" containerd "$STOP_WAIT"
        fi
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

do_start() {
    local dpid cpid i
    dpid=$(recorded dockerd)
    if answers; then
        if is_proc "$dpid" dockerd; then
            say "already running (pid $dpid, started by scripts/dockerd.sh)"
        else
            [ -f "$PIDFILE" ] && rm -f "$PIDFILE"  # stale: that daemon is gone, another one answers
            say "a Docker daemon is already running; using it (it will not be stopped by pyweave's scripts)"
        fi
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "no Docker daemon answers and starting one needs root: sudo $0 start"
    command -v dockerd >/dev/null || die "dockerd is not installed; run scripts/setup.sh (package docker.io)"
    command -v docker >/dev/null || die "the docker client is not installed; run scripts/setup.sh (package docker.io)"

    if is_proc "$dpid" dockerd; then
        say "dockerd (pid $dpid, started by scripts/dockerd.sh) does not answer yet; waiting for it"
    else
        rm -f "$PIDFILE"
        mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
        printf '=== %s scripts/dockerd.sh start\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$LOG"
        # setsid: a session of its own, so a Ctrl-C in the terminal stops the demo, not the daemon
        # the demo still needs for its cleanup. (In a non-interactive shell a background job is not
        # a process group leader, so setsid does not fork and $! is dockerd's pid.)
        setsid dockerd --bridge=none --iptables=false --ip-forward=false "${EXTRA_ARGS[@]}" \
            </dev/null >>"$LOG" 2>&1 &
        dpid=$!
        printf 'dockerd=%s\n' "$dpid" >"$PIDFILE"
        say "started dockerd (pid $dpid, log $LOG); waiting up to ${WAIT}s for it to answer"
    fi
    for ((i = 0; i < WAIT * 5; i++)); do
        if answers; then
            cpid=$(pgrep -P "$dpid" -x containerd | head -n1 || true)
            if [ -n "$cpid" ]; then
                printf 'dockerd=%s\ncontainerd=%s\n' "$dpid" "$cpid" >"$PIDFILE"
            fi
            say "ready: Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null)${cpid:+ (containerd pid $cpid, spawned by dockerd)}"
            return 0
        fi
        if ! is_proc "$dpid" dockerd; then
            rm -f "$PIDFILE"
            log_tail
            die "dockerd exited during start; see $LOG"
        fi
        sleep 0.2
    done
    log_tail
    say "dockerd did not answer within ${WAIT}s; stopping it"
    do_stop
    die "dockerd did not answer within ${WAIT}s; see $LOG"
}

do_status() {
    local dpid
    dpid=$(recorded dockerd)
    if answers; then
        if is_proc "$dpid" dockerd; then
            say "running (pid $dpid, started by scripts/dockerd.sh)"
        else
            say "running (not started by scripts/dockerd.sh)"
        fi
        return 0
    fi
    say "no Docker daemon answers"
    return 1
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
