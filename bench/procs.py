"""The processes the bench starts, ended on the way out whatever happens.

Lab.down() kills what runs in the lab's named namespaces, but an iperf3 or a pinger started with
`nsenter` in a container's namespace is in no named namespace, and the control-plane benchmark's
etcd and workers run in the root namespace. Each of them is registered here and ended by
`Spawned.close()`: SIGTERM, a short wait, then SIGKILL, by pid, one by one. Children also get
PR_SET_PDEATHSIG, so that even a SIGKILLed bench does not leave them running.

The death signal is set by `setpriv --pdeathsig KILL` (util-linux), which then execs the command (same
pid), and not by a `preexec_fn`: with a pre-exec hook Python must fork() (not vfork), which runs
gRPC's fork handlers when the bench process holds an etcd client; those start gRPC threads in the
child, `close_fds` then closes their epoll descriptor, and the child aborts (SIGABRT, "epoll_wait
error: Bad file descriptor") before it ever runs the command. Without a hook Python uses vfork(),
which runs no fork handlers. The hook remains only as a fallback when setpriv is missing.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from pyweave.agent import prober

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Spawned:
    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def start(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        setpriv = shutil.which("setpriv")
        if setpriv:
            proc = subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", *argv], **kwargs)
        else:
            proc = subprocess.Popen(list(argv), preexec_fn=_die_with_parent, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, *, timeout: float = 3.0) -> int | None:
        """SIGTERM, wait, SIGKILL; returns the exit status. Idempotent."""
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            except ProcessLookupError:
                pass
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(condition, *, timeout: float, interval: float = 0.05) -> bool:
    """Poll condition() until it is truthy or timeout passes; True if it became truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def pid_stat(pid: int) -> tuple[int, int] | None:
    """(utime + stime in clock ticks, VmRSS in kB) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except (OSError, ValueError, IndexError):
        return None
    # fields[0] is the state (field 3 of stat(5)); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12]), rss


# The agent's link prober: the name of its thread, and its timers (the texts of the report quote them).
PROBER_THREAD = prober.THREAD_NAME
_PROBER_ARGS = inspect.signature(prober.Prober).parameters
PROBE_INTERVAL_S: float = _PROBER_ARGS["interval"].default
PROBE_DOWN_AFTER_S: float = _PROBER_ARGS["down_after"].default
PROBE_MAX_RATE: float = _PROBER_ARGS["max_rate"].default


def thread_ticks(pid: int) -> dict[str, int]:
    """utime + stime in clock ticks per thread name (the kernel's comm; threads of one name summed)
    of a live process's threads alive now. The CPU of threads that ended counts only in pid_stat."""
    out: dict[str, int] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 1:].split()
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def prober_ticks(pid: int) -> int:
    """CPU ticks of the agent's link prober thread so far (0: it has none, or it is not named)."""
    return thread_ticks(pid).get(PROBER_THREAD, 0)


def prober_wakeups(pid: int) -> int:
    """Times the agent's link prober thread went to sleep of its own accord so far (its voluntary
    context switches: one per wake-up of its poll loop), 0 when it has none or it is not named."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != PROBER_THREAD:
                    continue
            return int(status_fields_of(f"/proc/{pid}/task/{tid}/status", "voluntary_ctxt_switches").get(
                "voluntary_ctxt_switches", 0))
        except (OSError, ValueError):
            continue
    return 0


def status_fields(pid: int, *names: str) -> dict[str, str]:
    """Fields of /proc/<pid>/status (e.g. RssAnon, RssFile, Threads), as text."""
    return status_fields_of(f"/proc/{pid}/status", *names)


def status_fields_of(path: str, *names: str) -> dict[str, str]:
    """Fields of a /proc status file (a process's or one thread's), as text."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in names:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process in kB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
