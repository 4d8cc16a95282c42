"""A helper process the bench talks to in JSON lines: commands on its stdin, events on its stdout.

Started through `Spawned` (so it is ended on the way out, also on Ctrl-C), its stderr goes to a log
file, and a thread turns its stdout into a queue. `expect` waits for one event and says plainly
when the helper died instead (with the tail of its log) or did not answer in time.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.labsession import BenchError
from bench.machine import REPO
from bench.procs import Spawned


class Helper:
    def __init__(self, spawned: Spawned, argv: Sequence[str], *, name: str, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self.spawned = spawned
        with open(log, "ab") as err:
            self.proc = spawned.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                      text=True, cwd=REPO, env=env)
        self.pid = self.proc.pid
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put({"event": "exited"})

    def send(self, **cmd) -> None:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as err:
            raise BenchError(f"{self.name} is gone: {self._tail()}") from err

    def expect(self, event: str, *, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name} did not report {event!r} within {timeout:.0f} s") from None
            if got.get("event") == event:
                return got
            if got.get("event") == "exited":
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-600:].strip() or "no output"
        except OSError:
            return "no log"

    def close(self) -> None:
        self.spawned.stop(self.proc)
