"""Seek: time to the first TaskExecStdioRead message at offset 0 and near the end of a finished log.
Reading is O(1) in the offset (segment = offset // size), so the two should match."""
from __future__ import annotations

import statistics
import time

from .common import BenchError, MiB, RouterProcess, SyncRouter, unique

LOG_SIZE = 512 * MiB
FAR = int(LOG_SIZE * 0.975)


class Seek:
    params = ["start", "end"]
    param_names = ["offset"]
    number = 1
    repeat = (3, 15, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, offset: str = "start") -> None:
        self.router = RouterProcess()
        try:
            self.client = SyncRouter(self.router.channel(), self.router.metadata)
            self.exec_id = unique("seek")
            self.client.start(self.exec_id, ["head", "-c", str(LOG_SIZE), "/dev/zero"])
            if self.client.wait(self.exec_id) != 0:
                raise BenchError("producing the log failed")
            # A read at the very end sends nothing and returns once the log is complete.
            self.client.read_all(self.exec_id, offset=LOG_SIZE)
            self.offset = {"start": 0, "end": FAR}.get(offset, 0)
            self.client.first_message(self.exec_id, 0)
            self.client.first_message(self.exec_id, FAR)
        except BaseException:
            self.router.stop()
            raise

    def teardown(self, offset: str = "start") -> None:
        self.router.stop()

    def time_first_message(self, offset: str) -> None:
        self.client.first_message(self.exec_id, self.offset)


class SeekRatio:
    """ttfb(97.5 % of the log) / ttfb(0), medians of alternating reads (target <= 1.2)."""

    timeout = 300
    setup = Seek.setup
    teardown = Seek.teardown

    def _ttfb(self, offset: int) -> float:
        t0 = time.perf_counter()
        self.client.first_message(self.exec_id, offset)
        return time.perf_counter() - t0

    def track_ttfb_far_over_near(self) -> float:
        near, far = [], []
        for i in range(15):
            pair = [(near, 0), (far, FAR)]
            for samples, offset in (pair if i % 2 else pair[::-1]):
                samples.append(self._ttfb(offset))
        return statistics.median(far) / statistics.median(near)

    track_ttfb_far_over_near.unit = "ratio"  # type: ignore[attr-defined]
