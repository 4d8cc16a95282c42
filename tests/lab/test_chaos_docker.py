"""Issue 5, scenario 6: the Docker daemon restarts; containers with a restart policy come back
and are re-attached with the same address and MAC."""

import subprocess
import time
from pathlib import Path

import pytest

from labtools import docker, mac_of, ping, record, run_container, wait_for
from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

DOCKERD = Path(__file__).resolve().parents[2] / "scripts" / "dockerd.sh"


def test_6_docker_daemon_restart_reattaches_with_same_address_and_mac():
    if not Path("/run/pyweave-dockerd.pid").exists():
        pytest.skip("the Docker daemon was not started by scripts/dockerd.sh, so this test may not restart it")
    with Lab(2) as lab:
        assert lab.pyweave(0, "launch").returncode == 0
        assert lab.pyweave(1, "launch", lab.hosts[0].address).returncode == 0
        c = [run_container(lab, i, f"10.113.0.{i + 1}/24", "--restart", "always", "busybox", "sleep", "3600")
             for i in range(2)]
        macs = [mac_of(x) for x in c]
        assert ping(c[0], "10.113.0.2")
        subprocess.run(["bash", str(DOCKERD), "stop"], check=True, capture_output=True, timeout=120)
        stopped = time.monotonic()
        subprocess.run(["bash", str(DOCKERD), "start"], check=True, capture_output=True, timeout=120)
        for i, cid in enumerate(c):
            wait_for(lambda: f"10.113.0.{i + 1}/24" in docker("exec", cid, "ip", "-o", "-4", "addr").stdout,
                     timeout=30, interval=0.5, message="re-attachment after the daemon restart")
            assert mac_of(cid) == macs[i]
        back = time.monotonic() - stopped
        assert wait_for(lambda: ping(c[0], "10.113.0.2") and ping(c[1], "10.113.0.1"), timeout=10,
                        message="traffic after the daemon restart")
        record(6, "Docker daemon restarted",
               f"containers with --restart always came back with the same address and MAC; attached again "
               f"{back:.1f} s after the daemon was stopped (stop + start included)")
        prefix = lab.prefix
    assert not leftovers(prefix)
