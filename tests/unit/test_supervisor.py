"""The embedded etcd's supervisor (issue 13, item 5): a dead member is restarted, with backoff."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from fakes import wait_for

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


def _run(sup: EtcdSupervisor) -> threading.Thread:
    """The thread, looking again only every 60 s: only the pidfd's wake-up can restart in time."""
    sup.interval = sup.recheck = 60.0
    return sup.start()


def _stop(sup: EtcdSupervisor, thread: threading.Thread, state: HostState) -> None:
    sup.stop.set()
    pid = state.etcd_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)  # wakes the thread's poll: it sees the stop and ends
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_thread_wakes_when_its_child_member_dies(tmp_path):
    state, sup, started = _setup(tmp_path)
    thread = _run(sup)
    try:
        wait_for(lambda: len(started) == 1 and state.etcd_pid() == started[0].pid, timeout=10, message="first start")
        started[0].kill()
        wait_for(lambda: len(started) == 2 and state.etcd_pid() == started[1].pid, timeout=10,
                 message="the killed member restarted, long before the 60 s interval")
        assert started[0].poll() is not None  # reaped by the supervisor
    finally:
        _stop(sup, thread, state)
        for p in started:
            p.kill()
            p.wait()


def test_the_thread_wakes_when_a_member_it_did_not_start_dies(tmp_path):
    state, sup, started = _setup(tmp_path)
    # started elsewhere (as by `pyweave launch`): not the supervisor's child, nor this process's
    shell = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    other = int(shell.stdout)
    state.etcd_pid_path.write_text(str(other))
    thread = _run(sup)
    try:
        wait_for(lambda: sup._up_since is not None, timeout=10, message="the supervisor watching the member")
        assert started == []
        os.kill(other, signal.SIGKILL)
        wait_for(lambda: len(started) == 1 and state.etcd_pid() == started[0].pid, timeout=10,
                 message="the member started elsewhere restarted, long before the 60 s interval")
    finally:
        _stop(sup, thread, state)
        for p in started:
            p.kill()
            p.wait()
