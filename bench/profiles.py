"""Profiles for the closing notes: py-spy for running processes, pyinstrument for a CLI run.

Both are optional dependencies (`pip install -e '.[bench]'`); without them the report says the
profile was skipped. py-spy samples a live process from outside (all its threads, only those
holding the GIL with `--gil`: where the CPU goes), writing collapsed stacks that `summarise`
turns into the top functions by inclusive and by self time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Spawned
from bench.report import Table


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def pyspy() -> str | None:
    return _tool("py-spy")


def pyinstrument_available() -> bool:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return False
    return True


PYSPY_MISSING = "profile skipped: py-spy is not installed (`pip install -e '.[bench]'`)"
PYINSTRUMENT_MISSING = "profile skipped: pyinstrument is not installed (`pip install -e '.[bench]'`)"


@dataclass
class Profile:
    samples: int = 0
    inclusive: Counter = field(default_factory=Counter)
    self_: Counter = field(default_factory=Counter)
    errors: str = ""

    def share(self, needle: str) -> float:
        """Fraction of samples with a frame whose name contains needle."""
        if not self.samples:
            return 0.0
        return sum(v for k, v in self.inclusive.items() if needle in k) / self.samples if needle else 0.0

    def table(
        self, *, top: int = 12, skip: tuple[str, ...] = ("threading.py", "<module>", "runpy>", "main (", "Agent.run (")
    ) -> Table:
        """Top functions by inclusive share, without the trunk every sample goes through (thread
        bootstrap, `main`), which says nothing about where the time goes."""
        table = Table(["function (file)", "inclusive %", "self %"])
        trunk = {k for k, v in self.inclusive.items() if v >= 0.99 * self.samples and not self.self_[k]}
        rows = [(k, v) for k, v in self.inclusive.most_common() if k not in trunk and not any(s in k for s in skip)]
        for name, count in rows[:top]:
            table.add(f"`{name}`", f"{100 * count / self.samples:.1f}", f"{100 * self.self_[name] / self.samples:.1f}")
        return table


def summarise(collapsed: str) -> Profile:
    prof = Profile()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        prof.samples += n
        for f in set(frames):
            prof.inclusive[f] += n
        prof.self_[frames[-1]] += n
    return prof


class PySpyRecording:
    """py-spy recording a process until stop(): `with PySpyRecording(...) as rec: ...; rec.profile`."""

    def __init__(self, spawned: Spawned, pid: int, out: Path, *, rate: int = 50, gil: bool = True) -> None:
        self.spawned = spawned
        self.pid = pid
        self.out = out
        self.rate = rate
        self.gil = gil
        self.proc: subprocess.Popen | None = None
        self.profile: Profile | None = None

    def __enter__(self) -> PySpyRecording:
        tool = pyspy()
        if tool is None:
            return self
        argv = [tool, "record", "-p", str(self.pid), "-f", "raw", "-o", str(self.out), "--nolineno",
                "--nonblocking", "-r", str(self.rate)]
        if self.gil:
            argv.append("--gil")
        self.proc = self.spawned.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        # py-spy writes its output on SIGINT, as after Ctrl-C.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            output, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            output = ""
        self.spawned.stop(self.proc)
        try:
            self.profile = summarise(self.out.read_text())
        except OSError:
            self.profile = Profile(errors=(output or "").strip()[-300:])


def pyinstrument_run(
    argv_prefix: list[str], module_args: list[str], *, env: dict, cwd: Path, out: Path, timeout: float = 120
) -> tuple[str, dict, subprocess.CompletedProcess]:
    """Run `python -m pyinstrument -m MODULE ARGS` (after argv_prefix, e.g. `ip netns exec H`).

    Returns the text report, the JSON report (a tree of frames with their wall time) and the
    completed process (the profiled program's own output and status)."""
    session = out.with_suffix(".pyisession")
    argv = argv_prefix + [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(session),
                          "-i", "0.0005", "-m", *module_args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    text, tree = f"(no profile written: {r.stderr.strip()[-300:]})", {}
    if session.exists():
        for renderer, dest in (("text", out.with_suffix(".txt")), ("json", out.with_suffix(".json"))):
            subprocess.run([sys.executable, "-m", "pyinstrument", f"--load={session}", "-r", renderer,
                            "--no-color", "--no-unicode", "-o", str(dest)], capture_output=True, timeout=60, check=False)
        try:
            text = out.with_suffix(".txt").read_text().strip("\n")
            tree = json.loads(out.with_suffix(".json").read_text())
        except (OSError, ValueError):
            pass
    return text, tree, r


def time_in(tree: dict, functions: list[str]) -> dict[str, float]:
    """Wall seconds spent in each named function (outermost calls only, so recursion and nested
    calls of the same function are not counted twice), from a pyinstrument JSON report."""
    out = {f: 0.0 for f in functions}

    def walk(frame: dict, inside: frozenset, depth: int) -> None:
        name = frame.get("function", "")
        short = name.rsplit(".", 1)[-1]  # "Containers.create_and_start" matches "create_and_start"
        for f in (name, short):
            # "<module>" below the root is an import (the root is the profiled module itself).
            if f in out and f not in inside and (f != "<module>" or depth > 0):
                out[f] += float(frame.get("time", 0.0))
                inside = inside | {f}
                break
        for child in frame.get("children", ()):
            walk(child, inside, depth + 1)

    root = tree.get("root_frame")
    if root:
        walk(root, frozenset(), 0)
    return out
