"""Concurrent work for the suite: execs over grpc.aio, the same commands as local or ssh
subprocesses, and local spawn rates.

Every batch runs through `in_flight`, which returns an `Outcome` (wall time of the batch,
successes, failures by kind) and has a deadline after which whatever is still running is
cancelled (and its children killed). Channels are opened by `AioSide`, in a benchmark's setup.

Names here must not start with asv's benchmark prefixes (time_, track_, mem_, peakmem_, timeraw_).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from router._proto import exec_control_pb2 as ec
from router._proto import exec_control_pb2_grpc as ec_grpc
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import CHANNEL_OPTIONS, exit_code

from .common import (
    CHANNELS,
    TASK_ID,
    BenchError,
    read_request,
    start_request,
    unique,
    wait_request,
    zeros_command,
)


def install_pidfd_child_watcher() -> None:
    """On 3.11, a pidfd child watcher (the default from 3.12 on): 3.11's default runs a thread per
    child, which 4096 concurrent subprocesses would pay for. The policy attaches it to whichever
    loop `asyncio.set_event_loop` makes current."""
    if sys.version_info >= (3, 12):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if not isinstance(asyncio.get_child_watcher(), asyncio.PidfdChildWatcher):
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


class AioSide:
    """An event loop of its own and, given a server's target, CHANNELS ready grpc.aio channels to
    it (each its own HTTP/2 connection). Open in setup, close in teardown. Several may be open at
    once (compare sets up the router and its references together); one runs at a time."""

    def __init__(self, target: str | None = None, count: int = CHANNELS, ready_timeout: float = 15.0) -> None:
        install_pidfd_child_watcher()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # grpc.aio channels take the current loop
        self.channels: list[grpc.aio.Channel] = []
        try:
            if target is not None:
                # A local subchannel pool per channel: `count` separate connections.
                self.channels = [grpc.aio.insecure_channel(
                    target, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]
                self.run(asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in self.channels)),
                                          ready_timeout))
        except BaseException:
            self.close()
            raise
        self.stubs = [pb_grpc.TaskCommandRouterStub(ch) for ch in self.channels]

    def run(self, coro: Awaitable[Any]) -> Any:
        # Current, so that the child watcher (attached by set_event_loop) serves this loop.
        asyncio.set_event_loop(self.loop)
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        for ch in self.channels:
            with contextlib.suppress(Exception):
                self.run(asyncio.wait_for(ch.close(), 10))
        self.channels = []
        with contextlib.suppress(Exception):
            self.run(self.loop.shutdown_asyncgens())
        self.loop.close()
        asyncio.set_event_loop(None)

    def __enter__(self) -> AioSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- batches ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a batch of concurrent operations did: wall time, successes, failures by kind."""

    n: int
    seconds: float = 0.0
    ok: int = 0
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def fail(self, kind: str, detail: str = "") -> None:
        self.failures[kind] += 1
        self.examples.setdefault(kind, detail[:400])

    def describe(self) -> str:
        if not self.failures:
            return f"{self.ok}/{self.n} ok"
        kinds = "; ".join(f"{k} x{v}" + (f" ({self.examples[k]!r})" if self.examples.get(k) else "")
                          for k, v in self.failures.most_common())
        return f"{self.ok}/{self.n} ok; failed: {kinds}"

    def checked(self) -> Outcome:
        """This outcome, or BenchError if anything failed: a benchmark that lost work measures nothing."""
        if self.failures or self.ok != self.n:
            raise BenchError(self.describe())
        return self

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


class Failure(Exception):
    """One operation of a batch went wrong in a way worth counting: `kind` groups them."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


async def in_flight(n: int, concurrency: int, op: Callable[[int], Awaitable[None]], timeout: float,
                    indices: Iterable[int] | None = None) -> Outcome:
    """Run `op(i)` for i in range(n) (or `indices`), `concurrency` at a time; time the batch. After
    `timeout`, what is still running is cancelled and counted as failed."""
    out = Outcome(n)
    todo = iter(range(n) if indices is None else indices)

    async def worker() -> None:
        for i in todo:
            try:
                await op(i)
            except Failure as f:
                out.fail(f.kind, f.detail)
            except OSError as e:
                out.fail(f"{type(e).__name__} errno {e.errno}", str(e))
            else:
                out.ok += 1

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    out.seconds = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    if pending:
        out.fail("deadline", f"{len(pending)} workers still busy after {timeout:.0f} s, cancelled")
        await asyncio.wait(pending, timeout=30)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            out.fail(f"bug: {type(e).__name__}", "".join(traceback.format_exception_only(type(e), e)).strip())
    return out


# -- operations -------------------------------------------------------------------------------------


def zeros(data: bytes) -> bool:
    return data.count(0) == len(data)


async def rpc(stage: str, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        raise Failure(f"{stage}: {e.code().name}", e.details() or "") from None


async def exec_start(stub: pb_grpc.TaskCommandRouterStub, md: Any, exec_id: str, argv: Sequence[str],
                     timeout: float, task_id: str = TASK_ID) -> None:
    await rpc("start", stub.TaskExecStart(start_request(exec_id, argv, task_id), metadata=md, timeout=timeout))


async def exec_wait(stub: pb_grpc.TaskCommandRouterStub, md: Any, exec_id: str, timeout: float,
                    task_id: str = TASK_ID) -> None:
    code = exit_code(await rpc("wait", stub.TaskExecWait(wait_request(exec_id, task_id), metadata=md,
                                                         timeout=timeout)))
    if code != 0:
        raise Failure("exit status", f"exit {code}")


async def exec_output(stub: pb_grpc.TaskCommandRouterStub, md: Any, exec_id: str, size: int, timeout: float,
                      task_id: str = TASK_ID) -> None:
    """Start `head -c size /dev/zero`, read its stdout to the end (every byte checked), wait."""
    await exec_start(stub, md, exec_id, zeros_command(size), timeout, task_id)
    got = bad = 0
    try:
        async for msg in stub.TaskExecStdioRead(read_request(exec_id, 0, task_id), metadata=md, timeout=timeout):
            got += len(msg.data)
            bad += not zeros(msg.data)
    except grpc.aio.AioRpcError as e:
        raise Failure(f"read: {e.code().name}", e.details() or "") from None
    if got != size or bad:
        raise Failure("wrong output", f"{got} bytes (expected {size}), {bad} non-zero messages")
    await exec_wait(stub, md, exec_id, timeout, task_id)


async def exec_true(stub: pb_grpc.TaskCommandRouterStub, md: Any, exec_id: str, timeout: float,
                    task_id: str = TASK_ID) -> None:
    await exec_start(stub, md, exec_id, ["true"], timeout, task_id)
    await exec_wait(stub, md, exec_id, timeout, task_id)


async def subprocess_output(argv: Sequence[str], size: int, procs: list[asyncio.subprocess.Process]) -> None:
    """A local asyncio subprocess (stdout and stderr piped): its stdout must be `size` zero bytes."""
    p = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
    procs.append(p)
    data, err = await p.communicate()
    if len(data) != size or not zeros(data) or p.returncode != 0:
        raise Failure("wrong output", f"{len(data)} bytes (expected {size}), exit {p.returncode}, "
                                      f"stderr {err[-200:]!r}")


async def kill_all(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.wait(), 10)


# -- what the benchmarks run ---------------------------------------------------------------------------


def router_fanout(side: AioSide, md: Any, n: int, size: int, timeout: float) -> Outcome:
    """N execs of `head -c size /dev/zero`, all in flight: start, read stdout to the end, wait."""
    prefix = unique("fan")
    return side.run(in_flight(n, n, lambda i: exec_output(side.stubs[i % len(side.stubs)], md, f"{prefix}-{i}",
                                                           size, timeout), timeout))


def router_exec_rate(side: AioSide, md: Any, total: int, concurrency: int, timeout: float) -> Outcome:
    """`total` execs of `true` (start + wait), `concurrency` at a time."""
    prefix = unique("rate")
    return side.run(in_flight(total, concurrency, lambda i: exec_true(side.stubs[i % len(side.stubs)], md,
                                                                       f"{prefix}-{i}", 60.0), timeout))


def router_start_idle(side: AioSide, md: Any, argv: Sequence[str], n: int, concurrency: int,
                      timeout: float) -> Outcome:
    """Start `n` execs of argv (stdout and stderr piped) and leave them running."""
    prefix = unique("idle")
    return side.run(in_flight(n, concurrency, lambda i: exec_start(side.stubs[i % len(side.stubs)], md,
                                                                    f"{prefix}-{i}", argv, 60.0), timeout))


def rpc_calls(side: AioSide, method: str, n: int, concurrency: int, timeout: float) -> Outcome:
    """`n` raw unary calls of `method` (request b"x", no serializers), `concurrency` at a time."""
    calls = [ch.unary_unary(method) for ch in side.channels]
    return side.run(in_flight(n, concurrency, lambda i: rpc("call", calls[i % len(calls)](b"x", timeout=30)),
                              timeout))


# Items per BatchStart call in `router_batch`: a few calls in flight at once, none huge.
BATCH_CHUNK = 256


async def batch_run(channels: Sequence[grpc.aio.Channel], md: Any, prefix: str, n: int, argv: Sequence[str],
                    size: int, timeout: float) -> Outcome:
    """n execs of argv through the router's own service: BatchStart in chunks of BATCH_CHUNK (one
    chunk per channel at a time), then one Watch of them all with the output in each exit event
    (every byte checked: `size` zero bytes on stdout, nothing on stderr, exit 0)."""
    out = Outcome(n)
    ids = [f"{prefix}-{i}" for i in range(n)]
    stubs = [ec_grpc.ExecControlStub(ch) for ch in channels]
    t0 = time.perf_counter()

    async def start(k: int) -> None:
        for first in range(k * BATCH_CHUNK, n, BATCH_CHUNK * len(stubs)):
            chunk = [start_request(i, argv) for i in ids[first:first + BATCH_CHUNK]]
            response = await rpc("batch start", stubs[k].BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=chunk),
                                                                    metadata=md, timeout=timeout))
            for result in response.results:
                if result.code != 0:
                    out.fail("batch start item", f"{result.exec_id}: code {result.code} {result.message}")

    async def watch() -> None:
        request = ec.WatchRequest(task_id=TASK_ID, exec_ids=ids, output_limit=2 * size + 1)
        seen = set()
        async for response in stubs[0].Watch(request, metadata=md, timeout=timeout):
            for event in response.events:
                if event.exec_id in seen:
                    out.fail("watch", f"{event.exec_id} twice")
                    continue
                seen.add(event.exec_id)
                if not event.exit.HasField("code") or event.exit.code != 0:
                    out.fail("exit status", f"{event.exec_id}: {event.exit}")
                elif not event.output_included or len(event.stdout) != size or not zeros(event.stdout) or event.stderr:
                    out.fail("wrong output", f"{event.exec_id}: {len(event.stdout)} bytes (expected {size}), "
                                             f"included {event.output_included}, stderr {event.stderr[-200:]!r}")
                else:
                    out.ok += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(start(k) for k in range(len(stubs)))), timeout)
        await asyncio.wait_for(watch(), max(1.0, timeout - (time.perf_counter() - t0)))
    except Failure as f:
        out.fail(f.kind, f.detail)
    except (TimeoutError, grpc.aio.AioRpcError) as e:
        out.fail("batch", repr(e))
    out.seconds = time.perf_counter() - t0
    return out


def router_batch(side: AioSide, md: Any, n: int, argv: Sequence[str], size: int, timeout: float) -> Outcome:
    """`batch_run` of n execs of argv over the side's channels."""
    return side.run(batch_run(side.channels, md, unique("batch"), n, argv, size, timeout))


def subprocess_batch(side: AioSide, argv: Sequence[str], total: int, concurrency: int, size: int,
                     timeout: float) -> Outcome:
    """`total` local asyncio subprocesses of argv, `concurrency` at a time, each printing `size`
    zero bytes; whatever is left after the batch is killed."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        return side.run(in_flight(total, concurrency, lambda i: subprocess_output(argv, size, procs), timeout))
    finally:
        side.run(kill_all(procs))


def local_spawn_rate(total: int, concurrency: int, timeout: float = 120.0) -> float:
    """os.posix_spawn('true') + os.waitpid: sequential, or `concurrency` threads each spawning and
    reaping. Returns execs per second."""
    true = shutil.which("true") or "/bin/true"
    env = dict(os.environ)
    todo = iter(range(total))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                pid = os.posix_spawn(true, [true], env)
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise BenchError(f"true exited with status {status}")
        except BaseException as e:
            errors.append(e)

    t0 = time.perf_counter()
    if concurrency <= 1:
        work()
    else:
        threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            raise BenchError(f"local spawn threads did not finish within {timeout} s")
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return total / elapsed
