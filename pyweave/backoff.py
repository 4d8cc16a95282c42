"""Capped exponential backoff with full jitter, for every loop that retries (no busy loops)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, initial: float = 0.2, cap: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._current = initial

    def reset(self) -> None:
        self._current = self.initial

    def next(self) -> float:
        """The next delay: uniformly in [current/2, current], then current grows up to the cap."""
        delay = random.uniform(self._current / 2, self._current)
        self._current = min(self.cap, self._current * self.factor)
        return delay
