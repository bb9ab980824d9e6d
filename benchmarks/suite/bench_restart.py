"""Restart time: from `router serve` starting on a state directory whose journal holds N
finished execs to the first successful TaskExecPoll of the newest of them.

The journal is written directly with `router.engine.journal` (Begun + Exited per exec, output to
/dev/null, as tests/test_restart.py does): running 10,000 real execs would take minutes and
measure the same replay."""
from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import grpc

from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import exit_code
from router.engine import journal_format as jf
from router.engine.journal import Journal
from router.engine.records import ExecSpec, ExitCause, ExitStatus

from .common import (
    SIZE,
    TASK_ID,
    TMP,
    BenchError,
    MiB,
    Target,
    free_port,
    serve_argv,
    stop_process,
    tail,
    token_metadata,
    with_parent_death_signal,
)
from .rows import Axis, Row, Section, V

START_TIMEOUT = 30.0
# Fast reconnects: the default backoff (1 s) would dominate what is measured.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
                   ("grpc.max_reconnect_backoff_ms", 20)]
_SPEC = ExecSpec(args=["true"], env={"PATH": "/usr/bin:/bin", "SECRET": "value"}, stdout="devnull", stderr="devnull")


def write_journal(path: pathlib.Path, n: int) -> str:
    """A journal of `n` finished execs (exit codes i % 7), oldest first; returns the newest's id."""
    now = time.time()
    journal, _ = Journal.open(path, auto_compact=False)
    with journal:
        for i in range(n):
            exec_id = f"restart-{i:06d}"
            journal.append(jf.Begun.from_spec(exec_id, bytes(32), _SPEC, now - n + i))
            journal.append(jf.Exited(exec_id, ExitStatus(code=i % 7), now - n + i + 0.5, ExitCause.EXITED))
            if i % 100 == 99:
                journal.flush()
    return f"restart-{n - 1:06d}"


def wait_listening(port: int, proc: subprocess.Popen, deadline: float) -> None:
    """Poll (5 ms) until something accepts on 127.0.0.1:port."""
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        if proc.poll() is not None:
            raise BenchError(f"router exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise BenchError(f"router not listening within {START_TIMEOUT} s")
        time.sleep(0.005)


class Restart:
    """execs: finished execs in the journal (1: the router's own start-up, the reference). Each
    call starts `router serve` on the same state directory (default flags, a fixed port), polls
    until the port accepts, then calls TaskExecPoll for the newest exec until it answers with its
    exit code; the time is from just before the process is spawned. The server is then stopped
    (SIGTERM), outside the measurement."""

    params = [[1, SIZE.restart_execs]]
    param_names = ["execs"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 600
    target = Target("<=", 1.0, "s")

    def setup(self, execs: int) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="router-restart-", dir=TMP))
        try:
            self.metadata = token_metadata(self.dir, TASK_ID)  # creates the key, as a first start would
            self.newest = write_journal(self.dir / "journal", execs)
            self.code = (execs - 1) % 7
            self.journal_bytes = (self.dir / "journal").stat().st_size
            self._serve_once()  # the first start creates the logs directory and may compact: not measured
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def teardown(self, execs: int) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _serve_once(self) -> float:
        """Start the router, time to the newest exec's poll, stop it; returns seconds."""
        port = free_port()
        log_path = self.dir / "server.log"
        request = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id=self.newest)
        with open(log_path, "wb") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen(with_parent_death_signal(serve_argv(self.dir, f"127.0.0.1:{port}")),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            wait_listening(port, proc, deadline)
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
                stub = pb_grpc.TaskCommandRouterStub(channel)
                while True:
                    try:
                        response = stub.TaskExecPoll(request, metadata=self.metadata, timeout=5.0,
                                                     wait_for_ready=True)
                        break
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                            raise BenchError(f"TaskExecPoll: {e.code().name}: {e.details()}\n"
                                             + tail(log_path)) from None
                        time.sleep(0.005)
            elapsed = time.perf_counter() - t0
        finally:
            if stop_process(proc, 30) not in (0, None):
                raise BenchError(f"router exited with {proc.returncode} on SIGTERM:\n" + tail(log_path))
        if exit_code(response) != self.code:
            raise BenchError(f"{self.newest}: exit code {exit_code(response)}, expected {self.code}")
        return elapsed

    def track_seconds(self, execs: int) -> float:
        return self._serve_once()

    track_seconds.unit = "s"  # type: ignore[attr-defined]

    def track_journal_mib(self, execs: int) -> float:
        return self.journal_bytes / MiB

    track_journal_mib.unit = "MiB"  # type: ignore[attr-defined]


# -- compare's table --------------------------------------------------------------------------------


def restart_rows(axis: Axis) -> list[list[Row]]:
    *_, n = axis(Restart)
    secs = V(Restart, (n,), "track_seconds")
    return [[Row(f"restart: `router serve` start to the first TaskExecPoll answered for the newest of {n:,} "
                 "journaled finished execs", secs, None, Restart.target),
             Row(f"restart with {n:,} journaled execs vs with 1", secs, V(Restart, (1,), "track_seconds"))]]


COMPARE = {"restart": Section(restart_rows, "restart")}
