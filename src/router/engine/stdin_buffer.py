"""An exec's stdin: bytes accepted at offsets from any thread, written to the child on the loop thread."""
from __future__ import annotations

import asyncio
import collections
import os
import termios
import threading
from collections.abc import Callable
from typing import NamedTuple

import grpc

from router import _fastio
from router.errors import RouterError

from .stats import ExecStats


class CarriedStdin(NamedTuple):
    """A stdin buffer's state as a handover carries it."""

    fd: int
    written: int
    eof: bool
    pending: bytes
    dropping: bool
    eof_queued: bool
    last: bytes


class StdinBuffer:
    """Accepted stdin bytes, in order, until the child takes them.

    `offer` runs on any thread under `cond` (the exec's); `attach`, `flush` and `close` run on the
    loop thread only. `written` is the offset the next write continues from: bytes before it are a
    retry's duplicates and are skipped.
    """

    def __init__(self, cond: threading.Condition, limit: int, terminal: bool, wake: Callable[[], None]) -> None:
        self._cond = cond
        self._limit = limit
        self._terminal = terminal
        self._wake = wake
        self.written = 0
        self.eof = False
        self.pending_bytes = 0
        self._pending: collections.deque[memoryview] = collections.deque()
        self._dropping = False  # the child is gone or closed its stdin: accept and drop
        self._last = b""  # the last byte accepted, to end a terminal's input cleanly
        self._frozen = False  # a handover is taking the buffer: offers wait for the new process
        # Loop thread only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._eof_queued = False
        self._writing = False
        self._stats: ExecStats | None = None
        self._counted = 0  # of `written`, in the stats already

    def offer(self, offset: int, data: bytes, eof: bool) -> tuple[bool, bool]:
        """Accept `data` written at `offset`: (accepted, flush needed). Not accepted, taking
        nothing, while the buffer has no room: offer again once the exec changes."""
        view = memoryview(data)
        with self._cond:
            if self._frozen:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, "the router is handing over to a new process: retry")
            n = new_bytes(self.written, self.eof, offset, len(view))
            if self.eof:
                return True, False
            new = view[len(view) - n:]
            if not (self._dropping or not self.pending_bytes or self.pending_bytes + len(new) <= self._limit):
                return False, False
            self.written += len(new)
            self.eof = eof
            if len(new):
                self._last = bytes(new[-1:])
            if self._dropping:
                return True, False
            if len(new):
                self._pending.append(new)
                self.pending_bytes += len(new)
            return True, True

    def drop(self) -> None:
        """From now on accept and drop: the child is gone. Call with `cond` held."""
        self._dropping = True
        self._pending.clear()
        self.pending_bytes = 0

    # -- a handover (loop thread, `cond` held) ----------------------------------------------------

    def freeze(self) -> CarriedStdin:
        """Take no more offers (UNAVAILABLE: the client retries at the new process) and say where
        the buffer is: the fd (-1 once closed), the offsets, the bytes not yet written."""
        self._frozen = True
        return CarriedStdin(self._fd, self.written, self.eof, b"".join(self._pending), self._dropping,
                            self._eof_queued, self._last)

    def thaw(self) -> None:
        self._frozen = False

    def carry_on(self, carried: CarriedStdin) -> None:
        """In the new process, before attach(): go on from where the old one was."""
        self.written, self.eof, self._dropping = carried.written, carried.eof, carried.dropping
        self._eof_queued, self._last = carried.eof_queued, carried.last
        self._counted = carried.written  # counted by the old process
        if carried.pending:
            self._pending.append(memoryview(carried.pending))
        self.pending_bytes = len(carried.pending)

    # -- loop thread ----------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop, fd: int, stats: ExecStats) -> None:
        """Start writing to the child's stdin (`fd`, the router's end, made non-blocking; -1: none);
        count the bytes accepted for it in `stats` from now on."""
        if fd < 0:
            return
        os.set_blocking(fd, False)
        self._loop = loop
        self._fd = fd
        self._stats = stats
        self.flush()

    def flush(self) -> None:
        """Write what the child can take now; wait for the descriptor to be writable for the rest."""
        fd = self._fd
        if fd < 0:
            return
        with self._cond:
            if self._stats is not None:  # counted here, on the loop thread, not by the writers' threads
                self._stats.stdin_bytes += self.written - self._counted
                self._counted = self.written
            if self._terminal and self.eof and not self._eof_queued and not self._dropping:
                self._eof_queued = True
                eof_bytes = terminal_eof(fd, self._last)
                self._pending.append(memoryview(eof_bytes))
                self.pending_bytes += len(eof_bytes)
            while self._pending:
                chunk = self._pending[0]
                try:
                    n = os.write(fd, chunk)
                except BlockingIOError:
                    break
                except OSError:
                    self.drop()  # EPIPE: the child closed its stdin; the rest can never be delivered
                    break
                self.pending_bytes -= n
                if n < len(chunk):
                    self._pending[0] = chunk[n:]
                    break
                self._pending.popleft()
            more = bool(self._pending)
            close = not more and (self.eof or self._dropping)
            self._wake()
        assert self._loop is not None
        if more and not self._writing:
            self._loop.add_writer(fd, self.flush)
            self._writing = True
        elif not more and self._writing:
            self._loop.remove_writer(fd)
            self._writing = False
        if close:
            self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._writing:
            assert self._loop is not None
            self._loop.remove_writer(fd)
            self._writing = False
        _fastio.close_now(fd)  # with the GIL held: see _fastio


def new_bytes(written: int, eof: bool, offset: int, length: int) -> int:
    """How many of `length` bytes written at `offset` are new when `written` were taken so far (a
    retry repeats the rest); OUT_OF_RANGE past those, FAILED_PRECONDITION for new ones after the end."""
    if offset > written:
        raise RouterError(grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} is past the {written} bytes written so far")
    new = max(0, length - (written - offset))
    if eof and new:
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "stdin is already closed")
    return new


def terminal_eof(fd: int, last: bytes) -> bytes:
    """What ends a terminal's input: its EOF character, twice unless at the start of a line
    (the first only pushes out a partial line). A terminal in raw mode has no end of input."""
    attrs = termios.tcgetattr(fd)
    if not attrs[3] & termios.ICANON:
        return b""
    veof: bytes = attrs[6][termios.VEOF]
    return veof if last in (b"", b"\n") else veof * 2
