"""`pyweave run` notices a container that exited at once (Docker's wait request), not at its next check."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from pyweave.cli.waiting import wait_attached
from store.keys import endpoint_key
from store.memory import MemoryStore


def _ctx(raw) -> SimpleNamespace:
    return SimpleNamespace(me="h1", raw=raw, state=SimpleNamespace(agent_pid=lambda: 1, log_path="agent.log"))


def test_an_exited_container_ends_the_wait_when_docker_says_so():
    stopped = threading.Event()

    def on_exit(callback):
        def later():
            time.sleep(0.05)
            stopped.set()
            callback()

        threading.Thread(target=later, daemon=True).start()

    t0 = time.monotonic()
    revision = wait_attached(_ctx(MemoryStore()), "c" * 64, {"10.0.0.1"}, timeout=5,
                             gone=stopped.is_set, on_exit=on_exit)
    took = time.monotonic() - t0
    assert revision == 0
    assert took < 0.3, f"noticed after {took:.2f} s: the exit was polled for, not signalled"


def test_a_signal_for_a_container_still_running_does_not_end_the_wait():
    raw = MemoryStore()
    calls = []

    def on_exit(callback):
        callback()  # e.g. the wait request failed: the container is asked, and is still running

    def gone():
        calls.append(1)
        return False

    def publish():
        time.sleep(0.1)
        raw.put(endpoint_key("h1", "c" * 64, "10.0.0.1"), b"{}")

    threading.Thread(target=publish, daemon=True).start()
    revision = wait_attached(_ctx(raw), "c" * 64, {"10.0.0.1"}, timeout=5, gone=gone, on_exit=on_exit)
    assert revision > 0
    assert calls
