"""The tunnel's chunking of sealed messages for UDP GSO and their reassembly from UDP GRO reads
(dataplane/tunnel.py): pure, no sockets (a recording stand-in takes the sends)."""

from __future__ import annotations

import json
import os

import pytest

from dataplane.tunnel import CHUNK, Tunnel

SEGMENT = 1472  # a 1500-byte underlay
SOURCE = "198.19.0.1"


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendmsg(self, parts, ancillary, flags, address) -> int:
        self.sends.append(b"".join(parts))
        return len(self.sends[-1])


@pytest.fixture
def tunnel(tmp_path):
    config = tmp_path / "tunnel.json"
    config.write_text(json.dumps({"me": "h1", "address": SOURCE, "key_file": str(tmp_path / "key"),
                                  "secret_file": str(tmp_path / "secret")}))
    t = Tunnel(str(config))
    t.segment = SEGMENT
    return t


def sends_of(tunnel: Tunnel, message: bytes) -> list[bytes]:
    sock = RecordingSocket()
    tunnel._send_chunked(sock, message, (SOURCE, 6783))
    return sock.sends


def reassemble(tunnel: Tunnel, reads: list[bytes]) -> list[bytes]:
    """What the receive path makes of UDP GRO reads (each a run of SEGMENT-sized datagrams)."""
    out = []
    for data in reads:
        view = memoryview(data)
        message, used = tunnel._chunk_run(SOURCE, view, SEGMENT)
        if message is not None:
            out.append(message)
        for start in range(used, len(data), SEGMENT):
            message = tunnel._chunk(SOURCE, view[start:start + SEGMENT])
            if message is not None:
                out.append(message)
    return out


def test_a_64k_message_goes_out_in_two_gso_sends_and_comes_back_whole(tunnel):
    message = os.urandom(65600)
    sends = sends_of(tunnel, message)
    assert len(sends) == 2 and all(len(s) <= 65507 for s in sends)
    assert reassemble(tunnel, sends) == [message]
    assert reassemble(tunnel, list(reversed(sends))) == [message]  # the short send first
    assert tunnel._pending == {}


def test_every_datagram_read_alone_gives_the_same_message(tunnel):
    message = os.urandom(9000)
    (send,) = sends_of(tunnel, message)
    singles = [send[i:i + SEGMENT] for i in range(0, len(send), SEGMENT)]
    assert reassemble(tunnel, singles) == [message]


def test_a_run_with_a_foreign_last_chunk_takes_the_checked_path(tunnel):
    first, second = os.urandom(5000), os.urandom(5000)
    (a,), (b,) = sends_of(tunnel, first), sends_of(tunnel, second)
    mixed = a[:3 * SEGMENT] + b[3 * SEGMENT:]  # 4 chunks each: a's last one replaced by b's
    assert CHUNK.unpack_from(mixed, 3 * SEGMENT)[1] != CHUNK.unpack_from(mixed)[1]
    assert tunnel._chunk_run(SOURCE, memoryview(mixed), SEGMENT) == (None, 0)
    assert reassemble(tunnel, [mixed]) == []  # neither is complete
    assert reassemble(tunnel, [a[3 * SEGMENT:]]) == [first]  # a's real last chunk completes it


def test_a_duplicated_run_is_not_taken_twice(tunnel):
    message = os.urandom(65600)
    sends = sends_of(tunnel, message)
    assert reassemble(tunnel, [sends[0], sends[0]]) == []
    assert tunnel.counters["malformed"] > 0
    assert reassemble(tunnel, [sends[1]]) == [message]
