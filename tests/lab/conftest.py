"""Lab fixtures: hosts are namespaces on a switch namespace, with real etcd and real Docker."""

import pytest

from pyweave.lab import Lab, ensure_test_image, leftovers


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
