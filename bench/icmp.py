"""A long-lived pinger for the convergence section: `nsenter -t <pid> -n python -m bench.icmp`.

Runs in a container's network namespace (the host's Python, the container's network). It says
`ready`, then for each address read from stdin sends ICMP echo requests every `--interval` seconds
until the first reply or `--timeout`, and prints one JSON line: the address, the wall-clock time of
the first reply (null if none) and how many requests it sent. Being started beforehand, it adds
no process start-up to the time it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"pyweave-bench".ljust(32, b".")
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def first_reply(sock: socket.socket, address: str, *, ident: int, seq0: int, interval: float, timeout: float) -> tuple[float | None, int]:
    """Send echo requests to address until one is answered; (wall time of that reply, sent)."""
    start = time.monotonic()
    deadline = start + timeout
    next_send = start
    sent = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None, sent
        if now >= next_send:
            try:
                sock.sendto(_echo(ident, (seq0 + sent) & 0xFFFF), (address, 0))
            except OSError:
                pass  # e.g. EHOSTUNREACH after a failed neighbour resolution: keep trying
            sent += 1
            next_send += interval
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - time.monotonic()))
        if not ready:
            continue
        packet, (source, _port) = sock.recvfrom(2048)
        got = time.time()
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 8 or source != address:
            continue
        icmp_type, _code, _sum, rid, _rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
        if icmp_type == 0 and rid == ident:
            return got, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    seq = 0
    print("ready", flush=True)
    for line in sys.stdin:
        address = line.strip()
        if not address:
            continue
        got, sent = first_reply(sock, address, ident=ident, seq0=seq, interval=args.interval, timeout=args.timeout)
        seq += sent
        print(json.dumps({"address": address, "first_reply": got, "sent": sent}), flush=True)


if __name__ == "__main__":
    main()
