"""One exec's stdout end to end: `head -c N /dev/zero` on a router in its own process, read through
TaskExecStdioRead, against the same bytes from a bare grpcio server and from OpenSSH."""
from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable

from . import alternating
from .bare_grpc import STREAM_METHOD
from .common import (
    SIZE,
    BareGrpcProcess,
    BenchError,
    MiB,
    RouterProcess,
    SyncRouter,
    Target,
    closing_on_error,
    stream_timeout,
    zeros_command,
)
from .sshd import SSHServer, require_openssh

WARM = 16 * MiB


class Stream:
    """impl: router (an exec's stdout through TaskExecStdioRead, start and wait included; a sync
    grpcio client reading raw messages, so the client does no protobuf parsing), bare_grpc (the
    same grpcio stack and options streaming prebuilt 1 MiB messages), ssh (`ssh host head -c N
    /dev/zero` to a loopback sshd, output to /dev/null). One server for all calls of a setup."""

    params = [SIZE.stream, ["router", "bare_grpc", "ssh"]]
    param_names = ["size", "impl"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, size: int, impl: str) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.send: Callable[[int], None] = getattr(self, f"_start_{impl}")()
            self.send(min(size, WARM))  # connections, first spawn, lazy imports: not measured

    def _start_router(self) -> Callable[[int], None]:
        client = SyncRouter(self.stack.enter_context(RouterProcess()))
        return lambda n: client.run_output(zeros_command(n), n, timeout=stream_timeout(n))

    def _start_bare_grpc(self) -> Callable[[int], None]:
        server = self.stack.enter_context(BareGrpcProcess())
        call = server.channel().unary_stream(STREAM_METHOD, request_serializer=None, response_deserializer=None)

        def send(n: int) -> None:
            got = sum(len(m) for m in call(str(n).encode(), timeout=stream_timeout(n)))
            if got != n:
                raise BenchError(f"bare grpc sent {got} bytes, expected {n}")
        return send

    def _start_ssh(self) -> Callable[[int], None]:
        require_openssh()
        ssh = self.stack.enter_context(SSHServer())
        return lambda n: ssh.run(shlex.join(zeros_command(n)), timeout=stream_timeout(n))

    def teardown(self, size: int, impl: str) -> None:
        self.stack.close()

    def time_stream(self, size: int, impl: str) -> None:
        self.send(size)

    def track_rate(self, size: int, impl: str) -> float:
        t0 = time.perf_counter()
        self.send(size)
        return size / (time.perf_counter() - t0) / 1e6

    track_rate.unit = "MB/s"  # type: ignore[attr-defined]


class StreamRatio(alternating.RouterVsReference):
    """router / reference stream rate, alternating rounds in one setup (targets: >= 0.7 of the
    bare grpcio server, >= 1.5 of OpenSSH)."""

    params = [SIZE.stream, ["bare_grpc", "ssh"]]
    param_names = ["size", "reference"]
    subject = Stream
    rounds = SIZE.rounds["stream"]

    @staticmethod
    def target(size: int, reference: str) -> Target | None:
        return {"bare_grpc": Target(">=", 0.7), "ssh": Target(">=", 1.5)}[reference]

    def track_ratio(self, size: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "router/reference"  # type: ignore[attr-defined]
