"""Waiting for the result of an intent: the store answering, the agent publishing, the peers applying.

The CLI writes intents and waits, each wait with a deadline and a clear message. The waits read only
the keys they need: this host's endpoints of one container, its agent's progress record (which names
the problems it found), and the progress records of the live peers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyweave.cli.base import Context, fail, say
from store import keys
from store.errors import StoreError
from store.records import parse_progress

ATTACH_TIMEOUT = 20.0
PEER_BARRIER_TIMEOUT = 5.0


def wait_store(raw, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    shown = False
    while time.monotonic() < deadline:
        try:
            raw.revision()
            return
        except StoreError as err:
            last = err
            if not shown:
                say(f"waiting for {what} ...")
                shown = True
            time.sleep(0.3)
    fail(f"{last}; is pyweave launched there, and the address right?")


def wait_attached(
    ctx: Context,
    cid: str,
    present: set[str],
    absent: frozenset[str] | set[str] = frozenset(),
    timeout: float = ATTACH_TIMEOUT,
    gone: Callable[[], bool] | None = None,
) -> int:
    """Wait until the agent has published every address in `present` and none in `absent` for
    cid (others may come and go meanwhile: concurrent attaches); returns the store revision of
    the newest publication, or 0 when `gone()` says the container exited. Fails early with the
    agent's own problem report."""
    prefix = keys.endpoint_prefix(ctx.me, cid)
    akey = keys.attachment_key(ctx.me, cid)
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 0.5
    while True:
        kvs, revision = ctx.raw.list(prefix)
        have = {kv.key[len(prefix):] for kv in kvs}
        if present <= have and not (absent & have):
            return max([kv.mod_revision for kv in kvs], default=revision)
        prog = ctx.raw.get(keys.progress_key(ctx.me))
        if prog is not None:
            for p in parse_progress(prog.value).problems:
                if p.key == akey:
                    fail(f"the agent could not attach {cid[:12]}: {p.problem}")
        if time.monotonic() > deadline:
            fail(f"the agent did not apply the change to {cid[:12]} within {timeout:.0f}s; see {ctx.state.log_path}")
        if ctx.state.agent_pid() is None:
            fail("pyweave is not running on this host; run `pyweave launch`")
        if gone is not None and time.monotonic() > next_check:
            next_check = time.monotonic() + 0.5
            if gone():
                return 0  # it exited (`run ... true`): the attachment waits for its next start
        time.sleep(0.05)


def wait_peers(ctx: Context, revision: int, timeout: float = PEER_BARRIER_TIMEOUT) -> None:
    """Wait until every live peer's agent has processed `revision`, so its kernel knows the new
    endpoint before anyone pings it. A slow peer only costs the timeout: it is not an error."""
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    while time.monotonic() < deadline:
        state, _ = ctx.cluster.state("hosts/")
        alive = [h for h, rec in state.hosts.items() if rec.state == "alive" and h != ctx.me]
        progress, _ = ctx.raw.list(keys.PROGRESS_ROOT)
        done = {kv.key[len(keys.PROGRESS_ROOT):]: parse_progress(kv.value).revision for kv in progress}
        behind = [host for host in alive if done.get(host, 0) < revision]
        if not behind:
            return
        time.sleep(0.05)
    say(f"warning: peers {', '.join(behind)} have not yet applied the change")
