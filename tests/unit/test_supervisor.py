"""The embedded etcd's supervisor (issue 13, item 5): a dead member is restarted, with backoff."""

from __future__ import annotations

import subprocess
import sys
import threading

from pyweave.agent.supervisor import EtcdSupervisor
from pyweave.backoff import Backoff
from pyweave.host import HostConfig, HostState


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _setup(tmp_path, *, embedded=True):
    state = HostState(tmp_path)
    (state.etcd_dir / "member").mkdir(parents=True)
    config = HostConfig(name="h1", vtep_mac="02:00:00:00:00:01", embedded_etcd=embedded)
    started: list[subprocess.Popen] = []

    def start(st, cfg, address):
        proc = _sleeper()
        st.etcd_pid_path.write_text(str(proc.pid))
        started.append(proc)
        return proc

    sup = EtcdSupervisor(state, config, "127.0.0.1", threading.Event(), start=start)
    return state, sup, started


def test_a_dead_member_is_restarted_and_reaped(tmp_path):
    state, sup, started = _setup(tmp_path)
    try:
        sup.check()  # no pid file: not running -> started
        assert len(started) == 1 and state.etcd_pid() == started[0].pid
        sup.check()
        assert len(started) == 1  # running: left alone
        started[0].kill()
        started[0].wait()
        sup._not_before = 0.0
        sup.check()
        assert len(started) == 2 and sup.restarts == 2 and state.etcd_pid() == started[1].pid
    finally:
        for p in started:
            p.kill()
            p.wait()


def test_restarts_back_off(tmp_path):
    state, sup, started = _setup(tmp_path)
    sup.backoff = Backoff(initial=60.0, cap=60.0)
    try:
        sup.check()
        started[-1].kill()
        started[-1].wait()
        sup.check()  # within the backoff delay of the first start: not yet
        assert len(started) == 1 and state.etcd_pid() is None
    finally:
        for p in started:
            p.kill()
            p.wait()


def test_nothing_is_started_on_a_host_that_runs_no_member(tmp_path):
    _state, sup, started = _setup(tmp_path, embedded=False)
    sup.check()
    assert started == []


def test_a_hold_file_keeps_the_member_down(tmp_path):
    state, sup, started = _setup(tmp_path)
    state.etcd_hold_path.touch()
    sup.check()
    assert started == []
    state.etcd_hold_path.unlink()
    try:
        sup.check()
        assert len(started) == 1
    finally:
        for p in started:
            p.kill()
            p.wait()
