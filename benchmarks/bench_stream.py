"""One exec's stdout end to end: `head -c N /dev/zero` on a router in its own process, read through
TaskExecStdioRead by a sync grpcio client (raw messages, no parsing), against a bare grpcio server
(same stack and options) streaming prebuilt 1 MiB messages."""
from __future__ import annotations

import time

import grpc

from .bare_grpc import METHOD as BARE_METHOD
from .common import CHANNEL_OPTIONS, BareGrpcProcess, BenchError, MiB, RouterProcess, SyncRouter, wait_channel_ready

STREAM_TIMEOUT = 300.0


class Stream:
    params = [64 * MiB, 256 * MiB]
    param_names = ["size"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, size: int) -> None:
        self.router = RouterProcess()
        try:
            self.client = SyncRouter(self.router.channel(), self.router.metadata)
            self.client.run_output(["head", "-c", str(MiB), "/dev/zero"], MiB)  # warm: connection, first spawn
        except BaseException:
            self.router.stop()
            raise

    def teardown(self, size: int) -> None:
        self.router.stop()

    def _stream(self, size: int) -> None:
        self.client.run_output(["head", "-c", str(size), "/dev/zero"], size, timeout=STREAM_TIMEOUT)

    def time_stream(self, size: int) -> None:
        self._stream(size)

    def track_stream_rate(self, size: int) -> float:
        t0 = time.perf_counter()
        self._stream(size)
        return size / (time.perf_counter() - t0) / 1e6

    track_stream_rate.unit = "MB/s"  # type: ignore[attr-defined]


class BareGrpcStream:
    """The reference: what the same grpcio stack does with no router behind it."""

    params = [64 * MiB, 256 * MiB]
    param_names = ["size"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, size: int) -> None:
        self.server = BareGrpcProcess()
        try:
            self.channel = grpc.insecure_channel(self.server.target, options=CHANNEL_OPTIONS)
            wait_channel_ready(self.channel)
            self.call = self.channel.unary_stream(BARE_METHOD, request_serializer=None, response_deserializer=None)
            self._stream(MiB)
        except BaseException:
            self.server.stop()
            raise

    def teardown(self, size: int) -> None:
        self.channel.close()
        self.server.stop()

    def _stream(self, size: int) -> None:
        got = sum(len(m) for m in self.call(str(size).encode(), timeout=STREAM_TIMEOUT))
        if got != size:
            raise BenchError(f"bare grpc sent {got} bytes, expected {size}")

    def time_stream(self, size: int) -> None:
        self._stream(size)

    def track_stream_rate(self, size: int) -> float:
        t0 = time.perf_counter()
        self._stream(size)
        return size / (time.perf_counter() - t0) / 1e6

    track_stream_rate.unit = "MB/s"  # type: ignore[attr-defined]
