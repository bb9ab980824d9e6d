"""What the server counts for metrics, beside the engine's (engine/stats.py): how long each RPC took
with the status it ended with, and the image operations' outcomes. Plain counters under a lock
(calls end on any thread in the threads server mode), read at scrape time (metrics.py)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import grpc

from router.engine.stats import Histogram
from router.errors import RouterError

T = TypeVar("T")

# Seconds an RPC takes: a Poll answers in well under a millisecond, a followed read lasts the exec.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 3600.0)
IMAGE_OPS = ("snapshot", "mount", "unmount")


class RpcStats:
    """A duration histogram per (method, status code name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], Histogram] = {}

    def observe(self, method: str, code: grpc.StatusCode, secs: float) -> None:
        key = (method, code.name)
        with self._lock:
            histogram = self._calls.get(key)
            if histogram is None:
                histogram = self._calls[key] = Histogram(RPC_BUCKETS)
            histogram.observe(secs)

    def snapshot(self) -> list[tuple[str, str, list[tuple[str, int]], float]]:
        """(method, code, cumulative buckets, sum) of each pair seen, consistent with each other."""
        with self._lock:
            return [(method, code, h.cumulative(), h.sum) for (method, code), h in sorted(self._calls.items())]


class ImageOps:
    """Image operations by (op, result): "ok", or the lowercased name of the status they failed with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self.changes = 0  # operations so far: what the store holds may have changed since a count

    def run(self, op: str, fn: Callable[[], T]) -> T:
        """`fn()`, counted as an `op` with its outcome."""
        result = "internal"
        try:
            value = fn()
            result = "ok"
            return value
        except RouterError as e:
            result = e.code.name.lower()
            raise
        finally:
            with self._lock:
                self.counts[op, result] = self.counts.get((op, result), 0) + 1
                self.changes += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.counts)
