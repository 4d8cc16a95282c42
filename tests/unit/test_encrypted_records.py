"""Records of an encrypted cluster (docs/encryption.md): the host's public key and the config's flag,
left out of a plain cluster's records so that they stay byte for byte as they were."""

import json

import pytest

from store.records import Bad, ClusterConfig, HostRecord, encode, parse_config, parse_host

KEY = "A" * 43 + "="


def test_a_plain_hosts_record_has_no_key_field_and_an_encrypted_ones_round_trips():
    plain = HostRecord("h1", "198.18.0.1", "02:00:00:00:00:01", 1450)
    assert "public_key" not in json.loads(encode(plain))
    keyed = HostRecord("h1", "198.18.0.1", "02:00:00:00:00:01", 1450, public_key=KEY)
    assert parse_host("h1", json.loads(encode(keyed))) == keyed


@pytest.mark.parametrize("bad", ["short", "A" * 44, "A" * 42 + "==", 7])
def test_a_malformed_public_key_is_invalid(bad):
    obj = {"name": "h1", "address": "198.18.0.1", "vtep_mac": "02:00:00:00:00:01", "mtu": 1450, "public_key": bad}
    with pytest.raises(Bad):
        parse_host("h1", obj)


def test_the_configs_encrypted_flag_round_trips_and_must_be_a_boolean():
    assert "encrypted" not in json.loads(encode(ClusterConfig()))
    on = ClusterConfig(encrypted=True)
    assert parse_config(json.loads(encode(on))) == on
    with pytest.raises(Bad):
        parse_config({**json.loads(encode(on)), "encrypted": "yes"})


def test_a_host_cannot_mix_an_encrypted_and_a_plain_cluster():
    from store.cluster import Cluster
    from store.errors import ClusterError
    from store.memory import MemoryStore

    raw = MemoryStore()
    assert Cluster(raw).ensure_config(ClusterConfig(encrypted=True)).encrypted
    assert Cluster(raw).ensure_config(ClusterConfig(encrypted=True)).encrypted
    with pytest.raises(ClusterError, match="the cluster is encrypted: launch with the cluster's secret"):
        Cluster(raw).ensure_config(ClusterConfig())
    plain = MemoryStore()
    Cluster(plain).ensure_config(ClusterConfig())
    with pytest.raises(ClusterError, match="the cluster is not encrypted: launch without --password"):
        Cluster(plain).ensure_config(ClusterConfig(encrypted=True))
