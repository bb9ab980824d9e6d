"""One exec as every thread sees it: its records, its logs, its stdin, and waiting for it to change.

RPC code on any thread reads an `Exec` and waits on it; only the loop thread changes it, and every
change ends with `notify()`, which wakes threads blocked in `wait_until` and completes the futures
that coroutines await from `changed()`, each on its own loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from router._fastio import SegmentedLog
from router.errors import RouterError

from . import exec_log
from .records import ExecSpec, ExitCause, ExitStatus, StreamName, Usage
from .stdin_buffer import StdinBuffer

if TYPE_CHECKING:
    from .child import Child
    from .finished import ClosedStdin
    from .output import OutputPipes

# How long a blocked thread sleeps before it looks again at whether its call is still wanted. A
# wake-up from notify() comes sooner; this only bounds the cost of a missed one.
RECHECK_SECS = 5.0


class _JournaledAll(dict[StreamName, tuple[int, bool]]):
    """A finished exec's `journaled_output` once the journal holds all of it, shared by them all:
    nothing records a finished exec's output again, and a write would be a bug, so it raises."""

    def __setitem__(self, key: StreamName, value: tuple[int, bool]) -> None:
        raise RuntimeError("the output of a finished exec is journaled already")


JOURNALED_ALL = _JournaledAll()
# Makes a condition for whatever let go of its own (Changes.cond): rare, so one lock serves all.
_MAKING_COND = threading.Lock()


class Changes:
    """Something RPC code waits on: `notify()` (any thread) wakes threads blocked in `wait_until`
    and completes the futures coroutines await in `until`, each on its own loop.

    The condition and the futures' list exist while they may be needed: `let_go()` drops the
    condition of something that will not change again (a finished exec), and the next waiter or
    `notify()` makes a new one."""

    __slots__ = ("_cond", "_async_waiters", "_thread_waiters")

    def __init__(self) -> None:
        self._cond: threading.Condition | None = threading.Condition()
        self._async_waiters: list[asyncio.Future[None]] | None = None
        self._thread_waiters = 0

    @property
    def cond(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _MAKING_COND:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    def let_go(self) -> None:
        """Drop the condition, unless a thread waits on it: this will not change again, so a
        waiter finds what it waits for at once (see `wait_until`)."""
        cond = self._cond
        if cond is not None:
            with cond:
                if not self._thread_waiters and not self._async_waiters:
                    self._cond = None

    def _ready_or_failed(self, ready: Callable[[], bool]) -> bool:
        return ready()

    def _ready_without_cond(self, ready: Callable[[], bool]) -> bool:
        """Whether `ready()` holds already when there is no condition (nothing changes any more):
        then no waiter needs one made."""
        return self._cond is None and self._ready_or_failed(ready)

    @property
    def waiters(self) -> int:
        """Threads and coroutines waiting for this exec to change right now."""
        with self.cond:
            return self._thread_waiters + len(self._async_waiters or ())

    def notify(self) -> None:
        """Wake every waiter. Callable from any thread."""
        cond = self.cond  # once: `let_go` may drop it while this waits for it
        with cond:
            cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, None
        if waiters:
            _wake(waiters)

    # -- waiting on a thread ---------------------------------------------------------------------

    def wait_until(self, ready: Callable[[], bool], wanted: Callable[[], bool], deadline: float | None) -> bool:
        """Block until `ready()` (True), or until the caller stops being `wanted()` or the
        monotonic `deadline` passes (False). `ready` is called with `cond` held."""
        if self._ready_without_cond(ready):
            return True
        cond = self.cond
        with cond:
            self._thread_waiters += 1
            try:
                while not self._ready_or_failed(ready):
                    left = RECHECK_SECS if deadline is None else deadline - time.monotonic()
                    if left <= 0 or not wanted():
                        return False
                    cond.wait(min(left, RECHECK_SECS))
                return True
            finally:
                self._thread_waiters -= 1

    # -- waiting in a coroutine ------------------------------------------------------------------

    async def until(self, ready: Callable[[], bool]) -> None:
        """Wait until `ready()`. Cancelling the caller (grpc.aio does at a call's end) ends it."""
        if self._ready_without_cond(ready):
            return
        while True:
            fut = self._changed()  # registered before the check: a change in between wakes it
            try:
                if self._ready_or_failed(ready):
                    return
                await fut
            finally:
                self._forget_waiter(fut)

    def _changed(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        with self.cond:
            waiters = self._async_waiters
            if waiters is None:
                waiters = self._async_waiters = []
            waiters.append(fut)
        return fut

    def _forget_waiter(self, fut: asyncio.Future[None]) -> None:
        """Drop a waiter whose call ended first, so a quiet exec does not collect them."""
        with self.cond:
            waiters = self._async_waiters
            if waiters is not None and fut in waiters:
                waiters.remove(fut)

    def abandon_waiters(self) -> None:
        """Drop every coroutine's future: their loop has stopped (the server ended their calls)."""
        with self.cond:
            self._async_waiters = None


def read_limit(log: SegmentedLog, journaled: int | None) -> tuple[int, bool]:
    """How far a reader of `log` may read, and whether that is the stream's end: everything
    committed, or with a journal only what it holds (`journaled`): a byte a client has seen must
    survive a crash of the router, since clients count offsets themselves and resume from them."""
    eof = log.eof  # before committed: once eof is seen, the committed length read after it is final
    committed = log.committed
    if journaled is None:
        return committed, eof
    return journaled, eof and journaled >= committed


class Exec(Changes):
    """Fields below `cond` are guarded by it; `child` and `output` belong to the loop thread.
    Once finished, finished.settle() trims it to what a finished exec answers with."""

    __slots__ = ("exec_id", "fingerprint", "spec", "stdout", "stderr", "started", "started_at", "status",
                 "exited_at", "cause", "ended_at", "usage", "kill_requested", "_journaled", "journaled_output",
                 "failed", "stdin", "child", "output", "_pid", "retained_bytes", "leader_status", "complete")

    def __init__(self, exec_id: str, fingerprint: bytes, spec: ExecSpec, stdout: SegmentedLog | None,
                 stderr: SegmentedLog | None, stdin_limit: int) -> None:
        super().__init__()
        self.exec_id = exec_id
        self.fingerprint = fingerprint
        self.spec = spec
        # Where output lands; None when discarded or merged into stdout. See `log()`.
        self.stdout = stdout
        self.stderr = stderr
        self.started: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Running from the start, so no caller can cancel it (a cancelled TaskExecStart must not
        # leave the exec's id unusable for its retries).
        self.started.set_running_or_notify_cancel()
        self.started_at = time.time()
        # How the leader ended, as the loop thread saw it; the answers below wait for the journal.
        self.leader_status: ExitStatus | None = None
        # What clients are told: the exit status, why and when (unix time) it ended, set together
        # once the journal holds the exit, so no answer is contradicted after a crash.
        self.status: ExitStatus | None = None
        self.cause: ExitCause | None = None
        self.ended_at: float | None = None
        self.exited_at: float | None = None  # time.monotonic() when the status was published
        # Nothing of it runs on and its last records are journaled; `usage` is what it cost.
        self.complete = False
        self.usage: Usage | None = None
        self.kill_requested = False  # Kill or Signal asked for its end
        # How much of each stream the journal holds (None: no journal, or everything committed is
        # in it). Readers get no further: see read_limit.
        self._journaled: dict[StreamName, int] | None = None
        # (committed, eof) of each stream's last Output record (loop thread; see journaling.ExecJournal).
        self.journaled_output: dict[StreamName, tuple[int, bool]] = {}  # JOURNALED_ALL once finished
        self.failed: RouterError | None = None  # set if the start failed and the exec was dropped
        # A finished exec's is a ClosedStdin (finished.py), which takes writes and drops them.
        self.stdin: StdinBuffer | ClosedStdin = StdinBuffer(self.cond, stdin_limit, spec.pty is not None,
                                                            self.notify)
        self.child: Child | None = None
        self.output: OutputPipes | None = None
        self._pid = 0  # the leader's, kept once `child` goes
        # The output it held when it finished, once the registry retains it (registry.py).
        self.retained_bytes: int | None = None

    @property
    def pid(self) -> int:
        """The leader's pid (its process group's id), 0 if it never ran (or was restored)."""
        return self.child.pid if self.child is not None else self._pid

    @pid.setter
    def pid(self, pid: int) -> None:
        self._pid = pid

    def log(self, which: StreamName) -> SegmentedLog | None:
        """The log a reader of `which` gets, or None if that stream is discarded or merged."""
        if which == "stderr":
            return self.stderr
        return self.stdout if self.spec.stdout == "pipe" else None

    def named_logs(self) -> list[tuple[StreamName, SegmentedLog]]:
        """The exec's logs, each with the stream whose bytes it holds."""
        pairs: list[tuple[StreamName, SegmentedLog | None]] = [("stdout", self.stdout), ("stderr", self.stderr)]
        return [(name, log) for name, log in pairs if log is not None]

    def logs(self) -> list[SegmentedLog]:
        return [log for _, log in self.named_logs()]

    def hold_output_for_journal(self) -> None:
        """Readers get only what `output_journaled` says the journal holds (nothing yet)."""
        self._journaled = {}

    @property
    def holds_output_for_journal(self) -> bool:
        return self._journaled is not None

    def output_journaled(self, lengths: dict[StreamName, int]) -> None:
        """The journal now holds these lengths of the streams: readers may have them. Once it holds
        """
        with self.cond:
            if self._journaled is not None:
                self._journaled.update(lengths)
        self.notify()

    def all_output_journaled(self) -> None:
        """It is complete and the journal holds its whole output: readers need not ask the journal,
        nor the journal record its output again (loop thread)."""
        with self.cond:
            self._journaled = None
            self.journaled_output = JOURNALED_ALL

    def read_limit(self, which: StreamName, log: SegmentedLog) -> tuple[int, bool]:
        """How far a reader of `which` (its log `log`) may read, and whether that is the stream's end."""
        journaled = self._journaled
        return read_limit(log, None if journaled is None else journaled.get(which, 0))

    def publish_exit(self, status: ExitStatus, cause: ExitCause, ended_at: float) -> None:
        """Tell clients how it ended (loop thread, once the journal holds it)."""
        with self.cond:
            self.status, self.cause, self.ended_at = status, cause, ended_at
            self.exited_at = time.monotonic()
        self.notify()
        exec_log.ended(self)

    def answer_started(self) -> None:
        """Its start is journaled: answer it, and log it if its process started (loop thread)."""
        self.started.set_result(None)
        self.notify()
        if self.child is not None:  # not when it failed to start (it has finished instead)
            exec_log.started(self)

    def fail(self, error: RouterError) -> None:
        """Its start failed and it was dropped: tell its waiters why (loop thread)."""
        with self.cond:
            self.failed = error
            self.notify()
        self.started.set_exception(error)

    def held_bytes(self) -> int:
        """Output bytes this exec holds in the store."""
        return sum(log.held_bytes for log in self.logs())

    @property
    def running(self) -> bool:
        return self.status is None

    @property
    def finished(self) -> bool:
        """The leader exited and every output stream is complete: nothing of it can run on."""
        return self.leader_status is not None and (self.output is None or self.output.done)

    def _ready_or_failed(self, ready: Callable[[], bool]) -> bool:
        """ready(), unless the exec's start failed after the caller found it: then raise why."""
        if ready():
            return True
        if self.failed is not None:
            raise self.failed
        return False

def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """Complete futures on their loops: directly on our own, through call_soon_threadsafe otherwise."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for fut in waiters:
        by_loop.setdefault(fut.get_loop(), []).append(fut)
    for loop, futs in by_loop.items():
        if loop is here:
            _complete(futs)
        else:
            try:
                loop.call_soon_threadsafe(_complete, futs)
            except RuntimeError:
                pass  # that loop is closed: its calls are over


def _complete(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)
