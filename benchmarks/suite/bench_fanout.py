"""N concurrent execs of `head -c 65536 /dev/zero`, all in flight, every byte checked: through the
router, as local asyncio subprocesses, and over one ssh ControlMaster connection."""
from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable

from . import alternating
from .common import SIZE, KiB, RouterProcess, Target, closing_on_error, raise_nofile_limit, zeros_command
from .rows import Axis, Row, Section, vs
from .sshd import SSHServer, require_openssh
from .workloads import AioSide, Outcome, router_fanout, subprocess_batch

OUTPUT = 64 * KiB


def fanout_timeout(n: int) -> float:
    return max(120.0, n * 0.1)


class Fanout:
    """impl: router (TaskExecStart, TaskExecStdioRead of stdout to the end, TaskExecWait, over 4
    grpc.aio channels; stdout and stderr piped), local (asyncio.create_subprocess_exec with pipes +
    communicate()), ssh (the same command through one ControlMaster connection, MaxSessions 1000).
    One server for all calls of a setup."""

    params = [SIZE.fanout, ["router", "local", "ssh"]]
    param_names = ["n", "impl"]
    number = 1
    repeat = (1, 5, 30.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, n: int, impl: str) -> None:
        raise_nofile_limit()  # N children with three pipes each, here and in the router (inherited)
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.batch: Callable[[], Outcome] = getattr(self, f"_start_{impl}")(n)

    def _start_router(self, n: int) -> Callable[[], Outcome]:
        router = self.stack.enter_context(RouterProcess())
        side = self.stack.enter_context(AioSide(router.target))
        return lambda: router_fanout(side, router.metadata, n, OUTPUT, fanout_timeout(n)).checked()

    def _start_local(self, n: int) -> Callable[[], Outcome]:
        side = self.stack.enter_context(AioSide())
        return lambda: subprocess_batch(side, zeros_command(OUTPUT), n, n, OUTPUT, fanout_timeout(n)).checked()

    def _start_ssh(self, n: int) -> Callable[[], Outcome]:
        require_openssh()
        if n > SIZE.fanout_ssh_max:
            raise NotImplementedError(f"ssh fan-out runs up to N={SIZE.fanout_ssh_max} (sshd MaxSessions)")
        ssh = self.stack.enter_context(SSHServer())
        ssh.start_master()
        side = self.stack.enter_context(AioSide())
        argv = ssh.argv(shlex.join(zeros_command(OUTPUT)), mux=True)
        return lambda: subprocess_batch(side, argv, n, n, OUTPUT, fanout_timeout(n)).checked()

    def teardown(self, n: int, impl: str) -> None:
        self.stack.close()

    def time_fanout(self, n: int, impl: str) -> None:
        self.batch()

    def track_rate(self, n: int, impl: str) -> float:
        return self.batch().rate

    track_rate.unit = "execs/s"  # type: ignore[attr-defined]


class FanoutRatio(alternating.RouterVsReference):
    """router / reference fan-out rate (= reference / router wall time), alternating rounds in one
    setup (target: >= 0.75 of local subprocesses at N=1024)."""

    params = [SIZE.fanout, ["local", "ssh"]]
    param_names = ["n", "reference"]
    subject = Fanout
    rounds = SIZE.rounds["fanout"]

    @staticmethod
    def target(n: int, reference: str) -> Target | None:
        return Target(">=", 0.75) if (n, reference) == (1024, "local") else None

    def track_ratio(self, n: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "router/reference"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def fanout_rows(axis: Axis) -> list[list[Row]]:
    return [[vs(f"fan-out N={n} x 64 KiB, execs/s (= wall time local/router): router vs local subprocesses",
                FanoutRatio, (n,), "local"),
             vs(f"fan-out N={n}: router vs ssh ControlMaster", FanoutRatio, (n,), "ssh")]
            for n in axis(Fanout)]


COMPARE = {"fanout": Section(fanout_rows, "fanout")}
