"""The server's memory, threads and descriptors, from /proc/PID/status of the `router serve` process
(VmRSS, as track_*: peakmem_ would measure this process, and does not count mapped files)."""
from __future__ import annotations

import os

from .common import BenchError, MiB, RouterProcess, SyncRouter
from .workloads import close_event_loop, new_event_loop, start_idle

STREAM = 256 * MiB


class ServerMemory:
    timeout = 300

    def setup(self) -> None:
        self.router = RouterProcess()
        try:
            self.client = SyncRouter(self.router.channel(), self.router.metadata)
            self.client.run_output(["head", "-c", "4096", "/dev/zero"], 4096)
        except BaseException:
            self.router.stop()
            raise

    def teardown(self) -> None:
        self.router.stop()

    def track_rss_idle(self) -> float:
        return self.router.status()["VmRSS"] / MiB

    track_rss_idle.unit = "MiB"  # type: ignore[attr-defined]

    def track_rss_after_stream(self) -> float:
        """VmRSS after one exec streamed 256 MiB to a reader."""
        self.client.run_output(["head", "-c", str(STREAM), "/dev/zero"], STREAM, timeout=300)
        return self.router.status()["VmRSS"] / MiB

    track_rss_after_stream.unit = "MiB"  # type: ignore[attr-defined]

    def track_rss_growth_over_stream(self) -> float:
        before = self.router.status()["VmRSS"]
        self.client.run_output(["head", "-c", str(STREAM), "/dev/zero"], STREAM, timeout=300)
        return (self.router.status()["VmRSS"] - before) / MiB

    track_rss_growth_over_stream.unit = "MiB"  # type: ignore[attr-defined]


class IdleExecs:
    """N idle execs (`sleep`, stdout and stderr piped, nobody reading) held open by the server."""

    params = [256]
    param_names = ["n"]
    timeout = 300

    def setup(self, n: int) -> None:
        self.loop = new_event_loop()
        self.router = RouterProcess()
        try:
            marker = f"{600 + (os.getpid() % 1000) / 1000:.3f}"
            out = self.loop.run_until_complete(start_idle(self.router, n, marker, 64, 4, 120.0))
            if out.failures:
                raise BenchError(out.describe())
            self.status = self.router.status()
        except BaseException:
            self.router.stop()
            close_event_loop(self.loop)
            raise

    def teardown(self, n: int) -> None:
        self.router.stop()  # kills the execs
        close_event_loop(self.loop)

    def track_rss(self, n: int) -> float:
        return self.status["VmRSS"] / MiB

    track_rss.unit = "MiB"  # type: ignore[attr-defined]

    def track_threads(self, n: int) -> int:
        return self.status["Threads"]

    track_threads.unit = "threads"  # type: ignore[attr-defined]

    def track_fds(self, n: int) -> int:
        return self.status["fds"]

    track_fds.unit = "fds"  # type: ignore[attr-defined]
