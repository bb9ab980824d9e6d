"""Draining one pipe fed by `head -c N /dev/zero` (1 MiB pipe, O_NONBLOCK, poll between drains of up
to 4 MiB, as the router's event loop does) into the router's log and into the alternatives.

The drain runs in this process, so peakmem_ and the RSS track mean something here (they do not for
the server benchmarks, whose work happens in `router serve`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from . import alternating
from .common import SIZE, BenchError, GiB, MiB, Target, close_fd, human_size, proc_status, reap, stop_process
from .rows import Axis, Row, Section, V, vs
from .sinks import Sink, drain_until_eof, new_sink, spawn_zero_writer

DRAIN_TIMEOUT = 600.0
# LogKind's kinds of log, and LogKindSteady's (sinks.py makes each).
LOG_KINDS = ("mmap_file", "mmap_file_populate", "mmap_shm", "mmap_memfd", "mmap_anon_populate", "pwrite_shm", "splice")
STEADY_KINDS = ("fastio", "readv_pwrite", "mmap_file", "splice", "pwrite_shm")


class _Drained:
    """What every drain class shares: setup, the drain, its rate and CPU. (asv skips names that
    start with an underscore.)"""

    # Every call needs a fresh writer and sink: asv re-runs setup before every timed sample.
    number = 1
    repeat = (1, 7, 20.0)
    warmup_time = 0.0
    timeout = 900
    # What _arm prepared: the sink, its directory and the writer (None once torn down).
    sink: Sink | None
    dir: str | None
    proc: subprocess.Popen | None

    def setup(self, size: int, impl: str) -> None:
        self.sink = self.dir = self.proc = None
        self.fd = -1
        try:
            self._arm(size, impl)
        except BaseException:
            self.teardown(size, impl)  # asv does not tear down after a failed setup
            raise

    def _arm(self, size: int, impl: str) -> None:
        """A fresh sink in a fresh directory, and a writer of `size` bytes; what was there goes."""
        self.teardown(size, impl)
        self.sink, self.dir = new_sink(impl)
        self.proc, self.fd = spawn_zero_writer(size)
        self.armed = True

    def teardown(self, size: int, impl: str) -> None:
        close_fd(self.fd)
        self.fd = -1
        if self.proc is not None:
            stop_process(self.proc, 5)
        if self.sink is not None:
            self.sink.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.sink = self.dir = self.proc = None

    def _armed(self) -> tuple[Sink, subprocess.Popen]:
        """The sink and the writer _arm prepared."""
        if self.sink is None or self.proc is None:
            raise BenchError("no sink and writer: setup did not run, or teardown did")
        return self.sink, self.proc

    def _ready(self, size: int, impl: str) -> None:
        """Before a measurement: a fresh writer and sink if the last measurement used them."""
        if not self.armed:
            self._arm(size, impl)

    def _drain(self, size: int, impl: str) -> None:
        """Drain the armed writer to EOF: the measured part."""
        self._ready(size, impl)
        self.armed = False
        sink, _ = self._armed()
        n = drain_until_eof(self.fd, sink, DRAIN_TIMEOUT)
        if n != size:
            raise BenchError(f"drained {n} bytes, expected {size}")

    def _check(self, size: int) -> None:
        sink, proc = self._armed()
        reap(proc, 30)
        kept = sink.kept()
        if kept not in (None, size):
            raise BenchError(f"the sink kept {kept} bytes of {size}")

    def track_rate(self, size: int, impl: str) -> float:
        self._ready(size, impl)
        t0 = time.perf_counter()
        self._drain(size, impl)
        elapsed = time.perf_counter() - t0
        self._check(size)
        return size / elapsed / 1e6

    track_rate.unit = "MB/s"  # type: ignore[attr-defined]

    def track_cpu(self, size: int, impl: str) -> float:
        """This process's CPU seconds (user + system) per GiB drained."""
        self._ready(size, impl)
        t0 = os.times()
        self._drain(size, impl)
        t1 = os.times()
        self._check(size)
        return (t1.user + t1.system - t0.user - t0.system) / (size / GiB)

    track_cpu.unit = "CPU s/GiB"  # type: ignore[attr-defined]


class Drain(_Drained):
    """impl: fastio (`_fastio.SegmentedLog`, the router's log), readv (os.readv into one reused 1 MiB
    buffer: the ceiling, keeps nothing), readv_pwrite (readv + os.pwrite into 32 MiB segment files:
    the ceiling for a log that keeps its data)."""

    params = [SIZE.drain, ["fastio", "readv", "readv_pwrite"]]
    param_names = ["size", "impl"]

    def time_drain(self, size: int, impl: str) -> None:
        self._drain(size, impl)

    def peakmem_drain(self, size: int, impl: str) -> None:
        self._drain(size, impl)

    def track_rss_growth(self, size: int, impl: str) -> float:
        """This process's RSS growth over one drain, MiB: a log that maps its segments shows here
        (peakmem_ does not count mapped files); a pwrite log stays flat."""
        self._ready(size, impl)
        before = proc_status(os.getpid())["VmRSS"]
        self._drain(size, impl)
        grown = (proc_status(os.getpid())["VmRSS"] - before) / MiB
        self._check(size)
        return grown

    track_rss_growth.unit = "MiB"  # type: ignore[attr-defined]


class LogKind(Drain):
    """The other kinds of log weighed for the router's, measured against readv + pwrite (Drain's readv_pwrite):
    readv straight into shared mappings of 32 MiB segments (files on /tmp, with MADV_POPULATE_WRITE
    4 MiB ahead, files on /dev/shm, memfds, anonymous memory with MADV_HUGEPAGE populated ahead),
    readv + pwrite into files on /dev/shm, and splice from the pipe into a file."""

    params = [SIZE.drain, list(LOG_KINDS)]
    param_names = ["size", "kind"]


class LogKindSteady(_Drained):
    """Steady state: the same drain into storage that was written once before (an untimed
    drain of as many bytes into the same sink, then `Sink.recycle()`), so no page is fresh, as
    when a router writes into slots retention released. kind: fastio (`_fastio`: a new log on the
    same store gets the closed log's slots back), readv_pwrite (readv into a reused buffer +
    pwrite: what `_fastio` does), mmap_file (readv straight into the shared mappings of the
    segment files, kept mapped: one copy fewer, every page already faulted), splice (pipe -> the
    same file), and readv + pwrite into files on /dev/shm (pwrite_shm). Rate and CPU only (asv
    runs every method in a process of its own: CI time)."""

    params = [SIZE.drain, list(STEADY_KINDS)]
    param_names = ["size", "kind"]

    def _arm(self, size: int, impl: str) -> None:
        super()._arm(size, impl)
        sink, _ = self._armed()
        n = drain_until_eof(self.fd, sink, DRAIN_TIMEOUT)  # the first pass: every page written
        self._check(size)
        if n != size:
            raise BenchError(f"the first pass drained {n} bytes, expected {size}")
        close_fd(self.fd)
        self.fd = -1
        sink.recycle()
        self.proc, self.fd = spawn_zero_writer(size)


class DrainRatio(alternating.RouterVsReference):
    """fastio / reference drain rate, alternating rounds in one setup (target: >= 0.9 of readv +
    pwrite, the ceiling for a log that keeps its data)."""

    params = [SIZE.drain, ["readv", "readv_pwrite"]]
    param_names = ["size", "reference"]
    subject = Drain
    router_side = "fastio"
    rounds = SIZE.rounds["drain"]

    @staticmethod
    def target(size: int, reference: str) -> Target | None:
        return Target(">=", 0.9) if reference == "readv_pwrite" else None

    def track_ratio(self, size: int, reference: str) -> float:
        return self.ratio()

    track_ratio.unit = "fastio/reference"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def drain_rows(axis: Axis) -> list[list[Row]]:
    return [[vs(f"drain {human_size(size)} from one pipe: `_fastio` vs `os.readv` into a reused 1 MiB buffer "
                "(ceiling)", DrainRatio, (size,), "readv"),
             vs(f"drain {human_size(size)} from one pipe: `_fastio` vs readv + `os.pwrite` into 32 MiB segment files "
                "(ceiling for a log that keeps its data)", DrainRatio, (size,), "readv_pwrite")]
            for size in axis(Drain)]


def log_kinds_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for size in axis(LogKind):
        ref = V(Drain, (size, "readv_pwrite"))
        kinds = [V(Drain, (size, k)) for k in ("readv", "fastio")] + [V(LogKind, (size, k)) for k in LOG_KINDS]
        groups.append([Row(f"drain {human_size(size)} from one pipe: {v.params[1]} vs readv + pwrite (the router's "
                           "kind)", v, ref) for v in kinds])
    return groups


def log_kinds_steady_rows(axis: Axis) -> list[list[Row]]:
    groups = []
    for size in axis(LogKindSteady):
        ref = V(LogKindSteady, (size, "readv_pwrite"))
        rows = [Row(f"drain {human_size(size)} into recycled storage (written once before): {k} vs readv + pwrite",
                    V(LogKindSteady, (size, k)), ref) for k in STEADY_KINDS if k != "readv_pwrite"]
        rows.append(Row(f"drain {human_size(size)}: readv + pwrite into recycled storage vs into fresh files",
                        ref, V(Drain, (size, "readv_pwrite"))))
        groups.append(rows)
    return groups


COMPARE = {
    "drain": Section(drain_rows, "drain"),
    "log_kinds": Section(log_kinds_rows, "drain", default=False),
    "log_kinds_steady": Section(log_kinds_steady_rows, "drain", default=False),
}
