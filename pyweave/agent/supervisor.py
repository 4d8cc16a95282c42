"""The supervisor of this host's embedded etcd member (issue 13, item 5): a thread of the agent's
process (`pyweave.agent.main`), not of `Agent`, so agents run in-process by tests start none.

Every `interval` seconds it reads the member's pid file (`HostState.etcd_pid`); when the host runs
a member (`HostConfig.embedded_etcd`) and that process is gone (killed, crashed: whatever the
cause) and no hold file says an operator stopped it on purpose (`HostState.etcd_hold_path`),
it starts it again from its data directory (`pyweave.processes.start_embedded_etcd`, which
a lock file keeps from racing a `pyweave launch` doing the same). Restarts back off (0.2 s, doubling
up to 10 s, with jitter); the backoff is forgiven once a member has stayed up for `stable` seconds.
A process it started is its child, and is reaped here (else a dead etcd would linger as a zombie).
"""

from __future__ import annotations

import logging
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
        interval: float = 0.2, stable: float = 30.0, start: Callable | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.address = address
        self.stop = stop
        self.interval = interval
        self.stable = stable
        self.backoff = Backoff(initial=0.2, cap=10.0)
        self.restarts = 0
        self._child: subprocess.Popen | None = None
        self._up_since: float | None = None
        self._not_before = 0.0
        if start is None:
            from pyweave.processes import start_embedded_etcd

            start = start_embedded_etcd
        self._start = start

    def check(self) -> None:
        """One look: reap a dead child, restart a dead member (when its backoff allows)."""
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

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001
                log.exception("supervisor check failed")
            self.stop.wait(self.interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="etcd-supervisor", daemon=True)
        thread.start()
        return thread
