"""Polling with a deadline, for every test tier: tests wait for a condition, never for a fixed time.

tests/ is on sys.path (its conftest.py is not in a package), so `from polling import wait_for` works in
tests/unit, tests/kernel and tests/lab alike."""

import time

import pytest


def wait_for(condition, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll until condition() is truthy; return its value or fail with message after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
