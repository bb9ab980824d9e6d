"""Workloads shared by the asv suite and `benchmarks.compare`: concurrent execs over grpc.aio, their local
and ssh references, and local spawn rates. Each returns an `Outcome` (wall time, successes, failures by kind)
and has a deadline after which whatever is still running is cancelled (and its children killed).

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
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from router._proto import task_command_router_pb2_grpc as pb_grpc

from . import common as c


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop, set as current; on 3.11 with a pidfd child watcher (the default from 3.12 on;
    3.11's default runs a thread per child, which 4096 concurrent subprocesses would pay for)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()  # type: ignore[attr-defined]
            asyncio.set_child_watcher(watcher)
            watcher.attach_loop(loop)
    return loop


def close_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    asyncio.set_event_loop(None)


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


async def gather_with_deadline(coros: Sequence[Any], timeout: float, out: Outcome) -> None:
    """Run all coroutines concurrently, timing them into `out.seconds`; after `timeout`, cancel what
    is left (each counts its own cancel)."""
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(co) for co in coros]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    out.seconds = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    if pending:
        out.fail("deadline", f"{len(pending)} still running after {timeout:.0f} s, cancelled")
        await asyncio.wait(pending, timeout=30)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            out.fail(f"bug: {type(e).__name__}", "".join(traceback.format_exception_only(type(e), e)).strip())


def aio_channels(target: str, count: int) -> list[grpc.aio.Channel]:
    # A local subchannel pool per channel: `count` separate HTTP/2 connections.
    return [grpc.aio.insecure_channel(target, options=[*c.CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
            for _ in range(count)]


async def channels_ready(channels: Sequence[grpc.aio.Channel], timeout: float = 15.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), timeout)


async def close_channels(channels: Sequence[grpc.aio.Channel]) -> None:
    for ch in channels:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ch.close(), 10)


@contextlib.asynccontextmanager
async def router_stubs(router: c.RouterProcess, count: int) -> AsyncIterator[list[pb_grpc.TaskCommandRouterStub]]:
    """Stubs on `count` ready connections to the router, closed afterwards."""
    channels = aio_channels(router.target, count)
    try:
        await channels_ready(channels)
        yield [pb_grpc.TaskCommandRouterStub(ch) for ch in channels]
    finally:
        await close_channels(channels)


async def kill_all(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(p.wait(), 10)


def zeros(data: bytes) -> bool:
    return data.count(0) == len(data)



async def router_fanout(router: c.RouterProcess, n: int, size: int, nchannels: int, timeout: float) -> Outcome:
    """N execs of `head -c size /dev/zero`, all in flight: start, read stdout to the end, wait; every byte checked."""
    out = Outcome(n)
    async with router_stubs(router, nchannels) as stubs:
        md = router.metadata
        prefix = c.unique("fan")
        argv = ["head", "-c", str(size), "/dev/zero"]

        async def one(i: int) -> None:
            stub = stubs[i % len(stubs)]
            exec_id = f"{prefix}-{i}"
            stage = "start"
            try:
                await stub.TaskExecStart(c.start_request(exec_id, argv), metadata=md, timeout=timeout)
                stage = "read"
                got, bad = 0, 0
                async for msg in stub.TaskExecStdioRead(c.read_request(exec_id), metadata=md, timeout=timeout):
                    got += len(msg.data)
                    bad += not zeros(msg.data)
                stage = "wait"
                code = c.exit_code(await stub.TaskExecWait(c.wait_request(exec_id), metadata=md, timeout=timeout))
            except grpc.aio.AioRpcError as e:
                out.fail(f"{stage}: {e.code().name}", e.details() or "")
                return
            except asyncio.CancelledError:
                out.fail(f"{stage}: cancelled by the benchmark deadline")
                raise
            if got != size or bad or code != 0:
                out.fail("wrong output", f"{got} bytes (expected {size}), {bad} non-zero messages, exit {code}")
            else:
                out.ok += 1

        await gather_with_deadline([one(i) for i in range(n)], timeout, out)
    return out


async def local_fanout(argv: Sequence[str], n: int, size: int, timeout: float) -> Outcome:
    """N local asyncio subprocesses (stdout and stderr piped), all concurrent; every byte checked."""
    out = Outcome(n)
    procs: list[asyncio.subprocess.Process] = []

    async def one() -> None:
        stage = "spawn"
        try:
            p = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE)
            procs.append(p)
            stage = "read"
            data, err = await p.communicate()
        except OSError as e:
            out.fail(f"{stage}: {type(e).__name__} errno {e.errno}", str(e))
            return
        except asyncio.CancelledError:
            out.fail(f"{stage}: cancelled by the benchmark deadline")
            raise
        if len(data) != size or not zeros(data) or p.returncode != 0:
            out.fail("wrong output", f"{len(data)} bytes, exit {p.returncode}, stderr {err[-200:]!r}")
        else:
            out.ok += 1

    try:
        await gather_with_deadline([one() for _ in range(n)], timeout, out)
    finally:
        await kill_all(procs)
    return out



async def router_exec_inflight(router: c.RouterProcess, total: int, inflight: int, nchannels: int,
                               timeout: float) -> Outcome:
    """`total` execs of `true` (start + wait), `inflight` at a time, grpc.aio."""
    out = Outcome(total)
    async with router_stubs(router, nchannels) as stubs:
        md = router.metadata
        prefix = c.unique("rate")
        counter = iter(range(total))

        async def worker(w: int) -> None:
            stub = stubs[w % len(stubs)]
            for i in counter:
                exec_id = f"{prefix}-{i}"
                stage = "start"
                try:
                    await stub.TaskExecStart(c.start_request(exec_id, ["true"]), metadata=md, timeout=60)
                    stage = "wait"
                    code = c.exit_code(await stub.TaskExecWait(c.wait_request(exec_id), metadata=md, timeout=60))
                except grpc.aio.AioRpcError as e:
                    out.fail(f"{stage}: {e.code().name}", e.details() or "")
                    continue
                except asyncio.CancelledError:
                    out.fail(f"{stage}: cancelled by the benchmark deadline")
                    raise
                if code != 0:
                    out.fail("exit status", f"exit {code}")
                else:
                    out.ok += 1

        await gather_with_deadline([worker(w) for w in range(inflight)], timeout, out)
    return out


async def subprocess_inflight(argv: Sequence[str], total: int, inflight: int, timeout: float) -> Outcome:
    """`total` runs of argv (asyncio subprocesses, output discarded), `inflight` at a time."""
    out = Outcome(total)
    procs: list[asyncio.subprocess.Process] = []
    counter = iter(range(total))

    async def worker() -> None:
        for _ in counter:
            try:
                p = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.PIPE)
                procs.append(p)
                _, err = await p.communicate()
            except OSError as e:
                out.fail(f"spawn: errno {e.errno}", str(e))
                continue
            if p.returncode != 0:
                out.fail(f"exit {p.returncode}", err.decode(errors="replace")[-200:])
            else:
                out.ok += 1

    try:
        await gather_with_deadline([worker() for _ in range(inflight)], timeout, out)
    finally:
        await kill_all(procs)
    return out



async def start_idle(router: c.RouterProcess, n: int, marker: str, inflight: int, nchannels: int,
                     timeout: float) -> Outcome:
    out = Outcome(n)
    async with router_stubs(router, nchannels) as stubs:
        prefix = c.unique("idle")
        counter = iter(range(n))

        async def worker(w: int) -> None:
            for i in counter:
                try:
                    await stubs[w % len(stubs)].TaskExecStart(c.start_request(f"{prefix}-{i}", ["sleep", marker]),
                                                              metadata=router.metadata, timeout=60)
                    out.ok += 1
                except grpc.aio.AioRpcError as e:
                    out.fail(f"start: {e.code().name}", e.details() or "")

        await gather_with_deadline([worker(w) for w in range(inflight)], timeout, out)
    return out


def local_spawn_rate(total: int, inflight: int) -> float:
    """os.posix_spawn('true') + os.waitpid: sequential, or `inflight` threads each spawning and reaping."""
    true = shutil.which("true") or "/bin/true"
    env = dict(os.environ)
    counter = iter(range(total))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                pid = os.posix_spawn(true, [true], env)
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise c.BenchError(f"true exited with status {status}")
        except BaseException as e:
            errors.append(e)

    t0 = time.perf_counter()
    if inflight <= 1:
        work()
    else:
        threads = [threading.Thread(target=work, daemon=True) for _ in range(inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if any(t.is_alive() for t in threads):
            raise c.BenchError("local spawn threads did not finish within 120 s")
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return total / elapsed
