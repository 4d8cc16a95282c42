"""Issue 7's operator view on a lab: Prometheus metrics against the lab's state, structured logs,
`pyweave report`.

The module's fixture makes the lab and its three containers; every test only reads them (or undoes
what it writes), so any one passes alone or in any order.
"""

import json
import re
import sys

import pytest
from labtools import run_container, wait_for

from pyweave_lab import Lab, leftovers

pytestmark = pytest.mark.lab

SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:6782/metrics", timeout=5).read().decode())
"""


def metrics(lab: Lab, from_host: int, of_host: int, *, address: str | None = None) -> dict[str, float]:
    target = address or lab.hosts[of_host].address
    out = lab.exec(from_host, sys.executable, "-c", SCRAPE, target, check=True).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("pyweave_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def lab():
    """Two hosts; 10.120.0.1 and .2 on host 1, 10.120.0.3 on host 2. Host 1 serves its metrics on its
    underlay address (`--metrics-addr`), host 2 on loopback only (the default)."""
    with Lab(2) as lab:
        assert lab.pyweave(0, "launch", "--metrics-addr", lab.hosts[0].address).returncode == 0
        assert lab.pyweave(1, "launch", lab.hosts[0].address).returncode == 0
        for i in range(2):
            run_container(lab, 0, f"10.120.0.{i + 1}/24", "busybox", "sleep", "3600")
        run_container(lab, 1, "10.120.0.3/24", "busybox", "sleep", "3600")
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix)


def test_metrics_match_the_lab(lab):
    def expected() -> dict | None:
        m = metrics(lab, 1, 0)  # host 2 scrapes host 1, over the underlay
        ok = (
            m.get('pyweave_hosts{state="alive"}') == 2
            and m.get("pyweave_peers_alive") == 1
            and m.get('pyweave_endpoints{where="local"}') == 2
            and m.get('pyweave_endpoints{where="remote"}') == 1
            and m.get("pyweave_records_invalid") == 0
            and m.get("pyweave_store_connected") == 1
        )
        return m if ok else None

    m = wait_for(expected, timeout=10, interval=0.5, message="metrics matching the lab")
    assert m["pyweave_reconcile_total"] > 0 and m["pyweave_reconcile_seconds_total"] > 0
    assert m["pyweave_watch_relists_total"] >= 1
    try:
        lab.etcdctl(0, "put", "/pyweave/v1/networks/10.121.0.0-24", '{"subnet": "10.121.0.0/24", "vni": "x"}')
        wait_for(lambda: metrics(lab, 1, 0).get("pyweave_records_invalid") == 1, timeout=5,
                 message="invalid record counted")
    finally:
        lab.etcdctl(0, "del", "/pyweave/v1/networks/10.121.0.0-24", check=False)
    wait_for(lambda: metrics(lab, 1, 0).get("pyweave_records_invalid") == 0, timeout=5, message="invalid record gone")


def test_metrics_listen_on_loopback_unless_told_otherwise(lab):
    m = metrics(lab, 1, 1, address="127.0.0.1")  # host 2 scrapes itself
    assert m.get("pyweave_store_connected") == 1
    r = lab.exec(0, sys.executable, "-c", SCRAPE, lab.hosts[1].address)  # host 1 cannot reach them
    assert r.returncode != 0 and "Connection refused" in r.stderr, r.stderr


def test_logs_are_structured_and_name_the_object(lab):
    log = (lab.state_dir(0) / "agent.log").read_text()
    lines = [line for line in log.splitlines() if line.startswith("ts=")]
    assert lines
    pattern = re.compile(r'^ts=\S+ level=(debug|info|warning|error|critical) logger=\S+ msg=".*"( exc=.*)?$')
    assert all(pattern.match(line) for line in lines), [line for line in lines if not pattern.match(line)][:3]
    assert any("creating port" in line and "ethwe" in line for line in lines)


def test_report_is_the_whole_state_as_json(lab):
    r = lab.pyweave(0, "report")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {p["name"] for p in data["peers"]} == {h.name for h in lab.hosts}
    assert any(n["subnet"] == "10.120.0.0/24" for n in data["networks"])
    assert len([e for e in data["endpoints"] if e["subnet"] == "10.120.0.0/24"]) == 3
