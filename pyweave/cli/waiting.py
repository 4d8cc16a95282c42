"""Waiting for the result of an intent: the store answering, the agent publishing, the peers applying.

The CLI writes intents and waits, each wait with a deadline and a clear message. The waits read only
the keys they need: this host's endpoints of one container, its agent's progress record (which names
the problems it found), and the progress records of the live peers.
"""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Callable

from pyweave.cli.base import Context, fail, say
from store import keys
from store.errors import StoreError
from store.records import parse_progress, wait_value

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


class _Changes:
    """Events of some prefixes, from a revision on, in one queue (the client's watch threads put,
    the waiting command gets). Closing cancels the watches."""

    def __init__(self, raw, prefixes: list[str], start_revision: int) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._cancels = [raw.watch(p, start_revision=start_revision, callback=self.queue.put) for p in prefixes]

    def next(self, timeout: float):
        """The next WatchBatch (None after `timeout`); a broken watch raises its StoreError."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, StoreError):
            raise item
        return item

    def close(self) -> None:
        for cancel in self._cancels:
            cancel()


_EXITED = object()  # put in the queue of changes when the container may have exited


def wait_attached(
    ctx: Context,
    cid: str,
    present: set[str],
    absent: frozenset[str] | set[str] = frozenset(),
    timeout: float = ATTACH_TIMEOUT,
    gone: Callable[[], bool] | None = None,
    on_exit: Callable[[Callable[[], None]], None] | None = None,
) -> int:
    """Wait until the agent has published every address in `present` and none in `absent` for
    cid (others may come and go meanwhile: concurrent attaches); returns the store revision of
    the newest publication, or 0 when `gone()` says the container exited. Fails early with the
    agent's own problem report. Lists once, then watches: no polling of the store. `on_exit(cb)`
    arranges for `cb()` to be called when the container stops (Docker's wait request): `gone()` is
    then asked at once, not at its next twice-a-second check (`run ... busybox true`)."""
    prefix = keys.endpoint_prefix(ctx.me, cid)
    akey = keys.attachment_key(ctx.me, cid)
    pkey = keys.progress_key(ctx.me)
    kvs, revision = ctx.raw.list(prefix)
    have = {kv.key[len(prefix):]: kv.mod_revision for kv in kvs}
    if present <= set(have) and not (absent & set(have)):
        return max(have.values(), default=revision)
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 0.5
    changes = _Changes(ctx.raw, [prefix, pkey], revision + 1)
    if on_exit is not None:
        on_exit(lambda: changes.queue.put(_EXITED))
    try:
        prog = ctx.raw.get(pkey)
        _check_problems(cid, akey, prog.value if prog else None)
        while True:
            batch = changes.next(timeout=0.5)
            if batch is _EXITED:
                if gone is None or gone():
                    return 0  # it exited (`run ... true`): the attachment waits for its next start
                continue
            for change in batch.changes if batch else ():
                if change.key == pkey:
                    _check_problems(cid, akey, change.value)
                elif change.value is None:
                    have.pop(change.key[len(prefix):], None)
                else:
                    have[change.key[len(prefix):]] = change.revision
            if present <= set(have) and not (absent & set(have)):
                return max(have.values(), default=batch.revision if batch else revision)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + 0.5
            if time.monotonic() > deadline:
                fail(f"the agent did not apply the change to {cid[:12]} within {timeout:.0f}s; see {ctx.state.log_path}")
            if ctx.state.agent_pid() is None:
                fail("pyweave is not running on this host; run `pyweave launch`")
            if gone is not None and gone():
                return 0  # it exited (`run ... true`): the attachment waits for its next start
    finally:
        changes.close()


def _check_problems(cid: str, akey: str, progress: bytes | None) -> None:
    for p in parse_progress(progress).problems if progress else ():
        if p.key == akey:
            fail(f"the agent could not attach {cid[:12]}: {p.problem}")


def wait_peers(ctx: Context, revision: int, vnis: set[int], timeout: float = PEER_BARRIER_TIMEOUT) -> None:
    """Wait until every live peer that programs one of these networks has processed `revision`,
    so its kernel knows the new endpoint before anyone pings it (a peer with no port on them has
    nothing to program; one that gets a port later reads the endpoint then). A slow peer only
    costs the timeout: it is not an error. Lists the peers and their progress once, then watches
    the progress records."""
    state, _ = ctx.cluster.state("hosts/")
    alive = {h for h, rec in state.hosts.items() if rec.state == "alive" and h != ctx.me}
    progress, listed = ctx.raw.list(keys.PROGRESS_ROOT)
    known = {kv.key[len(keys.PROGRESS_ROOT):]: parse_progress(kv.value) for kv in progress}

    def concerned(host: str) -> bool:
        p = known.get(host)
        return p is None or p.vnis is None or bool(vnis & set(p.vnis))

    waited = {h for h in alive if concerned(h)} | _relays(ctx, {h for h in alive if concerned(h)})
    behind = {h for h in waited & alive if h not in known or known[h].revision < revision}
    if not behind:
        return
    deadline = time.monotonic() + timeout
    changes = _Changes(ctx.raw, [keys.PROGRESS_ROOT, keys.HOSTS], listed + 1)
    # Say that we wait: agents write a progress record for a new revision alone only then.
    wait = keys.wait_key(f"{ctx.me}-{secrets.token_hex(6)}")
    ctx.raw.put(wait, wait_value(revision, vnis))
    try:
        while behind and time.monotonic() < deadline:
            batch = changes.next(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            for change in batch.changes if batch else ():
                if change.key.startswith(keys.HOSTS):
                    if change.value is None:  # a peer that died is not waited for
                        behind.discard(change.key[len(keys.HOSTS):])
                    continue
                host = change.key[len(keys.PROGRESS_ROOT):]
                if change.value is not None:
                    known[host] = parse_progress(change.value)
                    if known[host].revision >= revision or (host not in waited and not concerned(host)):
                        behind.discard(host)
    finally:
        changes.close()
        try:
            ctx.raw.delete(wait)
        except StoreError:
            pass  # a wait left behind is harmless: satisfied by the next progress any peer writes
    if behind:
        say(f"warning: peers {', '.join(sorted(behind))} have not yet applied the change")


def _relays(ctx: Context, peers: set[str]) -> set[str]:
    """The hosts that relay between this host and these peers (docs/routing.md), both ways: they
    program the new endpoint on their transit devices, so they are waited for too. One read of the
    links records; routes are computed only for peers not reached directly."""
    from pyweave.routes import routes_from, usable_links
    from store.records import Bad, parse_links

    kvs, _ = ctx.raw.list(keys.LINKS)
    views = {}
    for kv in kvs:
        try:
            views[kv.key[len(keys.LINKS):]] = parse_links(kv.value)
        except Bad:
            continue
    if not views:
        return set()
    links = usable_links(views)
    mine = routes_from(ctx.me, links, peers)
    out: set[str] = set()
    for peer, route in mine.items():
        if route.reachable and not route.direct:
            out.update(route.path[:-1])
            back = routes_from(peer, links, [ctx.me]).get(ctx.me)
            if back is not None and back.reachable:
                out.update(back.path[:-1])
    return out - {ctx.me}
