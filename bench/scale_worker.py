"""One process of simulated hosts for the control-plane benchmark: `python -m bench.scale_worker CONFIG`.

CONFIG (JSON, written by bench.scale) names the etcd endpoint, the hosts this process runs,
whether each agent gets its own etcd client (`"client": "own"`, as real agents do) or all share
one (`"shared"`), and optionally the watchers' re-list period (`"relist_interval"`, seconds). The
process talks to its driver in JSON lines:

    -> {"event": "registered"}                 every agent registered (leases reused from CONFIG)
    <- {"cmd": "start"}                         start every agent's loop (watch, reconcile)
    <- {"cmd": "target", "count": N}            mark the counters; converged = N remote entries each
    -> {"event": "armed"}
    -> {"event": "converged", "times": [...]}  once every agent holds N remote entries
    <- {"cmd": "report"}                        -> {"event": "report", "agents": [...]} since the mark
    <- {"cmd": "exit"}                          leave at once (no graceful stop: etcd goes too)

Agents log at WARNING only: hundreds of agents logging each publication would measure logging.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.simhost import CountingStore, FakeRuntime, RecordingDataplane, TimedAgent
from dataplane.api import Underlay
from pyweave.host import HostConfig, HostState
from store.etcd import EtcdStore

_TICKS = os.sysconf("SC_CLK_TCK")


def _thread_cpu(tid: int | None) -> float:
    """CPU seconds of one thread of this process (utime + stime from /proc), 0 if unknown. Unlike
    the time added up around each reconcile, this includes a reconcile still running."""
    if tid is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.vni = config["vni"]
        self.shared = EtcdStore([config["store"]], timeout=config["client_timeout"]) if config["client"] == "shared" else None
        self.agents: list[TimedAgent] = []
        self.dataplanes: list[RecordingDataplane] = []
        self.stores: list[CountingStore] = []
        for h in config["hosts"]:
            raw = CountingStore(self.shared or EtcdStore([config["store"]], timeout=config["client_timeout"]),
                               slow_s=config["slow_s"])
            dp = RecordingDataplane()
            agent = TimedAgent(
                config=HostConfig(
                    name=h["name"], vtep_mac=h["vtep_mac"], store=[config["store"]], address=h["address"],
                    lease_ttl=config["lease_ttl"], resync_interval=config["resync_interval"],
                ),
                state=HostState(Path(h["state_dir"])),
                raw=raw,
                underlay=Underlay("eth0", 2, h["address"], 1500),
                dataplane=dp,
                containers=FakeRuntime(),
            )
            if config.get("relist_interval"):
                agent.watcher.relist_interval = config["relist_interval"]
            self.agents.append(agent)
            self.dataplanes.append(dp)
            self.stores.append(raw)
        self._mark: list[dict] = []
        self._tids: dict[str, int] = {}
        self._target_seq = 0
        self._lock = threading.Lock()

    def counters(self) -> list[dict]:
        # A shared client's attempts made again (EtcdStore.retried) are the process's: given to its first agent.
        first_of_client = {}
        for s in self.stores:
            first_of_client.setdefault(id(s.inner), s)
        return [
            {
                "name": a.me,
                "reconciles": a.reconcile_calls,
                "cpu": a.reconcile_cpu,
                "thread_cpu": _thread_cpu(self._tids.get(a.me)),
                "wall": a.reconcile_wall,
                "events": a.watcher.stats.events,
                "lists": a.watcher.stats.lists,
                "compactions": a.watcher.stats.compactions,
                "rewatches": a.watcher.stats.rewatches,
                "failed_starts": a.watcher.stats.failed_starts,
                "silent_restarts": a.watcher.stats.silent_restarts,
                "sink_failures": a.watcher.stats.errors.count("sink failed"),
                "calls": s.counts(),
                "retried": dict(getattr(s.inner, "retried", {})) if first_of_client[id(s.inner)] is s else {},
                "slow": s.slow_counts(),
                "slowest": s.take_slowest(),
            }
            for a, s in zip(self.agents, self.stores, strict=True)
        ]

    def register(self) -> None:
        for a in self.agents:
            a.register()
        emit({"event": "registered", "pid": os.getpid()})

    def start(self) -> None:
        """Start the agents one after the other, each once the one before has listed the store: a
        real cluster's agents do not all list it in the same second, and 200 lists at once made
        etcd time requests out, and every timed-out watch lists again (a herd the bench made)."""
        threading.Thread(target=self._start, daemon=True).start()

    def _start(self) -> None:
        for a in self.agents:
            threading.Thread(target=self._run_agent, args=(a,), name=f"agent-{a.me}", daemon=True).start()
            a.watcher.wait_synced(timeout=30)

    def _run_agent(self, agent: TimedAgent) -> None:
        self._tids[agent.me] = threading.get_native_id()
        agent.run()

    def set_target(self, count: int) -> None:
        with self._lock:
            self._mark = self.counters()
            self._target_seq += 1
            seq = self._target_seq
        for dp in self.dataplanes:
            dp.set_target(self.vni, count)
        emit({"event": "armed", "count": count})
        threading.Thread(target=self._watch_target, args=(seq, count), daemon=True).start()

    def _watch_target(self, seq: int, count: int) -> None:
        while True:
            with self._lock:
                if seq != self._target_seq:
                    return
            times = [dp.reached_at for dp in self.dataplanes]
            if all(t is not None for t in times):
                emit({"event": "converged", "count": count, "times": times})
                return
            time.sleep(0.1)

    def report(self) -> None:
        now = self.counters()
        out = []
        for before, after, dp in zip(self._mark, now, self.dataplanes, strict=True):
            calls = Counter(after["calls"])
            calls.subtract(before["calls"])
            retried = Counter(after["retried"])
            retried.subtract(before["retried"])
            slow = Counter(after["slow"])
            slow.subtract(before["slow"])
            out.append({
                "name": after["name"],
                "reconciles": after["reconciles"] - before["reconciles"],
                "cpu": after["cpu"] - before["cpu"],
                "thread_cpu": after["thread_cpu"] - before["thread_cpu"],
                "wall": after["wall"] - before["wall"],
                "events": after["events"] - before["events"],
                "lists": after["lists"] - before["lists"],
                # the watcher lists again after a compaction, a failed sink, or every relist_interval
                # (beside its running watch)
                "periodic_lists": (after["lists"] - before["lists"]) - (after["compactions"] - before["compactions"])
                - max(0, after["sink_failures"] - before["sink_failures"]),
                "rewatches": after["rewatches"] - before["rewatches"],
                "failed_starts": after["failed_starts"] - before["failed_starts"],
                "silent_restarts": after["silent_restarts"] - before["silent_restarts"],
                "calls": {k: v for k, v in calls.items() if v},
                "retried": {k: v for k, v in retried.items() if v},
                "slow": {k: v for k, v in slow.items() if v},
                "slowest": after["slowest"],  # since the mark (taking it there started it over)
                "reached_at": dp.reached_at,
                "remote": dp.remote_count(self.vni),
            })
        emit({"event": "report", "agents": out})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    config = json.loads(Path(sys.argv[1]).read_text())
    worker = Worker(config)
    worker.register()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "start":
            worker.start()
        elif cmd["cmd"] == "target":
            worker.set_target(cmd["count"])
        elif cmd["cmd"] == "report":
            worker.report()
        elif cmd["cmd"] == "exit":
            break
    sys.stdout.flush()
    os._exit(0)  # no graceful stop: 200 agents revoking leases would only measure the teardown


if __name__ == "__main__":
    main()
