"""The store's errors, in two families, each saying whether trying again may help (`retryable`).

- `StoreError`: the store itself. `StoreUnavailable` (etcd unreachable or too slow: retry later) and
  `Compacted` (the revision asked for is gone: list again) are both retryable.
- `ClusterError`: the cluster's state refuses a request. Permanent (`AddressInUse`,
  `SubnetConflict`, an invalid config): the message says what to do. `Contention` (other writers kept
  winning the race) is retryable: the same request may succeed a moment later.

This module imports nothing of the etcd client, so the CLI can catch these without loading gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Base of the store's own errors."""

    retryable = False


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time: retry later."""

    retryable = True

    def __init__(self, endpoints: Sequence[str], cause: object = None) -> None:
        self.endpoints = list(endpoints)
        detail = f" ({cause})" if cause else ""
        super().__init__(f"store unreachable at {','.join(self.endpoints)}{detail}")


class Compacted(StoreError):
    """The revision asked for has been compacted away: list again, then watch from there."""

    retryable = True

    def __init__(self, compacted_revision: int) -> None:
        self.compacted_revision = compacted_revision
        super().__init__(f"revision compacted (oldest available {compacted_revision})")


class ClusterError(Exception):
    """A request the cluster's state refuses; the message says what to do."""

    retryable = False


class AddressInUse(ClusterError):
    pass


class SubnetConflict(ClusterError):
    pass


class Contention(ClusterError):
    """Concurrent writers won every attempt of a transaction; the request may be tried again."""

    retryable = True

    def __init__(self, what: str) -> None:
        super().__init__(f"could not {what}: too much contention, try again")
