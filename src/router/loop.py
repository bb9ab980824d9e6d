"""The loop thread: one uvloop event loop in a thread of its own, the only owner of loop objects.

Other threads never touch the loop directly: they `call_soon` (thread-safe) or `run` a function on it
and wait for its result.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: uvloop.Loop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> uvloop.Loop:
        """For code already running on the loop thread."""
        assert self._loop is not None, "the loop thread is not running"
        return self._loop

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
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
