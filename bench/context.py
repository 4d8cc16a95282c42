"""What every section gets: sizes, progress output, where plots go, the shared lab, the process
registry. Sections take a `BenchContext` and return a `SectionResult`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.labsession import LabSession
from bench.procs import Spawned
from bench.sizes import Sizes


@dataclass
class BenchContext:
    quick: bool
    sizes: Sizes
    out: Path  # the report; plots go beside it
    lab_hosts: int
    spawned: Spawned = field(default_factory=Spawned)
    started: float = field(default_factory=time.monotonic)
    budget_s: float | None = None  # the whole run's time budget; sections that can wait less use remaining()
    _session: LabSession | None = None

    def say(self, section: str, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {section}: {message}", flush=True)

    def session(self) -> LabSession:
        if self._session is None:
            self._session = LabSession(self.lab_hosts, lambda m: self.say("lab", m))
        self._session.up()
        return self._session

    def close_lab(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def remaining(self) -> float:
        """Seconds left in the run's budget (infinite without one)."""
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - (time.monotonic() - self.started)

    def plot_path(self, name: str) -> Path:
        stem = self.out.stem
        return self.out.parent / f"{stem}-{name}.png"
