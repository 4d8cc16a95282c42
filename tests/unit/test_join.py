"""The join endpoint (issue 13, item 1): served by every agent, read by `pyweave launch PEER`."""

from __future__ import annotations

import socket

import pytest

from pyweave import join


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_joiner_reads_the_store_from_any_agent():
    port = _free_port()
    server = join.serve(lambda: {"name": "h2", "store": ["http://10.0.0.1:2379"], "store_members": 3},
                        "127.0.0.1", port)
    try:
        reply = join.ask("127.0.0.1", port=port)
        assert reply == {"name": "h2", "store": ["http://10.0.0.1:2379"], "store_members": 3}
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_means_the_peer_is_a_store_itself():
    assert join.ask("127.0.0.1", port=_free_port(), timeout=0.5) is None


def test_an_answer_that_is_no_join_reply_is_refused():
    port = _free_port()
    server = join.serve(lambda: {"name": "h2", "store": []}, "127.0.0.1", port)
    try:
        with pytest.raises(join.JoinError, match="no store URLs"):
            join.ask("127.0.0.1", port=port)
    finally:
        server.shutdown()
        server.server_close()
