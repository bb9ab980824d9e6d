"""N concurrent execs of `head -c 65536 /dev/zero`, all in flight over grpc.aio (start, read stdout to
the end, wait; every byte checked), against the same commands as local asyncio subprocesses."""
from __future__ import annotations

from .common import BenchError, KiB, RouterProcess
from .workloads import close_event_loop, local_fanout, new_event_loop, router_fanout

SIZE = 64 * KiB
CHANNELS = 4


class Fanout:
    params = [64, 256]
    param_names = ["n"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, n: int) -> None:
        self.loop = new_event_loop()
        self.router = RouterProcess()
        self.router.channel().close()

    def teardown(self, n: int) -> None:
        self.router.stop()
        close_event_loop(self.loop)

    def _router(self, n: int):  # type: ignore[no-untyped-def]
        out = self.loop.run_until_complete(router_fanout(self.router, n, SIZE, CHANNELS, 120.0))
        if out.failures:
            raise BenchError(out.describe())
        return out

    def time_fanout(self, n: int) -> None:
        self._router(n)

    def time_local_asyncio_reference(self, n: int) -> None:
        out = self.loop.run_until_complete(local_fanout(["head", "-c", str(SIZE), "/dev/zero"], n, SIZE, 120.0))
        if out.failures:
            raise BenchError(out.describe())

    def track_execs_per_second(self, n: int) -> float:
        out = self._router(n)
        return out.ok / out.seconds

    track_execs_per_second.unit = "execs/s"  # type: ignore[attr-defined]
