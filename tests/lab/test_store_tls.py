"""Issue 15 item 1 in the lab: with `--password` the embedded etcd serves clients and peers over TLS
only, with certificates of the cluster's CA (docs/security.md). etcdctl in plain HTTP, or over TLS
without a client certificate, is refused; etcdctl with the files docs/keys.md names works; hosts
enrol with the secret (3 store members form over TLS), a wrong secret cannot enrol (exit 1)."""

from __future__ import annotations

import json
import stat

import pytest
from labtools import ping, run_container, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def tls_lab():
    with Lab(3) as lab:
        r = lab.pyweave(0, "launch", "--password", SECRET)
        assert r.returncode == 0, r.stderr
        assert "WARNING" not in r.stderr, r.stderr  # a secret: store and traffic are not open
        for i in (1, 2):
            r = lab.pyweave(i, "launch", lab.hosts[i - 1].address, "--password", SECRET)
            assert r.returncode == 0, r.stderr
            assert "WARNING" not in r.stderr, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def etcdctl(lab: Lab, host: int, *args: str) -> tuple[int, str]:
    r = lab.exec(host, "env", "ETCDCTL_API=3", "etcdctl", "--dial-timeout=2s", "--command-timeout=3s", *args, timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_the_store_is_tls_only_with_client_certificates(tls_lab):
    lab = tls_lab
    addr = lab.hosts[0].address
    tls = lab.state_dir(1) / "tls"  # another host's files: any enrolled host's work
    for key in ("ca.key", "client.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    code, out = etcdctl(lab, 1, f"--endpoints=http://{addr}:2379", "get", "--prefix", "/pyweave/v1/hosts/", "--keys-only")
    assert code != 0, out
    code, out = etcdctl(lab, 1, f"--endpoints=https://{addr}:2379", f"--cacert={tls}/ca.crt",
                        "get", "--prefix", "/pyweave/v1/hosts/", "--keys-only")
    assert code != 0, out
    code, out = etcdctl(lab, 1, f"--endpoints=https://{addr}:2379", f"--cacert={tls}/ca.crt", f"--cert={tls}/client.crt",
                        f"--key={tls}/client.key", "get", "--prefix", "/pyweave/v1/hosts/", "--keys-only")
    assert code == 0, out
    assert {f"/pyweave/v1/hosts/{lab.hosts[i].name}" for i in range(3)} <= set(out.split())
    # The peer port refuses a client without a certificate of the CA too.
    r = lab.exec(1, "sh", "-c", f"echo | timeout 5 openssl s_client -connect {addr}:2380 -quiet 2>&1; true")
    assert "certificate required" in r.stdout or "alert" in r.stdout.lower(), r.stdout


def test_the_store_forms_three_members_over_tls_and_the_cluster_works(tls_lab):
    lab = tls_lab

    def members() -> list[dict]:
        r = lab.pyweave(2, "status", "--json")
        assert "WARNING" not in r.stderr, r.stderr
        return json.loads(r.stdout).get("store", {}).get("members", []) if r.returncode == 0 else []

    wait_for(lambda: len([m for m in members() if not m.get("learner")]) == 3, timeout=60, message="3 voting members")
    urls = [u for m in members() for u in m["peer_urls"]]
    assert len(urls) == 3 and all(u.startswith("https://") for u in urls), urls
    a = run_container(lab, 0, "10.8.0.1/24", "busybox", "sleep", "3600")
    run_container(lab, 2, "10.8.0.3/24", "busybox", "sleep", "3600")
    assert ping(a, "10.8.0.3")


def test_a_wrong_secret_cannot_enrol(tls_lab):
    lab = tls_lab
    extra = lab.add_extra("x", 9)
    r = lab.pyweave(extra, "launch", lab.hosts[1].address, "--password", "wrong")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "enrolment" in r.stderr and "secret is not the cluster's" in r.stderr, r.stderr
    assert lab.agent_pid(extra) is None
    assert not (lab.state_dir(extra) / "tls" / "ca.key").exists()


def test_a_launch_that_fails_after_enrolment_leaves_no_configuration(tls_lab):
    """Enrolment succeeds (right secret), then a later check refuses the launch (--metrics-addr is
    not an address of this host): tls/ (the cluster's CA and key, this host's certificate) must not
    stay behind, neither in a state directory that was there before nor as a new one."""
    lab = tls_lab
    old = lab.add_extra("y", 10)
    state = lab.state_dir(old)
    state.mkdir(parents=True)
    (state / "agent.log").write_text("an earlier run's log\n")
    fresh = lab.add_extra("z", 11)
    for host in (old, fresh):
        r = lab.pyweave(host, "launch", lab.hosts[0].address, "--password", SECRET, "--metrics-addr", "192.0.2.1")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "--metrics-addr 192.0.2.1" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert lab.agent_pid(host) is None
    assert sorted(p.name for p in state.iterdir()) == ["agent.log"], list(state.rglob("*"))
    assert not lab.state_dir(fresh).exists(), list(lab.state_dir(fresh).rglob("*"))
