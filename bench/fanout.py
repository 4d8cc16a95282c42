"""Part (c) of the `ghosts` section: one etcd fanning a burst out to many lightweight watchers.

A throwaway etcd (pyweave's embedded-etcd flags, on 127.0.0.1 with free ports and a temporary data
directory, stopped afterwards) and `bench.fanout_watcher` processes, each holding its share of the
watches on the endpoints prefix through one gRPC channel: not agents, only watches whose callback
notes each event's revision and arrival time. The burst: `keys` endpoint records (the store's
encoders) put one request each, as fast as etcd takes them from 16 threads of the bench process,
which notes when each put was sent (by the revision it got). Per (watch, key): the delivery
latency from the put being sent to the watcher's callback. etcd's CPU is utime+stime of its
process from the first put until every watcher has every event (or the wait ends); the watchers'
CPU is shown beside it, since on 2 cores they compete with etcd for the same CPUs.

A single watch runs first, as the reference. Then the counts of `Sizes.fanout_watchers` are tried
in order (2,000 first) until one delivers every event within the wait; those that did not are
reported with the reason.

The bench process opens its own etcd client only to probe and to write, and closes it before it
starts any process: forking (as `Spawned` does, with a pre-exec hook) while a gRPC channel is open
in the parent now and then aborts the child in gRPC's fork handlers.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.context import BenchContext
from bench.helper import Helper
from bench.labsession import BenchError
from bench.procs import CLOCK_TICKS, Spawned, pid_stat, wait_until
from bench.scale import worker_env
from bench.stats import median, percentile
from store.etcd import EtcdStore
from store.keys import ENDPOINTS, endpoint_key
from store.records import EndpointRecord, endpoint_value

WRITERS = 16
SUBNET = "10.201.0.0/16"


@dataclass
class FanoutRun:
    watchers: int
    processes: int
    keys: int
    setup_s: float = math.nan  # creating every watch
    written_s: float = math.nan  # first put sent .. last put acknowledged
    put_ms: float = math.nan  # median round trip of one put
    delivered: int = 0
    expected: int = 0
    complete_s: float | None = None  # first put sent .. every watcher has every event
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    etcd_cpu_s: float = math.nan
    watchers_cpu_s: float = math.nan
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.delivered == self.expected


# -- the throwaway etcd --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str) -> EtcdStore:
    return EtcdStore([url], timeout=10.0)


def start_etcd(spawned: Spawned, tmp: Path) -> tuple[subprocess.Popen, str]:
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    with open(tmp / "etcd.log", "wb") as log:
        proc = spawned.start(
            ["etcd", "--name", "fanout", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"fanout={peer}", "--initial-cluster-state", "new",
             "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
             "--log-level", "warn"],
            stderr=log,
        )
    raw = _client(client)

    def up() -> bool:
        try:
            raw.revision()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    try:
        if not wait_until(up, timeout=30, interval=0.1):
            raise BenchError(f"the fan-out etcd did not start: {(tmp / 'etcd.log').read_text()[-500:]}")
    finally:
        raw.close()
    return proc, client


# -- one attempt -------------------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    got = pid_stat(pid)
    return got[0] / CLOCK_TICKS if got else 0.0


def _burst(url: str, tag: str, keys: int) -> tuple[dict[int, float], list[float], float, float]:
    """Put `keys` endpoint records, one request each; returns {revision: sent}, round trips, first, last."""
    def record(k: int) -> tuple[str, bytes]:
        ip = f"10.201.{k // 250}.{1 + k % 250}"
        rec = EndpointRecord(host=tag, container=f"{k:064x}", ip=ip, prefixlen=16, subnet=SUBNET, vni=70000,
                             mac=f"02:fa:00:00:{k // 256:02x}:{k % 256:02x}", ifname="ethwe")
        return endpoint_key(tag, rec.container, ip), endpoint_value(rec)

    records = [record(k) for k in range(keys)]

    def put(item: tuple[str, bytes]) -> tuple[int, float, float]:
        sent = time.time()
        rev = raw.put(*item)
        return rev, sent, time.time()

    raw = _client(url)
    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            first = time.time()
            done = list(pool.map(put, records))
            last = time.time()
    finally:
        raw.close()
    return {rev: sent for rev, sent, _ in done}, [1000 * (acked - sent) for _, sent, acked in done], first, last


def _spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def attempt(ctx: BenchContext, url: str, etcd_pid: int, tmp: Path, *, watchers: int, processes: int,
            keys: int, wait: float) -> FanoutRun:
    run = FanoutRun(watchers, min(processes, watchers), keys)
    tag = f"fanout{watchers}"
    helpers: list[Helper] = []
    try:
        t0 = time.monotonic()
        for i, count in enumerate(_spread(watchers, run.processes)):
            argv = [sys.executable, "-m", "bench.fanout_watcher", "--store", url, "--prefix", f"{ENDPOINTS}{tag}/",
                    "--watches", str(count), "--expect", str(keys)]
            helpers.append(Helper(ctx.spawned, argv, name=f"fan-out watcher process {i}", log=tmp / f"watcher-{tag}-{i}.log",
                                  env=worker_env()))
        for h in helpers:
            h.expect("ready", timeout=max(60.0, watchers / 20))
        run.setup_s = time.monotonic() - t0
        run.expected = watchers * keys
        etcd0, watch0 = _cpu_s(etcd_pid), sum(_cpu_s(h.pid) for h in helpers)
        sent, rtts, first, last = _burst(url, tag, keys)
        run.written_s, run.put_ms = last - first, median(rtts)
        completes = []
        for h in helpers:
            try:
                completes.append(h.expect("complete", timeout=max(0.0, first + wait - time.time()))["at"])
            except BenchError as err:
                run.error = f"not every event within {wait:.0f} s ({err})"
                break
        if run.error is None:
            run.complete_s = max(completes) - first
        run.etcd_cpu_s = _cpu_s(etcd_pid) - etcd0
        run.watchers_cpu_s = sum(_cpu_s(h.pid) for h in helpers) - watch0
        _latencies(run, helpers, sent, tmp / tag)
    except BenchError as err:
        run.error = str(err)
    finally:
        for h in helpers:
            h.close()
    return run


def _latencies(run: FanoutRun, helpers: list[Helper], sent: dict[int, float], stem: Path) -> None:
    puts = stem.with_suffix(".puts.json")
    puts.write_text(json.dumps(sent))
    values = array("f")
    for i, h in enumerate(helpers):
        out = stem.with_suffix(f".lat{i}.bin")
        h.send(cmd="report", puts=str(puts), out=str(out))
        got = h.expect("report", timeout=120)
        run.delivered += got["received"] - got["missing"]
        with open(out, "rb") as f:
            values.frombytes(f.read())
    ordered = sorted(values)
    if ordered:
        run.p50_ms, run.p99_ms, run.max_ms = percentile(ordered, 50), percentile(ordered, 99), ordered[-1]


def run(ctx: BenchContext, tmp: Path) -> list[FanoutRun]:
    """The reference (1 watch), then the largest count that works; the etcd is always stopped."""
    s = ctx.sizes
    proc, url = start_etcd(ctx.spawned, tmp)
    runs: list[FanoutRun] = []
    try:
        for count in (1, *s.fanout_watchers):
            ctx.say("ghosts", f"fan-out: {count} watchers, {s.fanout_keys} keys")
            r = attempt(ctx, url, proc.pid, tmp, watchers=count, processes=s.fanout_processes,
                        keys=s.fanout_keys, wait=s.fanout_wait_s)
            runs.append(r)
            ctx.say("ghosts", f"fan-out {count}: delivered {r.delivered}/{r.expected}, p50 {r.p50_ms:.0f} ms, "
                              f"p99 {r.p99_ms:.0f} ms, etcd CPU {r.etcd_cpu_s:.1f} s{'; ' + r.error if r.error else ''}")
            if count > 1 and r.ok:
                break
    finally:
        ctx.spawned.stop(proc, timeout=10)
    return runs
