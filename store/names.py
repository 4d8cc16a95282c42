"""Names added to or removed from a container's own (`pyweave dns-add`, `dns-remove`), kept in
`dnsextra/<host>/<container>`. A mixin of `store.cluster.Cluster`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from store import keys
from store.errors import Contention
from store.records import Bad, dns_extra_value, fqdn, obj_of, parse_dns_extra

if TYPE_CHECKING:
    from store.raw import RawStore

RETRIES = 8


class NameOps:
    raw: RawStore

    def dns_extra(
        self,
        host: str,
        container: str,
        *,
        add: Iterable[tuple[str, str]] = (),
        remove: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Add or remove names of a container in one transaction (a name added cancels its removal
        and the other way round)."""
        key = keys.dns_extra_key(host, container)
        adding = [(fqdn(n), ip) for n, ip in add]
        removing = [(fqdn(n), ip) for n, ip in remove]
        for _ in range(RETRIES):
            kv = self.raw.get(key)
            have_add: list[tuple[str, str]] = []
            have_remove: list[tuple[str, str]] = []
            if kv is not None:
                try:
                    parsed_add, parsed_remove = parse_dns_extra(obj_of(kv.value))
                    have_add, have_remove = list(parsed_add), list(parsed_remove)
                except Bad:
                    pass
            new_add = [p for p in have_add if p not in removing] + [p for p in adding if p not in have_add]
            new_remove = [p for p in have_remove if p not in adding] + [p for p in removing if p not in have_remove]
            if self.raw.commit(
                absent=[] if kv is not None else [key],
                unchanged={key: kv.mod_revision} if kv is not None else {},
                puts=[(key, dns_extra_value(new_add, new_remove))],
            ):
                return
        raise Contention(f"update names of {container[:12]}")
