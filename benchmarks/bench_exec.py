"""Exec rate: start + wait of `true` (stdout and stderr piped), sequential and 64 in flight (grpc.aio),
against os.posix_spawn + os.waitpid at the same concurrency."""
from __future__ import annotations

import time

from .common import BenchError, RouterProcess, SyncRouter
from .workloads import close_event_loop, local_spawn_rate, new_event_loop, router_exec_inflight

SEQUENTIAL = 100
TOTAL = 500
IN_FLIGHT = 64
CHANNELS = 4


class ExecRate:
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self) -> None:
        self.loop = new_event_loop()
        self.router = RouterProcess()
        try:
            self.client = SyncRouter(self.router.channel(), self.router.metadata)
            for _ in range(3):
                self.client.start_wait(["true"])
        except BaseException:
            self.router.stop()
            raise

    def teardown(self) -> None:
        self.router.stop()
        close_event_loop(self.loop)

    def time_start_wait_true(self) -> None:
        code = self.client.start_wait(["true"])
        if code != 0:
            raise BenchError(f"true exited {code}")

    def track_sequential_rate(self) -> float:
        t0 = time.perf_counter()
        for _ in range(SEQUENTIAL):
            self.client.start_wait(["true"])
        return SEQUENTIAL / (time.perf_counter() - t0)

    track_sequential_rate.unit = "execs/s"  # type: ignore[attr-defined]

    def track_in_flight_rate(self) -> float:
        out = self.loop.run_until_complete(router_exec_inflight(self.router, TOTAL, IN_FLIGHT, CHANNELS, 120.0))
        if out.failures:
            raise BenchError(out.describe())
        return out.ok / out.seconds

    track_in_flight_rate.unit = "execs/s"  # type: ignore[attr-defined]


class LocalSpawnRate:
    """The reference: os.posix_spawn('true') + os.waitpid in this process."""

    def track_sequential_rate(self) -> float:
        return local_spawn_rate(SEQUENTIAL, 1)

    track_sequential_rate.unit = "execs/s"  # type: ignore[attr-defined]

    def track_in_flight_rate(self) -> float:
        return local_spawn_rate(TOTAL, IN_FLIGHT)

    track_in_flight_rate.unit = "execs/s"  # type: ignore[attr-defined]
