"""The supervisor of this host's embedded etcd member (issue 13, item 5): a thread of the agent's
process (`pyweave.agent.main`), not of `Agent`, so agents run in-process by tests start none.

It reads the member's pid file (`HostState.etcd_pid`); when the host runs a member
(`HostConfig.embedded_etcd`) and that process is gone (killed, crashed: whatever the cause) and no
hold file says an operator stopped it on purpose (`HostState.etcd_hold_path`), it starts it again
from its data directory (`pyweave.processes.start_embedded_etcd`, which a lock file keeps from
racing a `pyweave launch` doing the same). Restarts back off (0.2 s, doubling up to 10 s, with
jitter); the backoff is forgiven once a member has stayed up for `stable` seconds.
A process it started is its child, and is reaped here (else a dead etcd would linger as a zombie).

While the member runs, the thread sleeps in poll(2) on a pidfd of its process (Linux 5.3+), which
wakes it the moment the process ends, child or not (one started by `pyweave launch` is not): no
idle wake-ups (issue 11), only one each `recheck` seconds (and when the backoff is due to be
forgiven). It looks every `interval` seconds only while there is no live member to watch (no member
on this host, held, restarting; or no pidfd: then as before issue 11), and a restart the backoff
delays is tried when due. The hold file needs no watch: it matters only once etcd is gone.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable

from pyweave.backoff import Backoff
from pyweave.host import HostConfig, HostState

log = logging.getLogger("pyweave.agent.supervisor")


class EtcdSupervisor:
    def __init__(
        self, state: HostState, config: HostConfig, address: str, stop: threading.Event, *,
        interval: float = 0.2, stable: float = 30.0, recheck: float = 5.0, start: Callable | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.address = address
        self.stop = stop
        self.interval = interval
        self.stable = stable
        self.recheck = recheck
        self.backoff = Backoff(initial=0.2, cap=10.0)
        self.restarts = 0
        self._child: subprocess.Popen | None = None
        self._up_since: float | None = None
        self._not_before = 0.0
        self._due: float | None = None  # when the backoff lets the next restart be tried
        self._ended: int | None = None  # a pid whose pidfd said it ended: a zombie another must reap
        if start is None:
            from pyweave.processes import start_embedded_etcd

            start = start_embedded_etcd
        self._start = start

    def check(self) -> None:
        """One look: reap a dead child, restart a dead member (when its backoff allows)."""
        self._due = None
        if self._child is not None and self._child.poll() is not None:
            self._child = None
        if not self.config.embedded_etcd or not (self.state.etcd_dir / "member").exists():
            return
        if self.state.etcd_hold_path.exists():
            return
        now = time.monotonic()
        if self.state.etcd_pid() is not None:
            if self._up_since is None:
                self._up_since = now
            elif now - self._up_since >= self.stable:
                self.backoff.reset()
            return
        self._up_since = None
        if now < self._not_before:
            self._due = self._not_before
            return
        self._not_before = now + self.backoff.next()
        try:
            child = self._start(self.state, self.config, self.address)
        except Exception as err:  # noqa: BLE001 - a supervisor must outlive a failed start
            log.error("embedded etcd could not be restarted, will retry: %s", err)
            return
        if child is not None:
            self._child = child
            self.restarts += 1
            log.warning("embedded etcd was not running: restarted it (pid %d, restart %d)", child.pid, self.restarts)

    def watched(self) -> int | None:
        """The live member process to wait on, or None (look again in `interval` seconds)."""
        if not self.config.embedded_etcd or not (self.state.etcd_dir / "member").exists():
            return None
        pid = self.state.etcd_pid()
        if pid is None or pid == self._ended:
            return None  # a zombie (its parent reaps it soon, e.g. the membership thread): no busy loop
        return pid

    def wait_end(self, pid: int) -> None:
        """Sleep until process `pid` ends, or `recheck` seconds (less if the backoff is to be forgiven)."""
        timeout = self.recheck
        if self._up_since is not None:
            until_stable = self._up_since + self.stable - time.monotonic()
            if until_stable > 0:
                timeout = min(timeout, until_stable + 0.01)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # ended already: the next look restarts it
        except OSError as err:  # no pidfd (a kernel before 5.3): look every interval, as before issue 11
            log.debug("no pidfd for etcd (pid %d): %s", pid, err)
            self.stop.wait(self.interval)
            return
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if poller.poll(timeout * 1000):
                self._ended = pid
        finally:
            os.close(fd)

    def run(self) -> None:
        while not self.stop.is_set():
            pid = None
            try:
                self.check()
                pid = self.watched()
                if pid is not None:
                    self.wait_end(pid)
            except Exception:  # noqa: BLE001
                log.exception("supervisor check failed")
                pid = None
            if pid is None:
                delay = self.interval if self._due is None else self._due - time.monotonic()
                self.stop.wait(min(self.interval, max(0.0, delay)))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="etcd-supervisor", daemon=True)
        thread.start()
        return thread
