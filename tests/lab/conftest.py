"""Lab fixtures: hosts are namespaces on a switch namespace, with real etcd and real Docker."""

import pytest

from pyweave_lab import Lab, ensure_test_image, leftovers


@pytest.fixture(scope="session", autouse=True)
def test_image():
    ensure_test_image()


@pytest.fixture(scope="module")
def launched_lab():
    """Three launched hosts: h1 serves the embedded etcd, h2 and h3 join through h1's address."""
    with Lab(3) as lab:
        r = lab.pyweave(0, "launch")
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            r = lab.pyweave(i, "launch", lab.hosts[0].address)
            assert r.returncode == 0, r.stderr
        yield lab
        prefix = lab.prefix
    assert not leftovers(prefix), f"lab left behind: {leftovers(prefix)}"


def pytest_sessionfinish(session, exitstatus):
    """Write docs/reliability.md from what the failure scenarios measured in this run."""
    import datetime
    import os
    import platform
    from pathlib import Path

    from labtools import RELIABILITY

    if not RELIABILITY:
        return
    lines = [
        "# Reliability: what the failure suite measured",
        "",
        "Written by `tests/lab/test_chaos.py` on every run (`scripts/test.sh tests/lab/test_chaos.py`), so it",
        "stays true. Each row is one scenario of issue 5, run on a lab of hosts (network namespaces) with real",
        "etcd, real Docker and real kernel devices.",
        "",
        f"Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores,"
        f" kernel {platform.release()}, Python {platform.python_version()}.",
        "",
        "| # | scenario | measured |",
        "|---|---|---|",
    ]
    for number in sorted(RELIABILITY):
        row = RELIABILITY[number]
        lines.append(f"| {number} | {row['scenario']} | {row['measured']} |")
    missing = sorted(set(range(1, 10)) - set(RELIABILITY))
    if missing:
        lines += ["", f"Not run in this session (or failed before measuring): {', '.join(map(str, missing))}."]
    out = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
    out.write_text("\n".join(lines) + "\n")
