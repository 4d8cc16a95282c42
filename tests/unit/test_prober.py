"""The link prober (docs/routing.md section 1) with real UDP sockets on loopback: probers on
127.0.0.1, 127.0.0.2 (and 127.0.0.3) on one port, each in its thread; and the publishing rule."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fakes import wait_for

from pyweave.agent.prober import ANSWER, ECHO, Hello, Prober, decode, encode, publish_due
from pyweave.routes import LinkView

INTERVAL = 0.05
DOWN_AFTER = 0.3


def _free_port(*addresses: str) -> int:
    """A UDP port free on every address."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((addresses[0], 0))
            port = first.getsockname()[1]
            others = []
            try:
                for address in addresses[1:]:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    others.append(s)
                    s.bind((address, port))
                return port
            except OSError:
                continue
            finally:
                for s in others:
                    s.close()
    raise RuntimeError("no common free port")


class Probers:
    """Start and stop probers in threads; every one still running is stopped at teardown."""

    def __init__(self) -> None:
        self.port = _free_port("127.0.0.1", "127.0.0.2", "127.0.0.3")
        self.running: dict[str, tuple[Prober, threading.Event, threading.Thread]] = {}
        self.changes: dict[str, int] = {}

    def start(self, name: str, address: str, peers: dict[str, str], seed: dict[str, LinkView] | None = None) -> Prober:
        self.changes[name] = 0

        def changed() -> None:
            self.changes[name] += 1

        p = Prober(name, address, port=self.port, interval=INTERVAL, down_after=DOWN_AFTER, on_change=changed)
        if seed is not None:
            p.seed(seed)
        p.set_peers(peers)
        stop = threading.Event()
        thread = threading.Thread(target=p.run, args=(stop,), daemon=True, name=f"prober-{name}")
        thread.start()
        assert p.bound.wait(5), p.bind_error
        self.running[name] = (p, stop, thread)
        return p

    def stop(self, name: str) -> None:
        _p, stop, thread = self.running.pop(name)
        stop.set()
        thread.join(5)
        assert not thread.is_alive()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


@pytest.fixture
def probers():
    ps = Probers()
    yield ps
    ps.stop_all()


A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def up(p: Prober, peer: str) -> bool:
    view = p.snapshot().get(peer)
    return view is not None and view.up


def test_wire_format_round_trip_and_malformed():
    hello = Hello(ANSWER | ECHO, 7, 123456789, "host-a", 5, 987654321, 1500)
    packet = encode(hello)
    assert packet[:4] == b"PWP2" and len(packet) == 4 + 1 + 4 + 8 + 4 + 8 + 4 + 6
    assert decode(packet) == hello and hello.answer and hello.echo
    plain = Hello(0, 2**32 - 1, 2**64 - 1, "ü")
    assert decode(encode(plain)) == plain and not plain.answer and not plain.echo
    assert decode(b"") is None
    assert decode(b"XXXX" + packet[4:]) is None
    assert decode(b"PWP1" + packet[4:]) is None  # the ping/pong format of before
    assert decode(packet[:33]) is None  # no sender name
    assert decode(packet[:4] + b"\x04" + packet[5:]) is None  # an unknown flag
    assert decode(packet[:33] + b"\xff\xfe") is None  # not utf-8


def test_link_goes_up_with_an_rtt(probers):
    t0 = time.time()
    a = probers.start("a", A, {"a": A, "b": B})  # its own name is ignored
    b = probers.start("b", B, {"a": A, "b": B})
    wait_for(lambda: up(a, "b") and up(b, "a"), timeout=5, message="link a-b up on both sides")
    view = a.snapshot()["b"]
    assert list(a.snapshot()) == ["b"]
    assert view.rtt_ms is not None and 0 < view.rtt_ms < 100
    assert t0 <= view.since <= time.time()
    assert probers.changes["a"] >= 1 and probers.changes["b"] >= 1  # on_change told of the link going up
    assert a.stats.echoes >= 2 and a.stats.hellos_received >= 1 and a.stats.unknown == 0


def test_link_goes_down_when_the_path_breaks_and_comes_back(probers):
    a = probers.start("a", A, {"b": B})
    b = probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b"), timeout=5, message="link up")
    changes = probers.changes["a"]
    b.drop = lambda hello: True  # nothing of a's reaches b any more, and b's kernel is silent
    stopped = time.monotonic()
    wait_for(lambda: not up(a, "b"), timeout=5, message="link down")
    took = time.monotonic() - stopped
    assert took <= DOWN_AFTER + INTERVAL + 0.15, took  # slack for a loaded machine's scheduler
    assert probers.changes["a"] > changes
    down_since = a.snapshot()["b"].since
    assert a.snapshot()["b"].rtt_ms is not None  # the last RTT measured is kept

    b.drop = None
    wait_for(lambda: up(a, "b"), timeout=5, message="link up again")
    assert a.snapshot()["b"].since > down_since


def test_a_peer_whose_agent_stopped_but_whose_kernel_answers_keeps_its_link_up(probers):
    """A restarting agent must not look like a broken link (traffic would be moved to a relay for
    nothing): its kernel answers the probes with ICMP port unreachable, so the path works."""
    a = probers.start("a", A, {"b": B})
    probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b"), timeout=5, message="link up")
    probers.stop("b")
    answers = a.stats.kernel_answers
    wait_for(lambda: a.stats.kernel_answers >= answers + int(3 * DOWN_AFTER / INTERVAL), timeout=5,
             message="the kernel's answers for three down_after periods")
    assert up(a, "b")


class Silent:
    """A UDP socket bound where a peer would be, that never answers: no pong, no ICMP."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))

    def close(self) -> None:
        self.sock.close()


def test_a_link_never_answered_is_down_and_sends_never_raise(probers):
    # 127.0.0.3: a socket that never answers; 127.0.0.4: nobody listens (ICMP port unreachable only,
    # which says the host is there, not that the link works: a link must have answered once).
    silent = Silent(C, probers.port)
    try:
        a = probers.start("a", A, {"c": C, "x": "127.0.0.4"})
        wait_for(lambda: a.stats.hellos_sent + a.stats.send_errors >= 10, timeout=5, message="probes sent")
        assert probers.running["a"][2].is_alive()
        assert {name: view.up for name, view in a.snapshot().items()} == {"c": False, "x": False}
        assert a.snapshot()["c"].rtt_ms is None
    finally:
        silent.close()


@pytest.mark.parametrize("broken", ["b to a", "a to b"])
def test_a_path_broken_one_way_is_seen_down_from_both_sides(probers, broken):
    """One hello each way per interval measures both directions: whichever breaks, neither side gets
    its hellos echoed any more, so both see the link down (a ping/pong needs 4 packets for this)."""
    a = probers.start("a", A, {"b": B})
    b = probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b") and up(b, "a"), timeout=5, message="link up")
    deaf = a if broken == "b to a" else b
    deaf.drop = lambda hello: True
    wait_for(lambda: not up(a, "b") and not up(b, "a"), timeout=5, message="both sides see the link down")
    hearing = b if deaf is a else a
    received = hearing.stats.hellos_received
    wait_for(lambda: hearing.stats.hellos_received >= received + 5, timeout=5, message="hellos still heard one way")
    assert not up(hearing, "a" if hearing is b else "b")  # heard, but its own hellos are not echoed
    deaf.drop = None
    wait_for(lambda: up(a, "b") and up(b, "a"), timeout=5, message="link up again")


def test_a_steady_link_costs_one_hello_each_way_per_interval(probers):
    a = probers.start("a", A, {"b": B})
    b = probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b") and up(b, "a"), timeout=5, message="link up")
    sent, answers, received = a.stats.hellos_sent, a.stats.answers_sent + b.stats.answers_sent, a.stats.hellos_received
    wait_for(lambda: a.stats.hellos_sent >= sent + 10, timeout=5, message="ten intervals")
    assert a.stats.answers_sent + b.stats.answers_sent == answers  # an up link asks for no answers
    assert a.stats.hellos_received - received <= 10 + 2  # b sends one per interval, as a does
    assert up(a, "b") and up(b, "a")


def test_steady_links_cost_one_wake_up_per_interval_and_keep_true_rtts(probers):
    """Once every link is up, hellos wait in the socket and are read with the next round: one
    wake-up an interval whatever the number of peers (it was one per hello heard, and one per
    round sent). The RTT still counts from each hello's arrival (the kernel's time stamp), not
    from when it was read: read late, a loopback RTT would show most of an interval."""
    addresses = {"a": A, "b": B, "c": C, "d": "127.0.0.4"}
    started = {name: probers.start(name, address, {n: x for n, x in addresses.items() if n != name})
               for name, address in addresses.items()}
    wait_for(lambda: all(up(p, n) for name, p in started.items() for n in addresses if n != name),
             timeout=5, message="every link up")
    a = started["a"]
    # quick mode (hellos read as they come) ends QUICK_INTERVALS after the last link came up
    wait_for(lambda: a._quick_until < a.clock(), timeout=5, message="a's prober out of quick mode")
    wakeups, sent = a.wakeups, a.stats.hellos_sent
    wait_for(lambda: a.stats.hellos_sent >= sent + 3 * 20, timeout=5, message="twenty rounds")
    assert a.wakeups - wakeups <= 20 + 4, (a.wakeups - wakeups, a.stats)  # 3 peers: was 3 + 1 a round
    rtts = {n: peer.rtt_ms for n, peer in a._peers.items()}  # smoothed; snapshot() shows it as last published
    assert all(r is not None and r < 1000 * INTERVAL / 5 for r in rtts.values()), rtts
    assert all(up(p, n) for name, p in started.items() for n in addresses if n != name)


def test_up_needs_echoes_in_a_row(probers):
    a = probers.start("a", A, {"b": B})
    b = probers.start("b", B, {"a": A})

    def every_other_interval(hello: Hello) -> bool:  # b hears a in one interval of a's in two
        return hello.sender == "a" and hello.seq % 2 == 0

    b.drop = every_other_interval
    wait_for(lambda: a.stats.echoes >= 6, timeout=5, message="echoes")
    assert not up(a, "b")  # never two in a row
    b.drop = None
    wait_for(lambda: up(a, "b"), timeout=5, message="link up")


def test_a_seeded_link_stays_up_across_a_restart(probers):
    a = probers.start("a", A, {"b": B})
    probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b"), timeout=5, message="link up")
    published = a.snapshot()
    probers.stop("a")

    a2 = probers.start("a", A, {"b": B}, seed=published)
    seen = a2.snapshot()["b"]  # up from the start (an echo may already have updated its RTT)
    assert seen.up and seen.since == published["b"].since
    echoes_needed = int(2 * DOWN_AFTER / INTERVAL)
    wait_for(lambda: a2.stats.echoes >= echoes_needed, timeout=5, message="echoes after the restart")
    seen = a2.snapshot()["b"]
    assert seen.up and seen.since == published["b"].since
    assert a2.stats.changes.get("b", 0) == 0  # never went down


def test_a_seeded_link_goes_down_when_the_peer_does_not_answer(probers):
    seed = {"c": LinkView(up=True, rtt_ms=0.2, since=1000.0), "gone": LinkView(up=True, rtt_ms=0.2, since=1000.0)}
    silent = Silent(C, probers.port)
    try:
        a = probers.start("a", A, {"c": C}, seed=seed)
        assert up(a, "c") and set(a.snapshot()) == {"c"}  # peers not alive any more are not reported
        started = time.monotonic()
        wait_for(lambda: not up(a, "c"), timeout=5, message="seeded link down")
        assert time.monotonic() - started <= DOWN_AFTER + INTERVAL + 0.15
        assert a.snapshot()["c"].since > 1000.0
    finally:
        silent.close()


def test_peers_come_and_go(probers):
    a = probers.start("a", A, {"b": B})
    probers.start("b", B, {"a": A})
    wait_for(lambda: up(a, "b"), timeout=5, message="link up")
    changes = probers.changes["a"]
    a.set_peers({})
    assert a.snapshot() == {}
    wait_for(lambda: probers.changes["a"] > changes, timeout=5, message="on_change for a peer gone")
    unknown = a.stats.unknown
    wait_for(lambda: a.stats.unknown > unknown, timeout=5, message="b's hellos counted as unknown")
    a.set_peers({"b": B})
    assert not up(a, "b")
    wait_for(lambda: up(a, "b"), timeout=5, message="link up again")


def test_malformed_and_unknown_packets_are_counted_and_ignored(probers):
    a = probers.start("a", A, {"b": B})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((C, 0))
        s.sendto(b"hello", (A, probers.port))
        s.sendto(encode(Hello(ANSWER, 1, 1, "stranger")), (A, probers.port))
        s.sendto(encode(Hello(ANSWER, 1, 1, "b")), (A, probers.port))  # b's name, not b's address
        s.sendto(encode(Hello(ECHO, 1, 1, "b", 1, 1)), (A, probers.port))
        wait_for(lambda: a.stats.malformed >= 1 and a.stats.unknown >= 3, timeout=5, message="packets counted")
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recvfrom(100)  # no answer to strangers
    assert not up(a, "b")


def test_the_interval_grows_with_many_peers():
    p = Prober("a", A, interval=0.1, max_rate=200.0)
    p.set_peers({f"h{i}": f"10.0.{i // 250}.{i % 250 + 1}" for i in range(10)})
    assert p.period == 0.1
    p.set_peers({f"h{i}": f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000)})
    assert p.period == pytest.approx(5.0)


def _view(up: bool = True, rtt: float | None = 10.0, since: float = 0.0) -> LinkView:
    return LinkView(up=up, rtt_ms=rtt, since=since)


def test_publish_due():
    last = {"b": _view(), "c": _view(up=False, rtt=None)}
    assert publish_due(None, {}, 0.0, 0.0)
    assert not publish_due(last, dict(last), 0.0, 100.0)
    # up/down and peers: at once
    assert publish_due(last, {**last, "b": _view(up=False)}, 99.0, 100.0)
    assert publish_due(last, {"b": _view()}, 99.0, 100.0)
    assert publish_due(last, {**last, "d": _view(up=False, rtt=None)}, 99.0, 100.0)
    # RTT: more than half and at least 1 ms, at most every 5 s
    assert publish_due(last, {**last, "b": _view(rtt=16.0)}, 0.0, 100.0)
    assert not publish_due(last, {**last, "b": _view(rtt=16.0)}, 97.0, 100.0)


def test_publish_due_rtt_rule():
    last = {"b": _view(rtt=10.0)}
    assert publish_due(last, {"b": _view(rtt=15.1)}, 0.0, 5.0)  # +51%, 5.1 ms, 5 s after the last write
    assert not publish_due(last, {"b": _view(rtt=15.1)}, 0.0, 4.9)  # too soon
    assert not publish_due(last, {"b": _view(rtt=14.9)}, 0.0, 100.0)  # not more than half
    assert publish_due(last, {"b": _view(rtt=4.9)}, 0.0, 100.0)  # down by more than half
    small = {"b": _view(rtt=0.2)}
    assert not publish_due(small, {"b": _view(rtt=0.9)}, 0.0, 100.0)  # x4.5 but under 1 ms
    assert publish_due(small, {"b": _view(rtt=1.2)}, 0.0, 100.0)  # +1 ms and more than half
    assert publish_due({"b": _view(up=False, rtt=None)}, {"b": _view(up=False, rtt=3.0)}, 0.0, 100.0)  # first RTT
    assert not publish_due({"b": _view(rtt=3.0)}, {"b": _view(rtt=None)}, 0.0, 100.0)


class _Sent:
    """Stands in for the prober's socket in the scheduling tests: records where pings went."""

    def __init__(self) -> None:
        self.to: list[tuple[float, str]] = []
        self.now = 0.0

    def sendto(self, packet: bytes, address: tuple[str, int]) -> None:
        self.to.append((self.now, address[0]))


def _drive(p: Prober, clock: list[float], until: float) -> tuple[_Sent, int]:
    """run()'s schedule without its sleeps: send what is due, jump to the next due time."""
    sock, wakes = _Sent(), 0
    while clock[0] < until:
        sock.now = clock[0]
        p._send_due(sock, clock[0])
        p._expire(clock[0])
        wakes += 1
        clock[0] = max(p._next_wakeup(clock[0]), clock[0] + 1e-6)
    return sock, wakes


def test_many_peers_are_probed_in_turn_within_the_rate_cap():
    clock = [0.0]
    p = Prober("a", A, interval=0.1, max_rate=200.0, clock=lambda: clock[0])
    peers = {f"h{i}": f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1000)}
    p.set_peers(peers)
    sock, wakes = _drive(p, clock, 20.0)
    per_peer: dict[str, int] = {}
    per_second: dict[int, int] = {}
    for at, address in sock.to:
        per_peer[address] = per_peer.get(address, 0) + 1
        per_second[int(at)] = per_second.get(int(at), 0) + 1
    assert set(per_peer) == set(peers.values())
    assert set(per_peer.values()) == {4}  # every 5 s (1000 peers at 200/s), each in turn
    assert max(per_second.values()) <= 200 + 5  # the cap, give or take one round
    assert wakes <= 20.0 / 0.02 + 1  # hellos due within a round go out together


def test_few_peers_cost_one_round_per_interval():
    clock = [0.0]
    p = Prober("a", A, interval=0.1, clock=lambda: clock[0])
    p.set_peers({"b": B, "c": C, "d": "127.0.0.4"})
    sock, wakes = _drive(p, clock, 0.95)
    assert len(sock.to) == 30  # 10 a second each
    assert wakes == 10


def test_an_echo_moves_the_down_deadline_without_a_walk():
    clock = [0.0]
    p = Prober("a", A, interval=0.1, down_after=0.5, clock=lambda: clock[0])
    p.seed({"b": LinkView(up=True, rtt_ms=1.0, since=5.0)})
    p.set_peers({"b": B})
    p._send_due(_Sent(), 0.0)
    clock[0] = 0.3
    answer, _notify = p._heard(Hello(ECHO, 1, 0, "b", 1, 0, 1000), B)  # b echoes the first hello
    assert answer is None  # b did not ask for one
    assert p.snapshot()["b"].rtt_ms == pytest.approx(0.7 * 1.0 + 0.3 * 299.0)  # 0.3 s less the 1 ms b held it
    p._expire(0.6)
    assert up(p, "b")  # 0.6 s after the seed, but 0.3 s after the echo
    p._expire(0.79)
    assert up(p, "b")
    p._expire(0.81)
    assert not up(p, "b")


def test_the_snapshot_is_built_again_only_after_a_change():
    p = Prober("a", A)
    p.set_peers({f"h{i}": f"10.1.0.{i + 1}" for i in range(100)})
    first = p.snapshot()
    assert p.snapshot() is first
    p.set_peers({f"h{i}": f"10.1.0.{i + 1}" for i in range(99)})
    assert p.snapshot() is not first and len(p.snapshot()) == 99


def test_hellos_are_answered_when_they_ask_or_echo_nothing_and_answers_end():
    clock = [0.0]
    p = Prober("a", A, interval=0.1, clock=lambda: clock[0])
    p.set_peers({"b": B})
    clock[0] = 1.0
    # b (re)started: its hello echoes nothing. a answers at once, and asks back, so that b's answer
    # brings a its news now (a's own hellos would be echoed only an interval later).
    answer, _notify = p._heard(Hello(ANSWER, 41, 7_000, "b"), B)
    got = decode(answer) if answer is not None else None
    assert got is not None and got.echo and got.answer
    assert (got.echo_seq, got.echo_sent_ns, got.held_us) == (41, 7_000, 0)
    # b's answer echoes a's: asked, a answers again, but asks nothing (it echoes something)
    answer, _notify = p._heard(Hello(ECHO | ANSWER, 41, 8_000, "b", got.seq, got.sent_ns, 0), B)
    again = decode(answer) if answer is not None else None
    assert again is not None and again.echo and not again.answer  # so b answers no more: no loop
    assert p._heard(Hello(ECHO, 42, 9_000, "b", again.seq, again.sent_ns, 0), B)[0] is None  # a steady hello
    assert p._heard(Hello(ANSWER, 1, 1, "b"), "127.0.0.9") == (None, False)  # b's name, not b's address


def test_with_many_peers_a_link_waits_as_many_periods_as_intervals_before_going_down():
    clock = [0.0]
    p = Prober("a", A, interval=0.2, down_after=0.6, max_rate=200.0, clock=lambda: clock[0])
    p.seed({"b": LinkView(up=True, rtt_ms=1.0, since=5.0)})
    p.set_peers({"b": B} | {f"h{i}": f"10.1.{i // 250}.{i % 250 + 1}" for i in range(999)})
    assert p.period == pytest.approx(5.0)  # 1000 peers at 200 hellos a second
    p._expire(14.9)
    assert up(p, "b")  # three periods (15 s), not 0.6 s: a hello comes only every 5 s
    p._expire(15.1)
    assert not up(p, "b")


def test_an_echo_that_only_refines_an_rtt_leaves_the_snapshot_and_the_up_set_as_they_were():
    """The agent reads up_peers() at every pass and snapshot() when routing: with thousands of peers
    neither may be rebuilt for each of the hundreds of echoes a second that change nothing."""
    clock = [0.0]
    p = Prober("a", A, interval=0.1, clock=lambda: clock[0])
    p.set_peers({"b": B, "c": C})
    for seq, at in ((1, 0.0), (2, 0.1), (3, 0.2)):
        clock[0] = at
        p._send_due(_Sent(), at)
        clock[0] = at + 0.01
        p._heard(Hello(ECHO, seq, 0, "b", seq, int(at * 1e9), 0), B)
        if seq == 2:
            assert up(p, "b") and not up(p, "c")
            view, ups = p.snapshot(), p.up_peers()
            assert ups == {"b"}
    assert p.stats.echoes == 3
    assert p.snapshot() is view and p.up_peers() is ups
    p._expire(10.0)  # no echo since: b goes down
    assert p.up_peers() == frozenset() and not p.snapshot()["b"].up
