"""Waiting for a condition instead of sleeping for a fixed time."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll `check` until it is true (then True) or `timeout` seconds pass (then False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def settled(check: Callable[[], T], timeout: float = 5.0) -> T:
    """What `check` finds left over once it finds nothing, or once `timeout` seconds pass."""
    eventually(lambda: not check(), timeout)
    return check()
