"""A DNS load generator: UDP queries at a fixed rate from one socket, answers matched by query ID.

    python -m bench.dnsload --server 169.254.53.53 --name c1.weave.local. --rate 1000 --seconds 30
    python -m bench.dnsload ... --seconds 5 --hold    at least 5 s, then on until SIGINT

Run in a container's network namespace (`nsenter -t <pid> -n`, the host's Python): busybox's
nslookup starts a process per query, far too slow for 1000 a second. Query i goes out at
start + i / rate (a late sender catches up at once, never bunches more than it fell behind); the
socket is read between sends. An answer that never comes is a drop: the agent's DNS drops what is
over a source's rate limit or finds no free worker (pyweave/dns.py), and a client cannot tell which.
Prints one JSON object: sent, answered, answers by rcode, seconds, and latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import time

GRACE = 1.0  # seconds to wait for late answers after the last query


def query(qid: int, name: str) -> bytes:
    """A DNS query for name's A record, recursion desired."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(server: str, name: str, rate: float, seconds: float, port: int = 53, *, hold: bool = False) -> dict:
    """hold: after `seconds`, go on until SIGINT (a test floods for as long as its check takes).
    SIGINT before that ends the load early; the figures are printed either way."""
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    total = int(rate * seconds)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    rcodes: dict[int, int] = {}
    send_errors = 0
    start = time.monotonic()
    i = 0

    def drain(timeout: float) -> None:
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
        while readable:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            now = time.monotonic()
            if len(data) < 4:
                continue
            qid = struct.unpack("!H", data[:2])[0]
            t = sent_at.pop(qid, None)
            if t is None:
                continue
            latencies.append((now - t) * 1000)
            rcodes[data[3] & 0x0F] = rcodes.get(data[3] & 0x0F, 0) + 1

    while (i < total or hold) and not (interrupted and (i >= total or not hold)):
        now = time.monotonic()
        due = start + i / rate
        if now < due:
            drain(due - now)
            continue
        qid = i % 65536
        sent_at[qid] = now
        try:
            sock.sendto(query(qid, name), (server, port))
        except OSError:
            send_errors += 1
        i += 1
        if i % 16 == 0:
            drain(0)
    load_end = time.monotonic()
    deadline = load_end + GRACE
    while sent_at and time.monotonic() < deadline:
        drain(deadline - time.monotonic())
    sock.close()
    return {
        "sent": i - send_errors, "send_errors": send_errors, "answered": len(latencies),
        "rcodes": {str(k): v for k, v in sorted(rcodes.items())}, "seconds": load_end - start,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dnsload")
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--name", required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hold", action="store_true", help="after --seconds, go on until SIGINT")
    args = parser.parse_args()
    print(json.dumps(run(args.server, args.name, args.rate, args.seconds, args.port, hold=args.hold)), flush=True)


if __name__ == "__main__":
    main()
