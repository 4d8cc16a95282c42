"""Issue 5, scenario 5: a three-member etcd cluster loses its leader; agents and CLI carry on."""

import json
import shutil
import time

import pytest
from labtools import ping, record, run_container, wait_for

from pyweave_lab import Lab, leftovers, sh

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster_lab():
    with Lab(3) as lab:
        peers = ",".join(f"m{i + 1}=http://{h.address}:2380" for i, h in enumerate(lab.hosts))
        members = []
        for i, h in enumerate(lab.hosts):
            members.append(lab.spawn(
                i, shutil.which("etcd"), "--name", f"m{i + 1}", "--data-dir", str(lab.state_root / f"etcd-m{i + 1}"),
                "--listen-client-urls", f"http://{h.address}:2379", "--advertise-client-urls", f"http://{h.address}:2379",
                "--listen-peer-urls", f"http://{h.address}:2380", "--initial-advertise-peer-urls", f"http://{h.address}:2380",
                "--initial-cluster", peers, "--initial-cluster-token", lab.prefix, "--initial-cluster-state", "new",
                "--log-level", "warn",
                log=lab.state_root / f"etcd-m{i + 1}.log",
            ))
        store = ",".join(f"http://{h.address}:2379" for h in lab.hosts)
        wait_for(lambda: etcdctl(lab, "endpoint", "health").returncode == 0, timeout=30, message="etcd cluster")
        for i in range(3):
            r = lab.pyweave(i, "launch", "--store", store)
            assert r.returncode == 0, r.stderr
        yield lab, members, store
        prefix = lab.prefix
    assert not leftovers(prefix)


def etcdctl(lab: Lab, *args: str):
    endpoints = ",".join(f"http://{h.address}:2379" for h in lab.hosts)
    return sh("ip", "netns", "exec", lab.hosts[0].name, "etcdctl", f"--endpoints={endpoints}", *args,
              check=False, env={**lab.env(), "ETCDCTL_API": "3"})


def test_5_killing_the_etcd_leader_needs_no_action_from_anyone(cluster_lab):
    lab, members, _store = cluster_lab
    before = [run_container(lab, i, f"10.112.0.{i + 1}/24", "busybox", "sleep", "3600") for i in range(3)]
    statuses = json.loads(etcdctl(lab, "endpoint", "status", "-w", "json").stdout)
    leader_id = statuses[0]["Status"]["leader"]
    leader = next(i for i, s in enumerate(statuses) if s["Status"]["header"]["member_id"] == leader_id)
    members[leader].kill()
    members[leader].wait()
    killed = time.monotonic()
    # the CLI on every host, the leader's own host included, carries on
    wait_for(lambda: all(lab.pyweave(i, "status").returncode == 0 for i in range(3)), timeout=20, interval=0.5,
             message="status on every host after the leader died")
    recovered = time.monotonic() - killed
    after = [run_container(lab, i, f"10.112.0.{i + 11}/24", "busybox", "sleep", "3600") for i in range(3)]
    written = time.monotonic() - killed
    for i, cid in enumerate(after):
        for j in range(3):
            if i != j:
                assert ping(cid, f"10.112.0.{j + 11}") and ping(before[i], f"10.112.0.{j + 1}")
    record(5,
           f"member m{leader + 1} (the leader) killed; the CLI answered on every host {recovered:.1f} s later; "
           f"a new container on each host was attached and reachable everywhere ({written:.1f} s after the kill)")
