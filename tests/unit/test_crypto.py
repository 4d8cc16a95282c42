"""dataplane.crypto: pair keys, the handshake, DATA sealing, replay, rotation (issue 14).

Two `Peer`s are driven against each other with a fake clock; datagrams are handed over by the tests
(the tunnel's sockets are not involved), so loss, reordering, replay and forgery are chosen here.
"""

from __future__ import annotations

import os
import random
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.crypto import (
    DATA_OVERHEAD,
    REPLAY_WINDOW,
    TYPE_DATA,
    TYPE_INIT,
    TYPE_RESP,
    CryptoError,
    Peer,
    StaticKey,
    pair_key,
    public_from_b64,
)

SECRET = b"correct horse battery staple"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pair(clock: FakeClock | None = None, **kwargs) -> tuple[Peer, Peer]:
    clock = clock or FakeClock()
    ka, kb = StaticKey.generate(), StaticKey.generate()
    a = Peer(me="alpha", name="beta", pair_key=pair_key(ka, kb.public, SECRET, "alpha", "beta"), clock=clock, **kwargs)
    b = Peer(me="beta", name="alpha", pair_key=pair_key(kb, ka.public, SECRET, "beta", "alpha"), clock=clock, **kwargs)
    return a, b


def deliver(datagrams: list[bytes], to: Peer, delivered: list[bytes], wire: list[bytes] | None = None) -> list[bytes]:
    """Hand datagrams to one peer, adding the packets it delivers to `delivered` (and each datagram to
    `wire`, if given); returns what it sends back."""
    replies: list[bytes] = []
    for d in datagrams:
        if wire is not None:
            wire.append(d)
        packets, back = to.receive(d)
        delivered += packets
        replies += back
    return replies


def pump(a: Peer, b: Peer, from_a: list[bytes], from_b: list[bytes] = (), wire: list[bytes] | None = None):  # type: ignore[assignment]
    """Hand datagrams back and forth until none are left; returns the packets delivered at a and at b."""
    at_a: list[bytes] = []
    at_b: list[bytes] = []
    from_a, from_b = list(from_a), list(from_b)
    while from_a or from_b:
        replies_of_b = deliver(from_a, b, at_b, wire)
        replies_of_a = deliver(from_b, a, at_a, wire)
        from_a, from_b = replies_of_a, replies_of_b
    return at_a, at_b


def established_pair(**kwargs) -> tuple[Peer, Peer, FakeClock]:
    clock = FakeClock()
    a, b = make_pair(clock, **kwargs)
    _, at_b = pump(a, b, a.seal(b"hello"))
    assert at_b == [b"hello"]
    assert a.established and b.established
    return a, b, clock


def test_pair_keys_agree_and_differ_with_another_secret():
    ka, kb = StaticKey.generate(), StaticKey.generate()
    k_ab = pair_key(ka, kb.public, SECRET, "alpha", "beta")
    assert len(k_ab) == 32
    assert k_ab == pair_key(kb, ka.public, SECRET, "beta", "alpha")
    assert k_ab != pair_key(kb, ka.public, b"another secret", "beta", "alpha")
    assert k_ab != pair_key(ka, kb.public, SECRET, "alpha", "gamma")
    assert public_from_b64(ka.public_b64) == ka.public


def test_a_host_without_the_secret_cannot_complete_a_handshake():
    clock = FakeClock()
    ki, kb = StaticKey.generate(), StaticKey.generate()
    intruder = Peer(me="alpha", name="beta", pair_key=pair_key(ki, kb.public, b"guess", "alpha", "beta"), clock=clock)
    b = Peer(me="beta", name="alpha", pair_key=pair_key(kb, ki.public, SECRET, "beta", "alpha"), clock=clock)
    init = intruder.seal(b"let me in")
    assert len(init) == 1 and init[0][0] == TYPE_INIT
    assert b.receive(init[0]) == ([], [])
    assert b.stats.forged == 1 and b.stats.handshakes_received == 0 and b.stats.handshakes_sent == 0
    assert not b.established and not intruder.established


def test_round_trip_both_ways():
    clock = FakeClock()
    a, b = make_pair(clock)
    first = a.seal(b"ping 1")
    assert [d[0] for d in first] == [TYPE_INIT]
    assert a.seal(b"ping 2") == []  # queued; the INIT is not repeated before handshake_retry
    assert not a.established
    at_a, at_b = pump(a, b, first)
    assert at_b == [b"ping 1", b"ping 2"] and at_a == []
    reply = b.seal(b"pong")
    assert len(reply) == 1 and reply[0][0] == TYPE_DATA and len(reply[0]) == len(b"pong") + DATA_OVERHEAD
    assert a.receive(reply[0]) == ([b"pong"], [])
    assert (a.stats.sealed, a.stats.opened, b.stats.sealed, b.stats.opened) == (2, 1, 1, 2)
    assert a.stats.handshakes_sent == 1 and b.stats.handshakes_sent == 1
    assert a.stats.forged == b.stats.forged == 0


def test_forged_replayed_and_too_old_data_are_dropped_and_counted():
    a, b, _ = established_pair()
    sealed = a.seal(b"x" * 100)[0]
    assert b.receive(os.urandom(len(sealed))) == ([], [])  # random bytes (any type byte)
    assert b.receive(bytes([TYPE_DATA]) + os.urandom(len(sealed) - 1)) == ([], [])
    forged = 2
    for bit in (8, 8 * 6, 8 * 20, 8 * len(sealed) - 1):  # receiver id, counter, ciphertext, tag
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert b.receive(bytes(flipped)) == ([], [])
        forged += 1
    assert b.receive(sealed[:20]) == ([], [])
    forged += 1
    assert b.stats.forged == forged
    assert b.receive(sealed) == ([b"x" * 100], [])
    assert b.receive(sealed) == ([], [])
    assert b.stats.replayed == 1
    old = a.seal(b"old")[0]
    for _ in range(REPLAY_WINDOW):
        b.receive(a.seal(b"new")[0])
    assert b.receive(old) == ([], [])
    assert b.stats.too_old == 1
    assert b.stats.forged == forged and b.stats.replayed == 1


def test_reordering_within_the_window_is_accepted():
    a, b, _ = established_pair()
    packets = [f"packet {i}".encode() for i in range(2000)]
    sealed = [a.seal(p)[0] for p in packets]
    random.Random(14).shuffle(sealed)
    delivered = [p for d in sealed for p in b.receive(d)[0]]
    assert sorted(delivered) == sorted(packets)
    assert b.stats.replayed == b.stats.too_old == b.stats.forged == 0


def run_continuous(a: Peer, b: Peer, clock: FakeClock, seconds: float, step: float, size: int) -> tuple[int, list, list]:
    """Both peers seal one packet per step and tick; datagrams arrive one step later. Returns what was
    sent each way and what arrived."""
    sent_ab: list[bytes] = []
    sent_ba: list[bytes] = []
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    to_a: list[bytes] = []
    to_b: list[bytes] = []
    steps = int(seconds / step)
    for i in range(steps):
        clock.now += step
        arriving_b, arriving_a = to_b, to_a
        to_a = deliver(arriving_b, b, got_b)
        to_b = deliver(arriving_a, a, got_a)
        pa = i.to_bytes(4, "big") + b"a" * (size - 4)
        pb = i.to_bytes(4, "big") + b"b" * (size - 4)
        sent_ab.append(pa)
        sent_ba.append(pb)
        to_b += a.seal(pa) + a.tick()
        to_a += b.seal(pb) + b.tick()
    more_a, more_b = pump(a, b, to_b, to_a)
    return steps, [sent_ab, got_b + more_b], [sent_ba, got_a + more_a]


def continuous_pair_loses_nothing(seconds: float, step: float, size: int, **rotation) -> tuple[Peer, Peer]:
    """run_continuous on a fresh pair with the given rotation settings; asserts that every packet
    arrived, in order, both ways, and that no datagram was refused. Returns the pair (for its stats)."""
    clock = FakeClock()
    a, b = make_pair(clock, **rotation)
    _, (sent_ab, got_b), (sent_ba, got_a) = run_continuous(a, b, clock, seconds=seconds, step=step, size=size)
    assert got_b == sent_ab
    assert got_a == sent_ba
    for s in (a.stats, b.stats):
        assert s.forged == s.replayed == s.too_old == s.queued_dropped == 0, s
    return a, b


def test_rekey_by_time_under_continuous_sealing_loses_nothing():
    a, b = continuous_pair_loses_nothing(seconds=65.0, step=0.05, size=200, rekey_after=10.0)
    assert a.stats.rekeys + b.stats.rekeys >= 2 * 5, (a.stats, b.stats)


def test_rekey_by_bytes_under_continuous_sealing_loses_nothing():
    a, b = continuous_pair_loses_nothing(seconds=30.0, step=0.01, size=1000, rekey_bytes=50_000)
    # 3 MB each way, a rotation per 50 kB sealed by either side
    assert a.stats.rekeys >= 30 and b.stats.rekeys >= 30, (a.stats, b.stats)


def test_old_session_keys_are_gone_after_a_rotation():
    a, b, clock = established_pair(rekey_after=10.0)
    old = a.seal(b"sealed before the rotation")[0]
    clock.now += 10.0
    out = a.tick()
    assert [d[0] for d in out] == [TYPE_INIT]
    pump(a, b, out)
    assert a.stats.rekeys == 1 and b.stats.rekeys == 1
    assert b.receive(old) == ([b"sealed before the rotation"], [])  # the overlap
    clock.now += 11.0
    b.tick()
    late = a.seal(b"new session")  # a's session is still young
    assert b.receive(late[0]) == ([b"new session"], [])
    assert b.receive(old) == ([], []) and b.stats.replayed == 0 and b.stats.too_old == 1


def test_simultaneous_initiation_converges():
    clock = FakeClock()
    a, b = make_pair(clock)
    init_a = a.seal(b"from alpha")
    init_b = b.seal(b"from beta")
    assert [d[0] for d in init_a + init_b] == [TYPE_INIT, TYPE_INIT]
    at_a, at_b = pump(a, b, init_a, init_b)
    assert at_a == [b"from beta"] and at_b == [b"from alpha"]
    assert a.established and b.established
    # one session: each side's next packet opens at the other
    assert b.receive(a.seal(b"again a")[0]) == ([b"again a"], [])
    assert a.receive(b.seal(b"again b")[0]) == ([b"again b"], [])
    assert a.stats.rekeys == b.stats.rekeys == 0
    assert a.stats.forged == b.stats.forged == 0


def test_a_lost_resp_is_retried_and_the_late_one_does_no_harm():
    clock = FakeClock()
    a, b = make_pair(clock)
    init1 = a.seal(b"one")
    resp1 = b.receive(init1[0])[1]  # lost on the way back
    clock.now += 0.5
    init2 = a.tick()
    assert [d[0] for d in init2] == [TYPE_INIT]
    resp2 = b.receive(init2[0])[1]
    _, at_b = pump(a, b, [], resp1)  # the first RESP arrives late after all
    assert at_b == [b"one"]
    _, at_b = pump(a, b, [], resp2)
    assert at_b == []
    assert b.receive(a.seal(b"two")[0]) == ([b"two"], [])


def test_replayed_and_reflected_inits_are_refused():
    clock = FakeClock()
    a, b = make_pair(clock)
    init = a.seal(b"p")[0]
    assert [d[0] for d in b.receive(init)[1]] == [TYPE_RESP]
    assert b.receive(init) == ([], [])
    assert b.stats.replayed == 1
    assert a.receive(init) == ([], [])  # reflected back to its sender
    assert a.stats.forged == 1


def test_a_restarted_peer_recovers_at_the_next_packet():
    a, b, clock = established_pair()
    b2 = Peer(me="beta", name="alpha", pair_key=b._pair_key, clock=clock)  # beta's tunnel restarted
    packets, back = b2.receive(a.seal(b"lost")[0])
    assert packets == [] and [d[0] for d in back] == [TYPE_INIT]
    pump(b2, a, back)
    assert b2.established
    assert b2.receive(a.seal(b"after the restart")[0]) == ([b"after the restart"], [])


def test_queue_is_bounded_and_drops_the_oldest():
    clock = FakeClock()
    a, b = make_pair(clock, queue_max=4)
    first = a.seal(b"0")
    for i in range(1, 10):
        a.seal(str(i).encode())
    assert a.stats.queued_dropped == 6
    _, at_b = pump(a, b, first)
    assert at_b == [b"6", b"7", b"8", b"9"]


def test_the_wire_holds_no_pair_key_secret_or_private_key():
    clock = FakeClock()
    ka, kb = StaticKey.generate(), StaticKey.generate()
    shared = pair_key(ka, kb.public, SECRET, "alpha", "beta")
    a = Peer(me="alpha", name="beta", pair_key=shared, clock=clock)
    b = Peer(me="beta", name="alpha", pair_key=shared, clock=clock)
    wire: list[bytes] = []
    pump(a, b, a.seal(b"marker marker marker"), wire=wire)
    pump(b, a, b.seal(b"marker marker marker"), wire=wire)
    transcript = b"".join(wire)
    assert len(wire) >= 3
    for needle in (shared, SECRET, ka._private_bytes(), kb._private_bytes(), ka.exchange(kb.public), b"marker"):
        assert needle not in transcript


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=120) | st.tuples(st.sampled_from([TYPE_INIT, TYPE_RESP, TYPE_DATA]), st.binary(max_size=100)),
        max_size=8,
    )
)
def test_random_datagrams_never_raise(datagrams):
    a, b, _ = established_pair()
    fresh = Peer(me="gamma", name="alpha", pair_key=bytes(32), clock=FakeClock())
    for d in datagrams:
        if isinstance(d, tuple):
            d = bytes([d[0]]) + d[1]
        for peer in (b, fresh):
            packets, back = peer.receive(d)
            assert packets == []
            assert all(isinstance(x, bytes) for x in back)
    assert b.receive(a.seal(b"still fine")[0]) == ([b"still fine"], [])


def test_key_file_is_0600_kept_and_refused_when_too_open(tmp_path):
    path = tmp_path / "key"
    key = StaticKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.public) == 32 and StaticKey.load_or_create(path).public == key.public
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
    path.chmod(0o640)
    with pytest.raises(CryptoError, match="chmod 600"):
        StaticKey.load_or_create(path)
    path.chmod(0o600)
    path.write_text("not base64 !\n")
    with pytest.raises(CryptoError, match="malformed"):
        StaticKey.load_or_create(path)
    path.write_text("AAAA\n")
    with pytest.raises(CryptoError, match="malformed"):
        StaticKey.load_or_create(path)
    with pytest.raises(CryptoError, match="directory"):
        StaticKey.load_or_create(tmp_path / "missing" / "key")


def test_malformed_public_keys_are_refused():
    key = StaticKey.generate()
    with pytest.raises(CryptoError):
        key.exchange(b"short")
    with pytest.raises(CryptoError):
        key.exchange(bytes(32))  # a low-order point
    with pytest.raises(CryptoError):
        public_from_b64("AAAA")


def test_rekeys_with_lost_handshake_messages_lose_no_data():
    clock = FakeClock()
    a, b = make_pair(clock, rekey_after=10.0)
    rng = random.Random(7)
    sent: list[bytes] = []
    got: list[bytes] = []
    to_a: list[bytes] = []
    to_b: list[bytes] = []
    for i in range(1300):  # 65 s: six rotations, 30 % of INITs and RESPs lost
        clock.now += 0.05
        arriving_b = [d for d in to_b if not (d[0] in (TYPE_INIT, TYPE_RESP) and rng.random() < 0.3)]
        arriving_a = [d for d in to_a if not (d[0] in (TYPE_INIT, TYPE_RESP) and rng.random() < 0.3)]
        to_a = deliver(arriving_b, b, got)
        to_b = deliver(arriving_a, a, [])  # b seals nothing: a has no packets to deliver
        sent.append(i.to_bytes(4, "big"))
        to_b += a.seal(sent[-1]) + a.tick()
        to_a += b.tick()
    got += pump(a, b, to_b, to_a)[1]
    assert got == sent
    assert a.stats.rekeys >= 4 and a.stats.too_old == b.stats.too_old == 0
