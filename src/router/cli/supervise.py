"""`router exec`'s I/O in threads while the main thread waits for its end, a signal, or a closed output.

Signals and the threads' news arrive as bytes on one pipe (signal.set_wakeup_fd), so the main
thread never gets an exception in the middle of a call or of putting the terminal back.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self

import grpc

DONE = 0  # the I/O is over (no signal has number 0)
OUTPUT_CLOSED = 255  # our stdout or stderr was closed by its reader (no signal has number 255)


def _noted(signum: int, frame: object) -> None:
    """A signal the supervisor handles: the wakeup descriptor brings it to `events()`."""


class Supervisor:
    def __init__(self, signals: tuple[int, ...]) -> None:
        self._signals = signals
        self._r = self._w = -1
        self._saved_wakeup = -1
        self._saved_handlers: dict[int, Any] = {}  # what signal.signal() gave back
        self.outcome: list[int] = []
        self.errors: list[Exception] = []  # set by start()

    def __enter__(self) -> Self:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._saved_wakeup = signal.set_wakeup_fd(self._w)  # first: no signal may be noted and not sent
        self._saved_handlers = {sig: signal.signal(sig, _noted) for sig in self._signals}
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._saved_wakeup)
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)

    def post(self, event: int) -> None:
        """From any thread: wake the main thread with `event` (DONE or OUTPUT_CLOSED)."""
        try:
            os.write(self._w, bytes([event]))
        except (BlockingIOError, OSError):
            pass  # a full pipe already holds news; a closed one has no reader left

    def events(self) -> Iterator[int]:
        """What happened, in order: signal numbers, DONE, OUTPUT_CLOSED."""
        while True:
            yield from os.read(self._r, 64)

    def start(self, io: Callable[[Callable[[], None]], int]) -> threading.Thread:
        """Run `io` in the background (`in_background`), with a function it calls when our output was
        closed (OUTPUT_CLOSED): its result lands in `outcome`, a failed call in `errors`; then DONE."""
        def work() -> None:
            try:
                self.outcome.append(io(lambda: self.post(OUTPUT_CLOSED)))
            finally:
                self.post(DONE)

        thread, self.errors = in_background(work)
        return thread

    def close(self, worker: threading.Thread) -> None:
        """Close the pipe, unless the worker may still write to it."""
        if not worker.is_alive():
            os.close(self._r)
            os.close(self._w)


def in_background(fn: Callable[..., None], *args: object) -> tuple[threading.Thread, list[Exception]]:
    """Run fn(*args) in a daemon thread; a failed call lands in the returned list, not a traceback
    (ValueError: the channel was closed under it, as when the main thread gives up and leaves)."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            fn(*args)
        except (grpc.RpcError, ValueError) as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors
