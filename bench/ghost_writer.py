"""Ghost hosts for the `ghosts` section: records in etcd that make one lab host see a big cluster.

A ghost host is only records: `hosts/<ghost>` (address in 198.19.0.0/16, never a lease, never a
process) and `endpoints/<ghost>/<container>/<ip>` on the measured network, written exactly as
docs/keys.md describes them, with the store's own encoders. The measured agent programs an FDB and
a neighbour entry in its kernel for each; nothing ever sends a packet to a ghost.

`Layout` (pure) says which ghost holds which endpoint, so that the section knows which neighbour
entries to expect. `main` runs inside the lab host's namespace (`ip netns exec H python -m
bench.ghost_writer ...`), since the lab's etcd listens only there, and is driven in JSON lines:

    -> {"event": "ready", "vni": V}                  the network's VNI, read from the store
    <- {"cmd": "grow", "hosts": N}                    ghosts up to N, in transactions of <= 128 ops
    -> {"event": "grown", "hosts": N, "puts": P, "first": t, "last": t}
    <- {"cmd": "burst", "hosts": N, "round": "forward"}   (or "reverse": undo a forward burst)
    -> {"event": "burst", "events": B, "first": t, "last": t}
    <- {"cmd": "quit"}

A forward burst adds `half` new endpoints (spread over the ghosts) and deletes `half` existing
ones, interleaved, one etcd request per event (each its own revision, as when many hosts change at
once), from a pool of writer threads as fast as etcd takes them; the reverse burst undoes it, so
the cluster is back to N x E endpoints. Times are `time.time()`, comparable across processes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

SUBNET = "10.200.0.0/16"
GHOST_NET = ipaddress.IPv4Network("198.19.0.0/16")
FIRST_OFFSET = 256  # ghost endpoints from 10.200.1.0; the lab's real container is 10.200.0.1
TXN_OPS = 128  # etcd's default --max-txn-ops
WRITERS = 16  # threads writing a burst


@dataclass(frozen=True)
class Layout:
    """Who holds what. Ghost i has base endpoints (i, 0..per_host-1); burst extras are (i, per_host + m)."""

    prefix: str  # ghost host names are <prefix>-g<i>
    per_host: int
    half: int  # a burst adds `half` endpoints and removes `half`
    max_hosts: int

    def __post_init__(self) -> None:
        top = FIRST_OFFSET + self.max_hosts * self.per_host + self.half
        if top >= ipaddress.IPv4Network(SUBNET).num_addresses - 1 or self.max_hosts > 250 * 256:
            raise ValueError("too many ghost endpoints for the layout's address ranges")

    # -- names and addresses -------------------------------------------------------------------
    def host_name(self, i: int) -> str:
        return f"{self.prefix}-g{i:04d}"

    def host_address(self, i: int) -> str:
        return str(GHOST_NET.network_address + (i // 250) * 256 + 1 + i % 250)

    def _index(self, i: int, j: int) -> int:
        """A number unique to each endpoint, from which its IP, MAC and container ID follow."""
        if j < self.per_host:
            return i * self.per_host + j
        return self.max_hosts * self.per_host + (j - self.per_host)

    def ip(self, i: int, j: int) -> str:
        return str(ipaddress.IPv4Network(SUBNET).network_address + FIRST_OFFSET + self._index(i, j))

    def mac(self, i: int, j: int) -> str:
        k = self._index(i, j)
        return "02:ee:" + ":".join(f"{(k >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))

    @staticmethod
    def container(i: int, j: int) -> str:
        return f"{i:032x}{j:032x}"

    # -- who changes in a burst ----------------------------------------------------------------
    def extras(self, n: int) -> list[tuple[int, int]]:
        """The endpoints a forward burst adds at size n: extra m on ghost m*n/half."""
        return [(m * n // self.half, self.per_host + m) for m in range(self.half)]

    def removed(self, n: int) -> list[tuple[int, int]]:
        """The base endpoints a forward burst deletes at size n, spread evenly over the ghosts."""
        total = n * self.per_host
        if total < self.half:
            raise ValueError(f"{n} ghosts hold {total} endpoints, fewer than a burst removes ({self.half})")
        return [divmod(m * total // self.half, self.per_host) for m in range(self.half)]

    def base(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        for i in range(start, stop):
            for j in range(self.per_host):
                yield i, j


# -- the process in the lab host's namespace ---------------------------------------------------
def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Writer:
    def __init__(self, store: str, layout: Layout) -> None:
        from store.etcd import EtcdStore
        from store.keys import network_key
        from store.records import obj_of, parse_network

        self.layout = layout
        self.raw = EtcdStore([store], timeout=10.0)
        kv = self.raw.get(network_key(SUBNET))
        if kv is None:
            raise SystemExit(f"ghost_writer: no network {SUBNET} in the store (run a container on it first)")
        self.vni = parse_network(network_key(SUBNET).rsplit("/", 1)[1], obj_of(kv.value)).vni
        self.hosts = 0

    def _endpoint(self, i: int, j: int) -> tuple[str, bytes]:
        from store.keys import endpoint_key
        from store.records import EndpointRecord, endpoint_value

        lay = self.layout
        net = ipaddress.IPv4Network(SUBNET)
        rec = EndpointRecord(host=lay.host_name(i), container=lay.container(i, j), ip=lay.ip(i, j),
                             prefixlen=net.prefixlen, subnet=SUBNET, vni=self.vni, mac=lay.mac(i, j), ifname="ethwe")
        return endpoint_key(rec.host, rec.container, rec.ip), endpoint_value(rec)

    def _host(self, i: int) -> tuple[str, bytes]:
        from store.keys import host_key
        from store.records import HostRecord, encode

        lay = self.layout
        mac = f"02:ef:00:00:{i >> 8:02x}:{i & 0xFF:02x}"
        return host_key(lay.host_name(i)), encode(HostRecord(lay.host_name(i), lay.host_address(i), mac, 1450))

    def grow(self, hosts: int) -> dict:
        """Ghosts [self.hosts, hosts): each host record before its endpoints, 128 operations a transaction."""
        puts = []
        for i in range(self.hosts, hosts):
            puts.append(self._host(i))
            puts += [self._endpoint(i, j) for j in range(self.layout.per_host)]
        first = time.time()
        for k in range(0, len(puts), TXN_OPS):
            if not self.raw.commit(puts=puts[k:k + TXN_OPS]):
                raise SystemExit("ghost_writer: a preload transaction was refused")
        self.hosts = max(self.hosts, hosts)
        return {"event": "grown", "hosts": self.hosts, "puts": len(puts), "first": first, "last": time.time()}

    def burst(self, hosts: int, direction: str) -> dict:
        """One request per event, adds and deletes interleaved, from WRITERS threads at once."""
        lay = self.layout
        add, remove = lay.extras(hosts), lay.removed(hosts)
        if direction == "reverse":
            add, remove = remove, add
        ops = []
        for a, r in zip(add, remove, strict=True):
            key, value = self._endpoint(*a)
            ops.append((key, value))
            ops.append((self._endpoint(*r)[0], None))

        def write(op: tuple[str, bytes | None]) -> None:
            key, value = op
            if value is None:
                self.raw.delete(key)
            else:
                self.raw.put(key, value)

        with ThreadPoolExecutor(WRITERS) as pool:
            first = time.time()
            list(pool.map(write, ops))
            last = time.time()
        return {"event": "burst", "events": len(ops), "first": first, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--per-host", type=int, required=True)
    parser.add_argument("--half", type=int, required=True)
    parser.add_argument("--max-hosts", type=int, required=True)
    args = parser.parse_args()
    writer = Writer(args.store, Layout(args.prefix, args.per_host, args.half, args.max_hosts))
    emit({"event": "ready", "vni": writer.vni})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "grow":
            emit(writer.grow(cmd["hosts"]))
        elif cmd["cmd"] == "burst":
            emit(writer.burst(cmd["hosts"], cmd["round"]))
        elif cmd["cmd"] == "quit":
            break
    writer.raw.close()


if __name__ == "__main__":
    main()
