"""What the figures were measured on: the machine section of the report."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows here (the figures share its CPUs)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


# What the bench itself writes: a run's own report and plots do not make the tree "changed".
OWN_OUTPUTS = (":(exclude)docs/performance.md", ":(exclude)docs/performance-*.png")


def commit() -> str:
    """The checkout's commit, marked when tracked files (but the bench's own outputs) differ from it."""
    text = _run("git", "rev-parse", "--short", "HEAD")
    if _run("git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OWN_OUTPUTS) not in ("", "unknown", "not installed"):
        text += " (with uncommitted changes)"
    return text


def describe(commit_at_start: str | None = None) -> list[tuple[str, str]]:
    """The machine table; `commit_at_start` is the checkout when the run began (a run is long: if the
    tree changed meanwhile, processes started later ran newer code, and the table says so)."""
    from pyweave import __version__

    now = commit()
    code = now if commit_at_start in (None, now) else f"{commit_at_start} at start, {now} at the end (the tree changed during the run)"
    return [
        ("CPUs (nproc)", str(os.cpu_count() or "unknown")),
        ("CPU model", _cpu_model()),
        ("memory", _memory()),
        ("kernel", platform.release()),
        ("python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("pyweave", f"{__version__}, commit {code}"),
        ("docker", _run("docker", "version", "--format", "{{.Server.Version}}")),
        ("etcd", _run("etcd", "--version")),
        ("iperf3", _run("iperf3", "--version")),
        ("ping", "busybox ping (" + _run("busybox").split(" multi-call")[0] + ")" if shutil.which("busybox") else "not installed"),
    ]
