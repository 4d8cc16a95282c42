"""Enrolment by the secret (pyweave/enrol.py, issue 15 item 1): both sides in memory, then over the
join endpoint. A wrong secret fails both ways; a recorded enrolment does not let a guess be checked
without the X25519 output, which a passive observer does not have."""

from __future__ import annotations

import base64
import json
import socket

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pyweave import enrol, join

SECRET = b"correct horse battery staple"
BUNDLE = {"ca_cert": "-----BEGIN CERTIFICATE-----...", "ca_key": "-----BEGIN PRIVATE KEY-----..."}
REQUEST = json.dumps({"name": "host2"}).encode()


def _run(client_secret: bytes, server_secret: bytes):
    """One enrolment in memory; returns what a passive observer records, and the outcome."""
    client = enrol.ClientHandshake(client_secret)
    server = enrol.ServerHandshake(server_secret, client.hello)
    proof_c = client.prove(server.hello, REQUEST)
    record = {"E_c": client.hello, "E_s": server.hello, "R": REQUEST, "P_c": proof_c}
    if not server.check(proof_c, REQUEST):
        return record, "refused"
    proof_s, sealed = server.seal(json.dumps(BUNDLE).encode())
    record.update(P_s=proof_s, C=sealed)
    return record, json.loads(client.open(proof_s, sealed))


def test_the_same_secret_enrols():
    _, bundle = _run(SECRET, SECRET)
    assert bundle == BUNDLE


def test_a_joiner_with_another_secret_is_refused():
    record, outcome = _run(b"wrong", SECRET)
    assert outcome == "refused"
    assert "C" not in record  # nothing sealed goes to a joiner that did not prove the secret


def test_an_agent_with_another_secret_is_not_believed():
    # A joiner talking to a host that does not know the secret (not the cluster) finds out.
    client = enrol.ClientHandshake(SECRET)
    fake = enrol.ServerHandshake(b"guess", client.hello)
    proof_c = client.prove(fake.hello, REQUEST)
    fake._proof_c = proof_c  # the fake agent skips its check and answers anyway
    proof_s, sealed = fake.seal(b"{}")
    with pytest.raises(enrol.EnrolError, match="does not know the cluster's secret"):
        client.open(proof_s, sealed)


def test_a_tampered_reply_does_not_open():
    client = enrol.ClientHandshake(SECRET)
    server = enrol.ServerHandshake(SECRET, client.hello)
    proof_c = client.prove(server.hello, REQUEST)
    assert server.check(proof_c, REQUEST)
    proof_s, sealed = server.seal(b'{"ca": 1}')
    with pytest.raises(enrol.EnrolError, match="does not open"):
        client.open(proof_s, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    # The proof binds the request: the joiner's name cannot be changed on the way.
    other = enrol.ClientHandshake(SECRET)
    server2 = enrol.ServerHandshake(SECRET, other.hello)
    proof = other.prove(server2.hello, REQUEST)
    assert not server2.check(proof, json.dumps({"name": "evil"}).encode())


def _guess_matches(record: dict, guess: bytes, dh: bytes) -> bool:
    """An offline guess-check of a recorded enrolment: recompute the joiner's proof from a guessed
    secret and a candidate X25519 output."""
    th = enrol.transcript_hash(record["E_c"], record["E_s"])
    k_c, _, _ = enrol.derive(dh, guess, th)
    return enrol.client_proof(k_c, th, record["R"]) == record["P_c"]


def test_a_recording_does_not_let_a_passive_observer_check_a_guess():
    """The proofs and the sealed reply are keyed by HKDF(X25519(e_c, E_s), salt = H(secret)). Given the
    real X25519 output, the right guess is recognised (so the check below is a real check); given
    anything an observer can compute from the recording (the public keys, their hash, zeros), even
    the right secret is not recognised: a guess cannot be tested without the DH secret, which needs
    one of the two ephemeral private keys (never sent, dropped after the handshake)."""
    e_c = X25519PrivateKey.generate()
    client = enrol.ClientHandshake(SECRET)
    client._e = e_c  # the test keeps the joiner's ephemeral key to compute the real DH output
    client.hello = e_c.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    server = enrol.ServerHandshake(SECRET, client.hello)
    proof_c = client.prove(server.hello, REQUEST)
    record = {"E_c": client.hello, "E_s": server.hello, "R": REQUEST, "P_c": proof_c}
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    real_dh = e_c.exchange(X25519PublicKey.from_public_bytes(server.hello))
    assert _guess_matches(record, SECRET, real_dh)
    assert not _guess_matches(record, b"wrong guess", real_dh)
    import hashlib

    public_values = [bytes(32), record["E_c"], record["E_s"], hashlib.sha256(record["E_c"] + record["E_s"]).digest(),
                     bytes(a ^ b for a, b in zip(record["E_c"], record["E_s"]))]
    for candidate in public_values:
        assert not _guess_matches(record, SECRET, candidate)
    # And the secret alone is not in the proof: two enrolments with the same secret share no value.
    record2, _ = _run(SECRET, SECRET)
    assert record2["P_c"] != record["P_c"] and record2["E_c"] != record["E_c"]


def test_a_bad_public_key_is_an_error_not_a_crash():
    with pytest.raises(enrol.EnrolError):
        enrol.ServerHandshake(SECRET, bytes(32))  # a low-order point: the X25519 output would be zero
    with pytest.raises(enrol.EnrolError):
        enrol.ServerHandshake(SECRET, b"short")


# -- over the join endpoint ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent(monkeypatch):
    monkeypatch.setattr(enrol, "FAIL_PAUSE", 0.0)
    port = _free_port()
    names = []

    def bundle(name: str) -> dict:
        names.append(name)
        return BUNDLE

    server = join.serve(lambda: {"name": "h1", "store": ["https://127.0.0.1:2379"], "store_members": 3},
                        "127.0.0.1", port, enroller=enrol.Enroller(SECRET, bundle))
    yield port, names
    server.shutdown()
    server.server_close()


def test_enrolment_over_the_join_endpoint(agent):
    port, names = agent
    assert enrol.enrol("127.0.0.1", SECRET, "host2", port=port) == BUNDLE
    assert names == ["host2"]
    with pytest.raises(enrol.EnrolRefused, match="not the cluster's"):
        enrol.enrol("127.0.0.1", b"wrong", "host3", port=port)
    assert names == ["host2"]
    assert join.ask("127.0.0.1", port=port)["store"] == ["https://127.0.0.1:2379"]


def test_a_cluster_without_a_secret_enrols_nobody():
    port = _free_port()
    server = join.serve(lambda: {"name": "h1", "store": ["http://127.0.0.1:2379"]}, "127.0.0.1", port)
    try:
        with pytest.raises(enrol.EnrolError, match="does not enrol hosts"):
            enrol.enrol("127.0.0.1", SECRET, "host2", port=port)
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_is_an_enrol_error():
    with pytest.raises(enrol.EnrolError, match="cannot be asked"):
        enrol.enrol("127.0.0.1", SECRET, "host2", port=_free_port(), timeout=0.5)


def test_the_agent_keeps_bounded_state(monkeypatch):
    monkeypatch.setattr(enrol, "PENDING_MAX", 2)
    e = enrol.Enroller(SECRET, lambda name: {})
    hello = {"version": 1, "e": base64.b64encode(enrol.ClientHandshake(SECRET).hello).decode()}
    e.hello(hello)
    e.hello(hello)
    with pytest.raises(enrol.EnrolError, match="too many"):
        e.hello(hello)
    with pytest.raises(enrol.EnrolError, match="no such enrolment"):
        e.finish({"session": "nope", "request": "", "proof": ""})
    with pytest.raises(enrol.EnrolError, match="version"):
        e.hello({"version": 9})
