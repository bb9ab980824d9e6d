"""Threads that start execs' processes for the loop thread, and hand back what came of each.

_fastio.spawn holds its caller until the child has exec'd (most of a millisecond): in threads of
their own, with the GIL let go, spawns overlap and the loop goes on. Outcomes return to the loop
in batches, one wake-up for all that finished since it last looked: a Future, its callback and a
call_soon per exec cost the loop more than the rest of a start (benchmarks/HISTORY.md, "A leaner
start and finish per exec").
"""
from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from . import scheduling
from .loop import LoopThread

T = TypeVar("T")
R = TypeVar("R")


class Spawner(Generic[T, R]):
    """`threads` threads running `start(item)` for each submitted item; `done(batch)` gets
    [(item, result or the exception it raised)] on the loop thread, in batches."""

    def __init__(self, loop: LoopThread, threads: int, start: Callable[[T], R],
                 done: Callable[[list[tuple[T, R | Exception]]], None], name: str = "router-spawn") -> None:
        self._loop = loop
        self._start = start
        self._done = done
        self._requests: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._outcomes: collections.deque[tuple[T, R | Exception]] = collections.deque()
        self._lock = threading.Lock()
        self._delivery_queued = False
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> bool:
        """Queue `item`; False (and nothing queued) once stop() has begun."""
        if self._closed:
            return False
        self._requests.put(item)
        return True

    def stop(self) -> list[T]:
        """Let the starts under way finish (their outcomes are queued for the loop before this
        returns), stop the threads, and return the items that never started, in order."""
        self._closed = True
        never = self._take_queued()
        for _ in self._threads:
            self._requests.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        return never + self._take_queued()  # + one submitted while the threads were told to stop

    def _take_queued(self) -> list[T]:
        items: list[T] = []
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _work(self) -> None:
        scheduling.as_started()  # the children inherit this thread's policy
        while (item := self._requests.get()) is not None:
            outcome: R | Exception
            try:
                outcome = self._start(item)
            except Exception as e:
                outcome = e
            with self._lock:
                self._outcomes.append((item, outcome))
                wake = not self._delivery_queued
                self._delivery_queued = True
            if wake:
                self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            batch = list(self._outcomes)
            self._outcomes.clear()
            self._delivery_queued = False
        self._done(batch)
