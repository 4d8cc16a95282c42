"""The lease keeper: binds this host's observed records to an etcd lease and keeps it alive.

Registering reuses the persisted lease while it is still alive, so an agent restart changes nothing
in the store. When the lease is found expired (a long outage), the host registers again and asks for
a full reconcile, which republishes every record on the new lease. A graceful stop unbinds the
records instead (state "stopped"): peers keep talking to this host's containers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from pyweave import __version__
from pyweave.backoff import Backoff
from pyweave.host import HostState
from store import keys
from store.errors import StoreError
from store.records import HostRecord, encode

log = logging.getLogger("pyweave.agent")


class LeaseKeeper:
    def __init__(
        self,
        raw,
        state: HostState,
        *,
        me: str,
        address: str,
        vtep_mac: str,
        mtu: int,
        ttl: int,
        stop: threading.Event,
        on_renewed: Callable[[], None],
        public_key: str = "",
    ) -> None:
        self.raw = raw
        self.state = state
        self.me = me
        self.address = address
        self.vtep_mac = vtep_mac
        self.mtu = mtu
        self.ttl = ttl
        self.stop = stop
        self.on_renewed = on_renewed
        self.public_key = public_key  # an encrypted cluster's host key (docs/encryption.md)
        self.lease = 0

    def host_record(self, state: str = "alive") -> HostRecord:
        return HostRecord(
            name=self.me, address=self.address, vtep_mac=self.vtep_mac, mtu=self.mtu, state=state, version=__version__,
            public_key=self.public_key,
        )

    def register(self) -> None:
        """Bind this host to a lease, retrying with backoff until it works or the agent stops."""
        backoff = Backoff(initial=0.2, cap=2.0)
        while not self.stop.is_set():
            try:
                lease = self.state.read_lease()
                if not lease or self.raw.lease_ttl(lease) <= 0:
                    lease = self.raw.grant_lease(self.ttl)
                    self.state.write_lease(lease)
                self.lease = lease
                self.raw.put(keys.host_key(self.me), encode(self.host_record()), lease=lease)
                self.raw.put(keys.member_key(self.me), encode(self.host_record("member")))
                log.info("registered host=%s address=%s lease=%x", self.me, self.address, lease)
                return
            except StoreError as err:
                log.warning("cannot register host=%s: %s", self.me, err)
                self.stop.wait(backoff.next())

    def run(self) -> None:
        """Keep the lease alive (a thread's body) until the agent stops."""
        backoff = Backoff(initial=0.5, cap=2.0)
        interval = max(1.0, self.ttl / 3)
        while not self.stop.wait(interval):
            try:
                if self.raw.keepalive(self.lease) <= 0:
                    log.warning("lease %x expired; registering again", self.lease)
                    self.state.write_lease(0)
                    self.register()
                    self.on_renewed()
                backoff.reset()
            except StoreError as err:
                log.warning("lease keep-alive failed: %s", err)
                self.stop.wait(backoff.next())

    def unbind(self, records: Iterable[tuple[str, bytes]]) -> None:
        """Graceful stop: mark the host stopped and rewrite its records without the lease, then
        revoke it. Raises StoreError when the store is unreachable (the records then expire)."""
        self.raw.put(keys.host_key(self.me), encode(self.host_record("stopped")))
        for key, value in records:
            self.raw.put(key, value)
        self.raw.revoke_lease(self.lease)
        self.state.write_lease(0)
