"""The loop thread: one uvloop event loop in a thread of its own, the only owner of loop objects.

Other threads never touch the loop directly: they `call_soon` (thread-safe) or `run` a function on it
and wait for its result.

Every exec's pipes and pidfd are watched through `Readers`, one epoll the loop watches: uvloop's
add_reader + remove_reader cost 14 us per descriptor (a poll handle made and closed each time) to
epoll's 3, and an exec of `true` has three (benchmarks/HISTORY.md, "A leaner start and finish per exec").
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import select
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop

from router import _fastio

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Readers:
    """Descriptors watched for reading, level-triggered as loop.add_reader, through one epoll
    that the loop watches. Loop thread only. Remove a descriptor before closing it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._epfd = self._epoll.fileno()
        self._callbacks: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._loop = loop
        loop.add_reader(self._epfd, self._dispatch)

    def add_reader(self, fd: int, callback: Callable[..., Any], *args: Any) -> None:
        """Call callback(*args) while fd is readable (replacing its callback if it has one)."""
        try:
            _fastio.epoll_watch(self._epfd, fd, True)  # with the GIL held: see _fastio
        except FileExistsError:
            pass
        self._callbacks[fd] = (callback, args)

    def remove_reader(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            with contextlib.suppress(OSError):  # closed already: epoll has dropped it
                _fastio.epoll_watch(self._epfd, fd, False)

    def _dispatch(self) -> None:
        for fd, _ in self._epoll.poll(0):
            entry = self._callbacks.get(fd)  # an earlier callback of this round may have removed it
            if entry is None:
                continue
            try:
                entry[0](*entry[1])
            except Exception:  # as the loop does with a failing callback: say so, go on with the rest
                logger.exception("reader callback for descriptor %d failed", fd)

    def close(self) -> None:
        self._loop.remove_reader(self._epfd)
        self._epoll.close()
        self._callbacks.clear()


class Mailbox:
    """Calls for one event loop from any thread, run there in the order posted, with one wake-up
    (call_soon_threadsafe) for all posted since they last ran: a wake-up costs a write, the loop's
    return from epoll and a switch of threads and of the GIL, more than most calls themselves
    (benchmarks/HISTORY.md, "Modal's call path")."""

    __slots__ = ("_loop", "_lock", "_calls", "_queued", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # not kept alive by its entry in _MAILBOXES
        # Reentrant: a collection started by an allocation under it may run a finalizer that posts
        # here (an abandoned Watch unwatches).
        self._lock = threading.RLock()
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._queued = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop soon. RuntimeError if the loop is closed."""
        loop = self._loop()
        if loop is None or loop.is_closed():  # as call_soon_threadsafe says
            raise RuntimeError("Event loop is closed")
        with self._lock:
            self._calls.append((fn, args))
            if self._queued:
                return
            self._queued = True
        try:
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._queued = False
                self._calls.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
            self._queued = False
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:  # as the loop does with a failing callback: say so, go on with the rest
                logger.exception("callback %r failed", fn)


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = weakref.WeakKeyDictionary()
_MAILBOXES_LOCK = threading.RLock()  # reentrant as Mailbox._lock is


def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The one Mailbox of `loop`."""
    box = _MAILBOXES.get(loop)
    if box is None:
        with _MAILBOXES_LOCK:
            box = _MAILBOXES.get(loop)
            if box is None:
                box = _MAILBOXES[loop] = Mailbox(loop)
    return box


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: uvloop.Loop | None = None
        self._readers: Readers | None = None
        self._mailbox: Mailbox | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> uvloop.Loop:
        """For code already running on the loop thread."""
        assert self._loop is not None, "the loop thread is not running"
        return self._loop

    @property
    def readers(self) -> Readers:
        """For code already running on the loop thread."""
        assert self._readers is not None, "the loop thread is not running"
        return self._readers

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._readers = Readers(loop)
        self._mailbox = mailbox(loop)
        ready.set()
        try:
            loop.run_forever()
        finally:
            self._readers.close()
            loop.close()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop thread as soon as it can, after what was posted before it.
        Callable from any thread; RuntimeError once the loop has stopped."""
        assert self._mailbox is not None, "the loop thread is not running"
        self._mailbox.post(fn, *args)

    def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run fn(*args) on the loop thread and return its result (or raise its exception)."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as e:
                done.set_exception(e)

        self.call_soon(call)
        return done.result(timeout)

    def stop(self, timeout: float) -> None:
        """End the loop and its thread; what was scheduled and not yet run is dropped."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
