"""Small helpers for tests: wait for a condition with a deadline instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "") -> T:
    """Call `predicate` until it returns something truthy and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message or 'condition'} not met within {timeout:g} s")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 0.5)  # quick at first, gentle on the broker later
