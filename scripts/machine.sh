# Sourced by scripts/test.sh and scripts/demo.sh (from the repository's root): the machine made ready
# for a run that needs root, a Docker daemon and the local busybox test image.

# prepare_machine WHO WHY: refuse to go on without root (WHY says what needs it), run scripts/setup.sh,
# start a Docker daemon if none answers (and stop it at exit, only if it was started here), build the
# test image if missing. Sets the EXIT, INT and TERM traps.
prepare_machine() {
    local who=$1 why=$2
    if [ "$(id -u)" -ne 0 ]; then
        echo "$who: $why: run as root (sudo $0)" >&2
        exit 1
    fi

    bash scripts/setup.sh

    started_docker=0
    trap stop_docker_if_started_here EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if ! bash scripts/dockerd.sh status >/dev/null 2>&1; then
        started_docker=1
    fi
    bash scripts/dockerd.sh start

    echo "$who: test image busybox:latest (built locally from busybox-static if missing)"
    .venv/bin/python -c 'from pyweave_lab import ensure_test_image; ensure_test_image()'
}

stop_docker_if_started_here() {
    if [ "$started_docker" -eq 1 ]; then
        bash scripts/dockerd.sh stop || true
    fi
}
