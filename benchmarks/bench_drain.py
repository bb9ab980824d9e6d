"""SegmentedLog.drain: one pipe fed by `head -c N /dev/zero` (1 MiB pipe, O_NONBLOCK, poll between
drains of up to 4 MiB, as the engine does), against the two ceilings: os.readv into a reused 1 MiB
buffer, and readv + os.pwrite into segment files (the ceiling for a log that keeps its data)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from router._fastio import SegmentedLog, SegmentStore

from .common import (
    SEGMENT_SIZE,
    MiB,
    ReadvPwriteSink,
    ReadvSink,
    close_fd,
    drain_until_eof,
    log_sink,
    proc_status,
    reap,
    spawn_zero_writer,
    stop_process,
)

DRAIN_TIMEOUT = 120.0


class Drain:
    params = [16 * MiB, 128 * MiB]
    param_names = ["size"]
    # Each call needs a fresh writer and log: asv re-runs setup before every timed call.
    number = 1
    repeat = (1, 7, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, size: int) -> None:
        # The log lives on /tmp, the file system state directories use.
        self.dir = tempfile.mkdtemp(prefix="asv-drain-", dir="/tmp")
        for sub in ("log", "pwrite"):
            os.mkdir(os.path.join(self.dir, sub))
        self.log = SegmentedLog(SegmentStore(os.path.join(self.dir, "log"), SEGMENT_SIZE))
        self.readv = ReadvSink()
        self.pwrite = ReadvPwriteSink(os.path.join(self.dir, "pwrite"), SEGMENT_SIZE)
        self.proc, self.fd = spawn_zero_writer(size)

    def teardown(self, size: int) -> None:
        close_fd(self.fd)
        stop_process(self.proc, 5)
        self.log.close()
        self.log.store.close()
        self.pwrite.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _drain(self, step) -> int:  # type: ignore[no-untyped-def]
        n = drain_until_eof(self.fd, step, DRAIN_TIMEOUT)
        reap(self.proc, 30)
        return n

    def time_drain(self, size: int) -> None:
        self._drain(log_sink(self.log))

    def time_readv_ceiling(self, size: int) -> None:
        self._drain(self.readv)

    def time_readv_pwrite_ceiling(self, size: int) -> None:
        self._drain(self.pwrite)

    def track_drain_rate(self, size: int) -> float:
        t0 = time.perf_counter()
        n = self._drain(log_sink(self.log))
        return n / (time.perf_counter() - t0) / 1e6

    track_drain_rate.unit = "MB/s"  # type: ignore[attr-defined]

    def track_rss_growth(self, size: int) -> float:
        """This process's RSS growth over one drain, MiB: a log that maps its segments shows here
        (peakmem_ does not count mapped files); a pwrite log should stay flat."""
        before = proc_status(os.getpid())["VmRSS"]
        self._drain(log_sink(self.log))
        return (proc_status(os.getpid())["VmRSS"] - before) / MiB

    track_rss_growth.unit = "MiB"  # type: ignore[attr-defined]

    def peakmem_drain(self, size: int) -> None:
        self._drain(log_sink(self.log))
