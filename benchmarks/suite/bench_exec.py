"""Exec rate: start + wait of `true` (stdout and stderr piped), one at a time and 64 in flight,
against local posix_spawn + waitpid and ssh; and the floor under it, one empty gRPC call."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from . import alternating
from .bare_grpc import CALL_METHOD, MODES
from .common import (
    IN_FLIGHT,
    SIZE,
    BareGrpcProcess,
    RouterProcess,
    SyncRouter,
    Target,
    closing_on_error,
)
from .rows import Axis, Row, Section, V, vs
from .sshd import SSHServer, require_openssh
from .workloads import AioSide, local_spawn_rate, router_exec_rate, rpc_calls, subprocess_batch


def exec_count(concurrency: int, impl: str) -> int:
    n = SIZE.exec_sequential if concurrency == 1 else SIZE.exec_in_flight
    return n // 2 if impl == "ssh" else n  # ssh is several times slower: half the execs


def batch_timeout(count: int) -> float:
    return max(120.0, count * 0.5)


def sequential_rate(count: int, one: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        one()
    return count / (time.perf_counter() - t0)


class ExecRate:
    """impl: router (sequential: the sync client; in flight: grpc.aio over 4 channels),
    router_no_journal (the same router started with --no-journal), local (os.posix_spawn +
    os.waitpid, in threads when in flight), ssh (`ssh host true` over one ControlMaster
    connection; half as many execs). One server for all calls of a setup."""

    params = [[1, IN_FLIGHT], ["router", "router_no_journal", "local", "ssh"]]
    param_names = ["in_flight", "impl"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, in_flight: int, impl: str) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.batch: Callable[[], float] = getattr(self, f"_start_{impl}")(exec_count(in_flight, impl), in_flight)

    def _start_router(self, count: int, concurrency: int, args: tuple[str, ...] = ()) -> Callable[[], float]:
        router = self.stack.enter_context(RouterProcess(args=args))
        client = SyncRouter(router)
        for _ in range(5):  # channel, first spawns
            client.start_wait(["true"])
        if concurrency == 1:
            return lambda: sequential_rate(count, lambda: client.start_wait(["true"]))
        side = self.stack.enter_context(AioSide(router.target))
        return lambda: router_exec_rate(side, router.metadata, count, concurrency, batch_timeout(count)).checked().rate

    def _start_router_no_journal(self, count: int, concurrency: int) -> Callable[[], float]:
        return self._start_router(count, concurrency, ("--no-journal",))

    def _start_local(self, count: int, concurrency: int) -> Callable[[], float]:
        return lambda: local_spawn_rate(count, concurrency, batch_timeout(count))

    def _start_ssh(self, count: int, concurrency: int) -> Callable[[], float]:
        require_openssh()
        ssh = self.stack.enter_context(SSHServer())
        ssh.start_master()
        if concurrency == 1:
            return lambda: sequential_rate(count, lambda: ssh.run("true", mux=True))
        side = self.stack.enter_context(AioSide())
        argv = ssh.argv("true", mux=True)
        return lambda: subprocess_batch(side, argv, count, concurrency, 0, batch_timeout(count)).checked().rate

    def teardown(self, in_flight: int, impl: str) -> None:
        self.stack.close()

    def time_execs(self, in_flight: int, impl: str) -> None:
        self.batch()

    def track_rate(self, in_flight: int, impl: str) -> float:
        return self.batch()

    track_rate.unit = "execs/s"  # type: ignore[attr-defined]


class ExecRatio(alternating.RouterVsReference):
    """router / reference exec rate, alternating rounds in one setup (target: >= 0.45 of local
    posix_spawn with 64 in flight)."""

    params = [[1, IN_FLIGHT], ["local", "ssh"]]
    param_names = ["in_flight", "reference"]
    subject = ExecRate
    rounds = SIZE.rounds["exec"]

    @staticmethod
    def target(in_flight: int, reference: str) -> Target | None:
        return Target(">=", 0.45) if (in_flight, reference) == (IN_FLIGHT, "local") else None

    def track_ratio(self, in_flight: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "router/reference"  # type: ignore[attr-defined]


class JournalRatio(alternating.RouterVsReference):
    """The journal's cost, exec rate with the journal (the default) / with --no-journal,
    alternating rounds in one setup (target: >= 0.95, the journal costs at most 5 %)."""

    params = [[1, IN_FLIGHT], ["router_no_journal"]]
    param_names = ["in_flight", "reference"]
    subject = ExecRate
    rounds = SIZE.rounds["journal"]

    @staticmethod
    def target(in_flight: int, reference: str) -> Target | None:
        return Target(">=", 0.95)

    def track_ratio(self, in_flight: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "journal/no journal"  # type: ignore[attr-defined]


class RpcFloor:
    """The floor of one gRPC call here: an empty unary call (no serializers) to the bare grpcio
    server in its own process (sync, grpc.aio, grpc.aio on uvloop), 64 in flight over 4 grpc.aio
    channels. Start + wait of an exec is two calls."""

    params = [list(MODES)]
    param_names = ["mode"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 600

    def setup(self, mode: str) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            server = self.stack.enter_context(BareGrpcProcess(mode))
            self.side = self.stack.enter_context(AioSide(server.target))

    def teardown(self, mode: str) -> None:
        self.stack.close()

    def _calls(self) -> float:
        n = SIZE.rpc_calls
        return rpc_calls(self.side, CALL_METHOD, n, IN_FLIGHT, batch_timeout(n)).checked().rate

    def time_calls(self, mode: str) -> None:
        self._calls()

    def track_rate(self, mode: str) -> float:
        return self._calls()

    track_rate.unit = "calls/s"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def how_many(in_flight: int) -> str:
    return "sequential" if in_flight == 1 else f"{in_flight} in flight"


def exec_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for k in axis(ExecRate):
        how = how_many(k)
        rows = [vs(f"exec rate, {how}, start+wait of `true`: router vs local posix_spawn", ExecRatio, (k,), "local"),
                vs(f"exec rate, {how}: router vs ssh ControlMaster", ExecRatio, (k,), "ssh")]
        if k > 1:  # the floor: an exec is two calls (start, wait)
            rows += [Row(f"exec rate, {how}: router (2 calls per exec) vs empty unary calls to a bare "
                         f"grpcio server ({mode})", V(ExecRate, (k, "router")), V(RpcFloor, (mode,)))
                     for mode in axis(RpcFloor)]
        groups.append(rows)
    return groups


def journal_rows(axis: Axis) -> list[list[Row]]:
    return [[vs(f"exec rate, {how_many(k)}, start+wait of `true`: journal on (default) vs `--no-journal`",
                JournalRatio, (k,), "router_no_journal")]
            for k in axis(JournalRatio)]


COMPARE = {
    "exec": Section(exec_rows, "exec"),
    "journal": Section(journal_rows, "journal"),
}
