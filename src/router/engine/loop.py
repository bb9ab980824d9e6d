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


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: uvloop.Loop | None = None
        self._readers: Readers | None = None
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
        ready.set()
        try:
            loop.run_forever()
        finally:
            self._readers.close()
            loop.close()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop thread as soon as it can. Callable from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)

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
