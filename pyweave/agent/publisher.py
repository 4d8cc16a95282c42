"""The publisher: writes this host's observed records (endpoints, names, progress) into the store.

It compares with the agent's mirror of the store and writes only what differs (a value, or the lease
it is bound to), so a quiet pass writes nothing. Records of a frozen attachment (an invalid value
written over a working one) are left as they are until the value is fixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from store import keys
from store.records import EndpointRecord, Invalid, dns_value, endpoint_value, progress_value

log = logging.getLogger("pyweave.agent")

# Seconds between two progress records of one host when only the revision moved: short while the
# kernel changes (someone may wait for this host: the CLI's first-ping barrier), long otherwise.
PROGRESS_INTERVAL = 0.25
PROGRESS_IDLE_INTERVAL = 5.0

Mirror = Mapping[str, tuple[bytes, int]]  # key -> (value, lease): this host's records in the view


class Publisher:
    def __init__(self, raw, *, me: str, lease: Callable[[], int]) -> None:
        self.raw = raw
        self.me = me
        self._lease = lease
        self._last_progress = b""
        self._reported: set[Invalid] = set()
        self._last_write = 0.0
        self._vnis: set[int] = set()
        self._interval = PROGRESS_IDLE_INTERVAL

    def _sync(self, mirror: Mirror, prefix: str, want: Mapping[str, bytes], frozen: set[str], what: str) -> None:
        lease = self._lease()
        for key, value in want.items():
            have = mirror.get(key)
            if have is None or have[0] != value or have[1] != lease:
                log.info("publishing %s %s", what, key[len(prefix):])
                self.raw.put(key, value, lease=lease)
        for key in mirror:
            if key.startswith(prefix) and key not in want and key[len(prefix):].split("/")[0] not in frozen:
                log.info("withdrawing %s %s", what, key[len(prefix):])
                self.raw.delete(key)

    def endpoints(self, mirror: Mirror, records: Mapping[str, EndpointRecord], frozen: set[str]) -> None:
        want = {key: endpoint_value(rec) for key, rec in records.items()}
        self._sync(mirror, keys.endpoint_prefix(self.me), want, frozen, "endpoint")

    def names(self, mirror: Mirror, records: Mapping[str, tuple[tuple[str, str], ...]], frozen: set[str]) -> None:
        want = {keys.dns_key(self.me, cid): dns_value(recs) for cid, recs in records.items()}
        self._sync(mirror, keys.dns_prefix(self.me), want, frozen, "names of")

    def progress(self, revision: int, problems: list[Invalid], *, vnis: set[int], urgent: bool) -> bool:
        """The revision applied, the problems found and the networks programmed, written when it
        changed: at once when the problems or the networks changed, else at most once per
        `PROGRESS_INTERVAL` if this pass changed the kernel (`urgent`), once per
        `PROGRESS_IDLE_INTERVAL` if not. A burst of events thus costs a few writes per host, not
        one per event. False when a write was held back: the caller passes again later."""
        body = progress_value(revision, problems, vnis)
        if body == self._last_progress:
            return True
        fresh = set(problems)
        self._interval = PROGRESS_INTERVAL if urgent else min(self._interval, PROGRESS_IDLE_INTERVAL)
        if fresh == self._reported and vnis == self._vnis and time.monotonic() - self._last_write < self._interval:
            return False
        for p in problems:
            if p not in self._reported:
                log.warning("invalid record key=%s problem=%s", p.key, p.problem)
        self._reported = fresh
        self.raw.put(keys.progress_key(self.me), body, lease=self._lease())
        log.debug("progress revision=%d written", revision)
        self._last_progress = body
        self._last_write = time.monotonic()
        self._vnis = set(vnis)
        self._interval = PROGRESS_IDLE_INTERVAL
        return True

    def next_progress_in(self) -> float:
        return max(0.0, self._interval - (time.monotonic() - self._last_write))

