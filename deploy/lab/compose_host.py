"""The main process of a host of pyweave's compose lab (deploy/docker-compose.yml).

At start: deletes the default route Docker gives the container (the underlay network is internal and
its gateway has no address: a lab host has no way out and must not pretend to), then, when
PYWEAVE_AUTOLAUNCH=1, runs `pyweave launch --store http://etcd:2379`, then writes
/run/pyweave-lab-host.ready (the container's healthcheck: healthy = ready). Then it waits; people
act as this host with `docker compose exec hostN pyweave ...`.

When the container is stopped (SIGTERM: `docker compose stop`/`down`): removes this host's workload
containers (label pyweave.host=<this host>; they are containers of the machine's Docker daemon, so
`down` alone would leave them behind), then `pyweave reset` (the agent stops and this host's records
leave the store). Each step is bounded in time; the container exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

HOST_LABEL = "pyweave.host"
PYWEAVE = "/usr/local/bin/pyweave"
STORE = "http://etcd:2379"  # the compose file's etcd service
READY = "/run/pyweave-lab-host.ready"  # the compose file's healthcheck looks for it


def say(message: str) -> None:
    print(f"lab-host: {message}", flush=True)


def host_name() -> str:
    """The name this host has in pyweave: the one chosen at launch, else pyweave's default."""
    try:
        from pyweave.host import HostState

        config = HostState().load()
        if config is not None:
            return config.name
        return HostState().default_name()
    except Exception:  # noqa: BLE001 - pyweave's state is unreadable: fall back to the hostname
        return socket.gethostname()


def drop_default_routes() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                try:
                    ipr.route("del", family=family, dst_len=0, gateway=route.get_attr("RTA_GATEWAY"),
                              oif=route.get_attr("RTA_OIF"), table=route.get_attr("RTA_TABLE", 254))
                    say(f"deleted the default route via {route.get_attr('RTA_GATEWAY')}: a lab host has no way out")
                except Exception as err:  # noqa: BLE001
                    say(f"warning: could not delete the default route: {err}")


def remove_workloads(name: str) -> None:
    from pyweave.docker_runtime import Containers

    try:
        docker = Containers()
        found = docker.list_ids(label=f"{HOST_LABEL}={name}")
    except Exception as err:  # noqa: BLE001
        say(f"warning: cannot list the workload containers of {name}: {err}")
        return
    for cid in found:
        docker.remove(cid)
        say(f"removed workload container {cid[:12]}")


def run(argv: list[str], timeout: float) -> int:
    try:
        return subprocess.run(argv, check=False, timeout=timeout, stdin=subprocess.DEVNULL).returncode
    except subprocess.TimeoutExpired:
        say(f"warning: {' '.join(argv)} took more than {timeout:.0f}s")
        return 124


def main() -> int:
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    drop_default_routes()
    if os.environ.get("PYWEAVE_AUTOLAUNCH", "0") == "1":
        rc = run([PYWEAVE, "launch", "--store", STORE], timeout=60)
        if rc not in (0, 3):
            say(f"`pyweave launch` failed (exit {rc}); the host stays up: try it by hand")
    with open(READY, "w") as f:
        f.write(f"{os.getpid()}\n")
    say(f"host {host_name()} ready: docker compose exec <service> pyweave launch | status | run ...")
    while not stop.wait(3600):
        pass

    name = host_name()
    say(f"stopping host {name}")
    remove_workloads(name)
    from pyweave.host import HostState

    if HostState().load() is not None:
        run([PYWEAVE, "reset"], timeout=20)
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
