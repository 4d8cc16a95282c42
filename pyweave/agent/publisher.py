"""The publisher: writes this host's observed records (endpoints, names, progress) into the store.

It compares with the agent's mirror of the store and writes only what differs (a value, or the lease
it is bound to), so a quiet pass writes nothing. Records of a frozen attachment (an invalid value
written over a working one) are left as they are until the value is fixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from pyweave.agent.prober import publish_due
from pyweave.routes import LinkView
from store import keys
from store.records import EndpointRecord, Invalid, dns_value, endpoint_value, links_value, progress_value

log = logging.getLogger("pyweave.agent")

# Seconds between two progress records of one host when only the revision moved: short while the
# kernel changes (someone may wait for this host: the CLI's first-ping barrier), long otherwise.
PROGRESS_INTERVAL = 0.25
PROGRESS_IDLE_INTERVAL = 5.0
WITHDRAW_PATIENCE = 5.0  # seconds a deletion is trusted before the mirror must show it

Mirror = Mapping[str, tuple[bytes, int]]  # key -> (value, lease): this host's records in the view


class Publisher:
    def __init__(self, raw, *, me: str, lease: Callable[[], int]) -> None:
        self.raw = raw
        self.me = me
        self._lease = lease
        self._last_progress = b""
        self._reported: set[Invalid] = set()
        self._written: dict[str, tuple[bytes | None, int, float]] = {}  # key -> value, lease, revision (or deadline)
        self._last_write = 0.0
        self._vnis: set[int] = set()
        self._interval = PROGRESS_IDLE_INTERVAL
        self._links: dict[str, LinkView] | None = None
        self._links_seen: Mapping[str, LinkView] | None = None  # the prober's snapshot decided on last
        self._links_held = False  # that snapshot had an RTT change held back by the interval
        self.written_revision = 0  # the revision of the last progress record written
        self._links_written = 0.0

    def seed_links(self, views: Mapping[str, LinkView] | None) -> None:
        """What this host's links record says now (after a restart, the record of the last run)."""
        self._links = dict(views) if views is not None else None
        self._links_seen = None

    def links(self, views: Mapping[str, LinkView]) -> None:
        """This host's view of its links (docs/routing.md): written at once when a link goes up or
        down, and when an RTT moved a lot at most every few seconds. Only peers that ever answered
        are listed (a host that never answered is simply not a link). The prober hands out the same
        snapshot until a link changes: that one is decided at once, without a walk over the peers."""
        if views is self._links_seen and not self._links_held:
            return
        snapshot = views
        views = {peer: v for peer, v in views.items() if v.rtt_ms is not None}
        now = time.monotonic()
        if not publish_due(self._links, views, self._links_written, now):
            # due later with no new snapshot only if the interval is all that holds it back
            self._links_seen, self._links_held = snapshot, publish_due(self._links, views, float("-inf"), now)
            return
        self.raw.put(keys.links_key(self.me), links_value(views), lease=self._lease())
        log.info("links published: %s", ", ".join(f"{p}={'up' if v.up else 'down'}" for p, v in sorted(views.items())) or "none")
        self._links = dict(views)
        self._links_written = now
        self._links_seen, self._links_held = snapshot, False

    def _sync(
        self, mirror: Mirror, revision: int, prefix: str, want: Mapping[str, bytes], frozen: set[str], what: str
    ) -> None:
        """Make the records under prefix `want`. The mirror (`revision`) may lag behind this host's
        own writes, most under load: a record written at a revision the mirror has not reached yet
        is not written again (rewriting it on every pass until the watch caught up was the biggest
        cost of a busy cluster: each rewrite is an event for every agent)."""
        lease = self._lease()
        for key, value in want.items():
            mine = self._written.get(key)
            if mine is not None and mine[:2] == (value, lease) and revision < mine[2]:
                continue  # written; the mirror has not seen it yet
            if mirror.get(key) == (value, lease):
                continue
            log.info("publishing %s %s", what, key[len(prefix):])
            self._written[key] = (value, lease, self.raw.put(key, value, lease=lease))
        now = time.monotonic()
        for key in mirror:
            if key.startswith(prefix) and key not in want and key[len(prefix):].split("/")[0] not in frozen:
                mine = self._written.get(key)
                if mine is not None and mine[0] is None and now < mine[2]:
                    continue  # deleted a moment ago; the mirror has not seen it yet
                log.info("withdrawing %s %s", what, key[len(prefix):])
                self.raw.delete(key)
                self._written[key] = (None, 0, now + WITHDRAW_PATIENCE)
        for key in [k for k in self._written if k.startswith(prefix) and k not in want and k not in mirror]:
            del self._written[key]

    def endpoints(self, mirror: Mirror, records: Mapping[str, EndpointRecord], frozen: set[str], *, revision: int = 0) -> None:
        want = {key: endpoint_value(rec) for key, rec in records.items()}
        self._sync(mirror, revision, keys.endpoint_prefix(self.me), want, frozen, "endpoint")

    def names(
        self, mirror: Mirror, records: Mapping[str, tuple[tuple[str, str], ...]], frozen: set[str], *, revision: int = 0
    ) -> None:
        want = {keys.dns_key(self.me, cid): dns_value(recs) for cid, recs in records.items()}
        self._sync(mirror, revision, keys.dns_prefix(self.me), want, frozen, "names of")

    def progress(
        self, revision: int, problems: list[Invalid], *, vnis: set[int], urgent: bool, waited: bool = True
    ) -> bool:
        """The revision applied, the problems found and the networks programmed, written when it
        changed: at once when the problems or the networks changed. A new revision alone is written
        only while someone waits for it (`waited`: a `waits/` record for these networks, newer than
        the last revision written), at most once per `PROGRESS_INTERVAL` if this pass changed the
        kernel (`urgent`), once per `PROGRESS_IDLE_INTERVAL` if not. When nobody waits, a burst of
        events costs no progress write at all (issue 11: at most 3 requests per new endpoint). False
        when a write was held back: the caller passes again later."""
        body = progress_value(revision, problems, vnis)
        if body == self._last_progress:
            return True
        fresh = set(problems)
        if fresh == self._reported and vnis == self._vnis and self._last_progress and not waited:
            return True  # only the revision moved, and nobody waits for it
        # Someone waits (or the kernel just changed): at most PROGRESS_INTERVAL between writes. The
        # wait usually arrives after the pass that applied the change, so `waited` alone must be urgent.
        self._interval = PROGRESS_INTERVAL if urgent or waited else min(self._interval, PROGRESS_IDLE_INTERVAL)
        if fresh == self._reported and vnis == self._vnis and time.monotonic() - self._last_write < self._interval:
            return False
        for p in problems:
            if p not in self._reported:
                log.warning("invalid record key=%s problem=%s", p.key, p.problem)
        self._reported = fresh
        self.raw.put(keys.progress_key(self.me), body, lease=self._lease())
        log.debug("progress revision=%d written", revision)
        self._last_progress = body
        self.written_revision = revision
        self._last_write = time.monotonic()
        self._vnis = set(vnis)
        self._interval = PROGRESS_IDLE_INTERVAL
        return True

    def next_progress_in(self) -> float:
        return max(0.0, self._interval - (time.monotonic() - self._last_write))

