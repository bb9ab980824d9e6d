"""Many execs in few calls. The fan-out of N execs of `head -c 65536 /dev/zero` and the
exec rate of `true` through the router's own service (BatchStart in chunks, one Watch with the
output in each exit event), against local asyncio subprocesses, GNU parallel (if installed) and
local posix_spawn, every byte checked."""
from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from . import alternating, bench_exec, bench_fanout
from .bench_exec import batch_timeout
from .bench_fanout import OUTPUT, fanout_timeout
from .common import (
    IN_FLIGHT,
    SIZE,
    BenchError,
    RouterProcess,
    Target,
    closing_on_error,
    zeros_command,
)
from .rows import Axis, Row, Section, V, vs
from .workloads import AioSide, Outcome, local_spawn_rate, router_batch, subprocess_batch, zeros


def checked_run(kind: str, argv: list[str], n: int, timeout: float, stdin: bytes | None = None) -> Outcome:
    """Run argv (which prints n x OUTPUT zero bytes on its stdout), timed and checked."""
    out = Outcome(n)
    t0 = time.perf_counter()
    done = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)
    out.seconds = time.perf_counter() - t0
    if done.returncode != 0 or len(done.stdout) != n * OUTPUT or not zeros(done.stdout):
        out.fail(kind, f"exit {done.returncode}, {len(done.stdout)} bytes (expected {n * OUTPUT}), "
                       f"stderr {done.stderr[-300:]!r}")
    else:
        out.ok = n
    return out


def cli_fanout(router: RouterProcess, n: int, timeout: float) -> Outcome:
    """`router batch -j n` of n lines of the command, its jobs' output on its stdout."""
    token = router.metadata[0][1].split(" ", 1)[1]
    line = shlex.join(zeros_command(OUTPUT)).encode() + b"\n"
    argv = [sys.executable, "-m", "router.cli", "batch", "-j", str(n), "--target", router.target, "--token", token]
    return checked_run("router batch", argv, n, timeout, stdin=line * n)


def parallel_fanout(n: int, timeout: float) -> Outcome:
    """GNU parallel running the command n times, all at once (-j n), its output grouped per job
    as parallel does by default, read from its stdout and checked."""
    parallel = shutil.which("parallel") or "parallel"
    return checked_run("parallel", [parallel, "--will-cite", "-N0", "-j", str(n), *zeros_command(OUTPUT), ":::",
                                    *map(str, range(n))], n, timeout)


class BatchFanout(bench_fanout.Fanout):
    """impl: batch (the router's BatchStart + one Watch, over 4 grpc.aio channels), cli (`router
    batch -j N` of N lines, reading its stdout), local (asyncio subprocesses with pipes, all at
    once, as in Fanout), local_sh (the same, each through `sh -c` as `router batch` and GNU
    parallel run a line), parallel (GNU parallel -j N). One server per setup."""

    params = [SIZE.fanout, ["batch", "cli", "local", "local_sh", "parallel"]]

    def _start_batch(self, n: int) -> Callable[[], Outcome]:
        router = self.stack.enter_context(RouterProcess())
        side = self.stack.enter_context(AioSide(router.target))
        argv = zeros_command(OUTPUT)
        return lambda: router_batch(side, router.metadata, n, argv, OUTPUT, fanout_timeout(n)).checked()

    def _start_local_sh(self, n: int) -> Callable[[], Outcome]:
        side = self.stack.enter_context(AioSide())
        argv = ["sh", "-c", shlex.join(zeros_command(OUTPUT))]  # what `router batch` runs per line
        return lambda: subprocess_batch(side, argv, n, n, OUTPUT, fanout_timeout(n)).checked()

    def _start_cli(self, n: int) -> Callable[[], Outcome]:
        router = self.stack.enter_context(RouterProcess())
        return lambda: cli_fanout(router, n, fanout_timeout(n)).checked()

    def _start_parallel(self, n: int) -> Callable[[], Outcome]:
        if shutil.which("parallel") is None:
            raise NotImplementedError("GNU parallel is not installed")
        return lambda: parallel_fanout(n, fanout_timeout(n)).checked()


class BatchFanoutRatio(alternating.RouterVsReference):
    """batch / reference fan-out rate, alternating rounds in one setup (target: >= 0.8 of local
    asyncio subprocesses at N=1024 and 4096)."""

    params = [SIZE.fanout, ["local", "parallel"]]
    param_names = ["n", "reference"]
    subject = BatchFanout
    router_side = "batch"
    rounds = SIZE.rounds["batch"]

    @staticmethod
    def target(n: int, reference: str) -> Target | None:
        return Target(">=", 0.8) if reference == "local" and n >= 1024 else None

    def track_ratio(self, n: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "batch/reference"  # type: ignore[attr-defined]


class BatchExecRate:
    """Exec rate of `true`: batch (BatchStart in chunks + one Watch, every exit checked) or local
    (os.posix_spawn + waitpid in IN_FLIGHT threads, its best here)."""

    params = [["batch", "local"]]
    param_names = ["impl"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 900

    def setup(self, impl: str) -> None:
        count = SIZE.exec_in_flight
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            if impl == "batch":
                router = self.stack.enter_context(RouterProcess())
                side = self.stack.enter_context(AioSide(router.target))
                router_batch(side, router.metadata, 8, ["true"], 0, 60.0).checked()  # channels, first spawns
                self.batch = lambda: router_batch(side, router.metadata, count, ["true"], 0,
                                                  batch_timeout(count)).checked().rate
            elif impl == "local":
                self.batch = lambda: local_spawn_rate(count, IN_FLIGHT, batch_timeout(count))
            else:
                raise BenchError(f"unknown impl {impl!r}")

    def teardown(self, impl: str) -> None:
        self.stack.close()

    def time_execs(self, impl: str) -> None:
        self.batch()

    def track_rate(self, impl: str) -> float:
        return self.batch()

    track_rate.unit = "execs/s"  # type: ignore[attr-defined]


class BatchExecRatio(alternating.RouterVsReference):
    """batch / local posix_spawn exec rate, alternating rounds (target: >= 0.8)."""

    params = [["local"]]
    param_names = ["reference"]
    subject = BatchExecRate
    router_side = "batch"
    rounds = SIZE.rounds["batch"]

    @staticmethod
    def target(reference: str) -> Target | None:
        return Target(">=", 0.8)

    def track_ratio(self, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "batch/local"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def batch_rows(axis: Axis) -> list[list[Row]]:
    groups = [[vs(f"fan-out N={n} x 64 KiB through BatchStart + one Watch: router vs local asyncio subprocesses",
                  BatchFanoutRatio, (n,), "local"),
               vs(f"fan-out N={n}: BatchStart + Watch vs GNU parallel -j N", BatchFanoutRatio, (n,), "parallel"),
               Row(f"fan-out N={n}: `router batch -j N` (the CLI, output to its stdout) vs local asyncio subprocesses",
                   V(BatchFanout, (n, "cli")), V(BatchFanout, (n, "local")), BatchFanoutRatio.target(n, "local")),
               Row(f"fan-out N={n}: `router batch -j N` vs local asyncio subprocesses of the same line through "
                   "`sh -c`", V(BatchFanout, (n, "cli")), V(BatchFanout, (n, "local_sh")),
                   BatchFanoutRatio.target(n, "local")),
               Row(f"fan-out N={n}: `router batch -j N` vs GNU parallel -j N",
                   V(BatchFanout, (n, "cli")), V(BatchFanout, (n, "parallel"))),
               Row(f"fan-out N={n}: BatchStart + Watch vs Modal's calls (start, read, wait per exec)",
                   V(BatchFanout, (n, "batch")), V(bench_fanout.Fanout, (n, "router")))]
              for n in axis(BatchFanout)]
    groups.append([vs("exec rate of `true` through BatchStart + Watch vs local posix_spawn (64 threads)",
                      BatchExecRatio, (), "local"),
                   Row("exec rate of `true`: BatchStart + Watch vs Modal's calls (start + wait, 64 in flight)",
                       V(BatchExecRate, ("batch",)), V(bench_exec.ExecRate, (IN_FLIGHT, "router")))])
    return groups


COMPARE = {"batch": Section(batch_rows, "batch")}
