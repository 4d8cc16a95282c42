"""One process of lightweight etcd watchers, for the fan-out part of the `ghosts` section.

Not agents: `--watches` raw watches on one prefix, all through one `EtcdStore` (one gRPC channel,
one watch stream; `EtcdStore.watch`, as the agent's watcher uses it), whose callback only notes
the revision of each event and when it arrived. Driven in JSON lines:

    -> {"event": "ready", "watches": K, "seconds": s}       every watch created
    -> {"event": "complete", "received": R, "at": t}        K x --expect events arrived (once)
    <- {"cmd": "report", "puts": PATH, "out": PATH}
    -> {"event": "report", "received": R, "missing": M}

On `report` it reads PATH (JSON {revision: time the put was sent}) and writes to `out` the delivery
latency of every event it received, in ms (array of float32, native byte order).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from array import array

from store.etcd import EtcdStore
from store.raw import WatchBatch

_emit_lock = threading.Lock()


def emit(obj: dict) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Receipts:
    """(revision, arrival time) of every event, from the client's one callback thread."""

    def __init__(self, expect: int) -> None:
        self.revisions = array("q")
        self.times = array("d")
        self.expect = expect
        self.errors: list[str] = []
        self._said = threading.Event()

    def __call__(self, batch) -> None:
        if not isinstance(batch, WatchBatch):
            self.errors.append(str(batch))
            return
        now = time.time()
        for change in batch.changes:
            self.revisions.append(change.revision)
            self.times.append(now)
        if len(self.revisions) >= self.expect and not self._said.is_set():
            self._said.set()
            emit({"event": "complete", "received": len(self.revisions), "at": now})

    def report(self, puts_path: str, out_path: str) -> dict:
        with open(puts_path) as f:
            sent = {int(k): v for k, v in json.load(f).items()}
        latencies = array("f")
        missing = 0
        for rev, at in zip(list(self.revisions), list(self.times), strict=True):
            t = sent.get(rev)
            if t is None:
                missing += 1
                continue
            latencies.append(1000.0 * (at - t))
        with open(out_path, "wb") as f:
            latencies.tofile(f)
        return {"event": "report", "received": len(self.revisions), "missing": missing, "errors": self.errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--watches", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True, help="events each watch should receive")
    args = parser.parse_args()
    raw = EtcdStore([args.store], timeout=30.0)
    receipts = Receipts(args.watches * args.expect)
    start = raw.revision() + 1
    t0 = time.monotonic()
    cancels = [raw.watch(args.prefix, start_revision=start, callback=receipts) for _ in range(args.watches)]
    emit({"event": "ready", "watches": len(cancels), "seconds": time.monotonic() - t0})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "report":
            emit(receipts.report(cmd["puts"], cmd["out"]))
        elif cmd["cmd"] == "quit":
            break
    raw.close()


if __name__ == "__main__":
    main()
