"""Endpoints that come and go on another host, for the agent-cost section.

Runs inside the measured host's namespace (`ip netns exec H python -m bench.churn ...`), so it can
watch that host's kernel directly. It registers a ghost host (state "stopped": `pyweave run`'s
peer barrier waits only for live hosts; its address is unused), then writes `--count` endpoint
records for it on the network of `--subnet` at `--rate` per second, waits until the measured
host's VXLAN device of that network holds an FDB entry for each, deletes them at the same rate, waits until the
entries are gone, and removes the ghost host. It prints one JSON line with the timestamps.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time

from pyroute2 import IPRoute

from dataplane.api import vxlan_name
from store.cluster import Cluster
from store.etcd import EtcdStore
from store.keys import endpoint_key, host_key
from store.records import EndpointRecord, HostRecord, encode, endpoint_value

GHOST_ADDRESS = "198.18.0.250"


def _ghost_entries(vni: int) -> int:
    """FDB entries on the network's VXLAN device that point at the ghost host: only the churn's
    (other networks' entries may come and go meanwhile, as earlier sections' containers leave)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=vxlan_name(vni))
        if not found:
            return 0
        return sum(1 for e in ipr.fdb("dump", ifindex=found[0])
                   if e["ifindex"] == found[0] and e.get_attr("NDA_DST") == GHOST_ADDRESS)


def _wait_fdb(vni: int, count: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ghost_entries(vni) == count:
            return time.time()
        time.sleep(0.02)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--ghost", default="bench-ghost")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    raw = EtcdStore([args.store], timeout=5.0)
    state, _ = Cluster(raw).state()
    net = state.networks.get(args.subnet)
    if net is None:
        sys.exit(f"churn: no network {args.subnet} in the store")
    subnet = ipaddress.IPv4Network(args.subnet)
    base = _ghost_entries(net.vni)
    ghost = HostRecord(name=args.ghost, address=GHOST_ADDRESS, vtep_mac="02:ee:ee:00:00:01", mtu=1450, state="stopped")
    raw.put(host_key(args.ghost), encode(ghost))
    keys = []
    out: dict = {"base_fdb": base, "count": args.count}
    out["start"] = time.time()
    gap = 1.0 / args.rate
    for i in range(args.count):
        ip = str(subnet.network_address + 100 + i)
        cid = f"{i:064x}"
        rec = EndpointRecord(host=args.ghost, container=cid, ip=ip, prefixlen=subnet.prefixlen, subnet=args.subnet,
                             vni=net.vni, mac=f"02:ee:00:00:{i // 256:02x}:{i % 256:02x}", ifname="ethwe")
        key = endpoint_key(args.ghost, cid, ip)
        raw.put(key, endpoint_value(rec))
        keys.append(key)
        time.sleep(gap)
    out["created"] = time.time()
    out["programmed"] = _wait_fdb(net.vni, base + args.count, args.timeout)
    out["delete_start"] = time.time()
    for key in keys:
        raw.delete(key)
        time.sleep(gap)
    out["deleted"] = time.time()
    out["unprogrammed"] = _wait_fdb(net.vni, base, args.timeout)
    raw.delete(host_key(args.ghost))
    out["end"] = time.time()
    raw.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
