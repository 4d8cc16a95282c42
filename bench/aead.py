"""AEAD throughput on this machine (issue 14): which cipher `dataplane.crypto` seals with.

Measures `cryptography`'s AESGCM and ChaCha20Poly1305, seal and open, at 1400 B (one sealed VXLAN
frame at the default MTU) and 64 KB (a GSO super-packet), with a fresh 12-byte counter nonce per
call as the data path does. Run: `python -m bench.aead [--seconds S]`; prints a table (MB/s, µs/op).
"""

from __future__ import annotations

import argparse
import os
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

SIZES = (1400, 65536)


def _rate(fn, payload: bytes, seconds: float) -> tuple[float, float]:
    """(MB/s, µs per call) of `fn(nonce, payload)` over about `seconds`."""
    n = 0
    counter = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(64):
            counter += 1
            fn(counter.to_bytes(12, "little"), payload)
        n += 64
    elapsed = time.perf_counter() - start
    return n * len(payload) / elapsed / 1e6, elapsed / n * 1e6


def measure(seconds: float) -> list[tuple[str, int, str, float, float]]:
    rows = []
    for name, cls in (("AES-256-GCM", AESGCM), ("ChaCha20-Poly1305", ChaCha20Poly1305)):
        aead = cls(os.urandom(32))
        for size in SIZES:
            payload = os.urandom(size)
            sealed = aead.encrypt(b"\x00" * 12, payload, None)
            mbs, us = _rate(lambda nonce, p: aead.encrypt(nonce, p, None), payload, seconds)
            rows.append((name, size, "seal", mbs, us))
            mbs, us = _rate(lambda nonce, p: aead.decrypt(b"\x00" * 12, sealed, None), payload, seconds)
            rows.append((name, size, "open", mbs, us))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{'cipher':<18} {'size':>6} {'op':<4} {'MB/s':>8} {'us/op':>8}")
    for name, size, op, mbs, us in measure(args.seconds):
        print(f"{name:<18} {size:>6} {op:<4} {mbs:>8.0f} {us:>8.2f}")


if __name__ == "__main__":
    main()
