"""What a finished exec keeps: little, since the router retains thousands of them.

Once an exec is finished nothing of it runs on, so `settle` drops what only a running exec needs
(its environment, its child and output pipes, its stdin buffer, its start future) and leaves the
records every call can still ask for: status, cause, times, usage, pid, args, logs, and how much
stdin went in (writes are still accepted and dropped). `settled` goes further once the journal
holds all of its output: its condition goes too, made again only if something waits or changes.
What replaces the dropped parts is shared by every finished exec, so each costs a few hundred bytes.
"""
from __future__ import annotations

import concurrent.futures
import threading

import grpc
import msgspec

from router.errors import RouterError

from .execs import Exec

# Every finished exec's start future: done, with no error.
STARTED: concurrent.futures.Future[None] = concurrent.futures.Future()
STARTED.set_running_or_notify_cancel()
STARTED.set_result(None)
# Every finished exec's environment: it ran already, and the journal holds only its names.
NO_ENV: dict[str, str] = {}
# Guards the stdin counters of every finished exec: their writes are rare and short.
_STDIN_LOCK = threading.Lock()


class ClosedStdin:
    """A finished exec's stdin: writes are checked as before (offsets, end of input) and dropped."""

    __slots__ = ("written", "eof")
    pending_bytes = 0

    def __init__(self, written: int, eof: bool) -> None:
        self.written = written
        self.eof = eof

    def offer(self, offset: int, data: bytes, eof: bool) -> tuple[bool, bool]:
        """As StdinBuffer.offer once the child is gone: accepted (or refused as then), never flushed."""
        with _STDIN_LOCK:
            if offset > self.written:
                raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                                  f"offset {offset} is past the {self.written} bytes written so far")
            new = max(0, len(data) - (self.written - offset))
            if self.eof:
                if new:
                    raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "stdin is already closed")
                return True, False
            self.written += new
            self.eof = eof
            return True, False

    def drop(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def settle(ex: Exec) -> None:
    """The exec just finished (loop thread, after its status, cause and journal records): keep only
    what a finished exec answers with."""
    with ex.cond:
        ex.pid = ex.pid  # kept when the child goes
        ex.child = None
        ex.output = None
        ex.stdin = ClosedStdin(ex.stdin.written, ex.stdin.eof)
        if ex.spec.env:
            ex.spec = msgspec.structs.replace(ex.spec, env=NO_ENV)
        if ex.started.done() and ex.started.exception() is None:
            ex.started = STARTED
    if not ex.holds_output_for_journal:
        ex.let_go()
