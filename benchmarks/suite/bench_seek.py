"""Seek: time to the first TaskExecStdioRead message at offset 0 and at 97.5 % of a finished log.
Reading is O(1) in the offset (segment = offset // size), so the two should match."""
from __future__ import annotations

import contextlib
import statistics
import time

from . import alternating
from .common import (
    SIZE,
    BenchError,
    RouterProcess,
    SyncRouter,
    Target,
    closing_on_error,
    human_size,
    stream_timeout,
    unique,
    zeros_command,
)
from .rows import Axis, Row, Section, V


class Seek:
    """One router, one finished log of `size` bytes produced by an exec with no reader; each call
    opens a read at the start (offset 0) or the end (97.5 % of the log), takes the first message
    and cancels."""

    params = [[SIZE.seek]]
    param_names = ["size"]
    # Producing the log is the expensive part, and asv re-runs setup per timed sample: few samples.
    number = 1
    repeat = (1, 3, 30.0)
    warmup_time = 0.0
    timeout = 1200
    target = Target("<=", 1.2)  # end / start

    def setup(self, size: int) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.client = SyncRouter(self.stack.enter_context(RouterProcess()))
            self.exec_id = unique("seek")
            self.client.start(self.exec_id, zeros_command(size))
            code = self.client.wait(self.exec_id, timeout=stream_timeout(size, 300.0))
            # A read at the very end sends nothing and ends once the log is complete: the barrier.
            if code != 0 or self.client.read_all(self.exec_id, offset=size, timeout=120) != 0:
                raise BenchError(f"producing the {size}-byte log failed: exit {code}")
            self.offsets = {"start": 0, "end": int(size * 0.975)}
            for _ in range(2):  # warm both places
                for offset in self.offsets.values():
                    self._first_message(offset)

    def teardown(self, size: int) -> None:
        self.stack.close()

    def _first_message(self, offset: int) -> None:
        if self.client.first_message(self.exec_id, offset) <= 0:
            raise BenchError(f"the first message at offset {offset} is empty")

    def _ttfb_ms(self, where: str) -> float:
        t0 = time.perf_counter()
        self._first_message(self.offsets[where])
        return (time.perf_counter() - t0) * 1e3

    def time_first_message_start(self, size: int) -> None:
        self._first_message(self.offsets["start"])

    def time_first_message_end(self, size: int) -> None:
        self._first_message(self.offsets["end"])

    def track_ttfb_start(self, size: int) -> float:
        return self._ttfb_ms("start")

    track_ttfb_start.unit = "ms"  # type: ignore[attr-defined]

    def track_ttfb_end(self, size: int) -> float:
        return self._ttfb_ms("end")

    track_ttfb_end.unit = "ms"  # type: ignore[attr-defined]

    def track_end_over_start(self, size: int) -> float:
        """Median ttfb at the end / median at the start, alternating reads (target <= 1.2)."""
        samples = alternating.alternate({"end": lambda: self._ttfb_ms("end"), "start": lambda: self._ttfb_ms("start")},
                                        SIZE.rounds["seek"])
        return statistics.median(samples["end"]) / statistics.median(samples["start"])

    track_end_over_start.unit = "end/start"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def seek_rows(axis: Axis) -> list[list[Row]]:
    return [[Row(f"time to first byte of a finished {human_size(size)} log: at 97.5 % / at offset 0",
                 V(Seek, (size,), "track_ttfb_end"), V(Seek, (size,), "track_ttfb_start"), Seek.target,
                 V(Seek, (size,), "track_end_over_start"))]
            for size in axis(Seek)]


COMPARE = {"seek": Section(seek_rows, "seek")}
