"""The server's memory, threads and descriptors, from /proc/PID/status of the `router serve`
process (as track_*: peakmem_ would measure this process, and does not count mapped files).

Setup does the work (one exec streamed to a reader; N idle execs started) and records the
server's status before and after; the tracks report those readings."""
from __future__ import annotations

import contextlib
import os
import secrets
import signal

from .common import (
    IN_FLIGHT,
    SIZE,
    BenchError,
    MiB,
    RouterProcess,
    SyncRouter,
    Target,
    closing_on_error,
    human_size,
    processes_with_arg,
    raise_nofile_limit,
    stream_timeout,
    zeros_command,
)
from .rows import Axis, Row, Section, V, tracks_of
from .workloads import AioSide, router_start_idle


class ServerMemory:
    """The server's RSS before and after one exec streamed `size` bytes to a reader."""

    params = [[SIZE.memory]]
    param_names = ["size"]
    timeout = 1200
    growth_target = Target("<=", 64, "MiB")  # peak (VmHWM) minus before

    def setup(self, size: int) -> None:
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            router = self.stack.enter_context(RouterProcess())
            client = SyncRouter(router)
            client.run_output(zeros_command(4096), 4096)  # warm: one exec, one read
            self.before = router.status()
            client.run_output(zeros_command(size), size, timeout=stream_timeout(size, 300.0))
            self.after = router.status()

    def teardown(self, size: int) -> None:
        self.stack.close()

    def track_rss_before(self, size: int) -> float:
        return self.before["VmRSS"] / MiB

    track_rss_before.unit = "MiB"  # type: ignore[attr-defined]

    def track_rss_after(self, size: int) -> float:
        return self.after["VmRSS"] / MiB

    track_rss_after.unit = "MiB"  # type: ignore[attr-defined]

    def track_peak_rss(self, size: int) -> float:
        """VmHWM after the stream: the server's peak RSS so far."""
        return self.after["VmHWM"] / MiB

    track_peak_rss.unit = "MiB"  # type: ignore[attr-defined]

    def track_rss_growth(self, size: int) -> float:
        """Peak RSS (VmHWM) after the stream minus RSS before it (target <= 64 MiB)."""
        return (self.after["VmHWM"] - self.before["VmRSS"]) / MiB

    track_rss_growth.unit = "MiB"  # type: ignore[attr-defined]


class IdleExecs:
    """N idle execs (`sleep`, stdout and stderr piped, nobody reading) held open by the server;
    n=0 is the same server with none. Teardown fails if any exec outlives the server's shutdown."""

    params = [[0, SIZE.idle]]
    param_names = ["n"]
    timeout = 600

    def setup(self, n: int) -> None:
        # `sleep 600.NNNNNN`, unique to this setup: findable if the server leaves any behind.
        self.marker = f"600.{secrets.randbelow(10**6):06d}"
        raise_nofile_limit()  # the router (inherits it) holds pipes for every exec
        self.stack = contextlib.ExitStack()
        with closing_on_error(self.stack):
            self.stack.callback(self._no_leftovers)
            router = self.stack.enter_context(RouterProcess())
            side = self.stack.enter_context(AioSide(router.target))
            if n:
                router_start_idle(side, router.metadata, ["sleep", self.marker], n, IN_FLIGHT,
                                  max(120.0, n * 0.1)).checked()
            self.status = router.status()

    def _no_leftovers(self) -> None:
        """After the server stopped (SIGTERM kills its execs): none of them may be left."""
        leftovers = processes_with_arg(self.marker)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            raise BenchError(f"{len(leftovers)} `sleep {self.marker}` execs outlived the router's shutdown")

    def teardown(self, n: int) -> None:
        self.stack.close()

    def track_rss(self, n: int) -> float:
        return self.status["VmRSS"] / MiB

    track_rss.unit = "MiB"  # type: ignore[attr-defined]

    def track_threads(self, n: int) -> int:
        return self.status["Threads"]

    track_threads.unit = "threads"  # type: ignore[attr-defined]

    def track_fds(self, n: int) -> int:
        return self.status["fds"]

    track_fds.unit = "fds"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def memory_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for size in axis(ServerMemory):
        mem = tracks_of(ServerMemory, size)
        groups.append([
            Row(f"server VmRSS after one exec streamed {human_size(size)} to a reader (reference: before)",
                mem("track_rss_after"), mem("track_rss_before")),
            Row(f"server RSS growth while streaming {human_size(size)}: peak (VmHWM) minus before",
                mem("track_rss_growth"), None, ServerMemory.growth_target),
            Row("server peak RSS (VmHWM) during that stream (reference: VmRSS before)",
                mem("track_peak_rss"), mem("track_rss_before")),
        ])
    n = max(axis(IdleExecs))
    groups.append([Row(f"server {what} with {n} idle execs held open (reference: no execs)",
                       V(IdleExecs, (n,), method), V(IdleExecs, (0,), method),
                       per=(n, "per exec") if method == "track_fds" else None)
                   for what, method in (("VmRSS", "track_rss"), ("threads", "track_threads"),
                                        ("open descriptors", "track_fds"))])
    return groups


# One round: the tracks read what one setup recorded.
COMPARE = {"memory": Section(memory_rows, None)}
