"""The one-line warning of `launch` and `status` when the store or the traffic between hosts is open
to the underlay (issue 15, item 2): which configurations get it, and what it names."""

from __future__ import annotations

import pytest

from pyweave.cli.secret import exposure_warning

PLAIN = ["http://198.18.0.1:2379"]
TLS = ["https://198.18.0.1:2379"]


def test_no_secret_and_a_plain_store_names_both():
    line = exposure_warning(encrypted=False, store=PLAIN)
    assert line is not None and "\n" not in line
    assert line.startswith("WARNING: no --password given")
    assert "the store (etcd) and the traffic between hosts are open" in line and "docs/security.md" in line


def test_a_secret_and_a_tls_store_get_none():
    assert exposure_warning(encrypted=True, store=TLS) is None


def test_no_secret_with_a_store_of_ones_own_over_tls_names_the_traffic_only():
    line = exposure_warning(encrypted=False, store=TLS)
    assert line is not None and "the traffic between hosts is open" in line and "store" not in line


@pytest.mark.parametrize("store", [PLAIN, TLS + PLAIN])
def test_a_secret_with_a_plain_store_names_the_store_and_the_fix(store):
    line = exposure_warning(encrypted=True, store=store)
    assert line is not None and "plain HTTP" in line and "--store https://" in line and "traffic" not in line
