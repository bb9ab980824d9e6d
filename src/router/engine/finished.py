"""What a finished exec keeps: little, since the router retains thousands of them.

Once an exec is finished nothing of it runs on, so `settle` drops what only a running exec needs
(its environment, child, output pipes, stdin buffer and start future, the log of a stream with
nothing in it) and keeps what calls can still ask for: status, cause, times, usage, pid, args,
logs, and how much stdin went in (writes are still checked, accepted and dropped). Its condition
goes too once the journal holds all its output (Exec.output_journaled; at once without a journal),
made again only if something waits or changes. What takes the place of a dropped part is shared by
every finished exec.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref

import msgspec

from router import _fastio
from router._fastio import SegmentedLog, SegmentStore

from .execs import Exec
from .stats import ExecStats
from .stdin_buffer import new_bytes

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
            n = new_bytes(self.written, self.eof, offset, len(data))
            if not self.eof:
                self.written += n
                self.eof = eof
            return True, False

    def attach(self, loop: asyncio.AbstractEventLoop, fd: int, stats: ExecStats) -> None:
        """Nothing will be written: the descriptor is closed at once."""
        _fastio.close_now(fd)

    def drop(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RestoredStdin(ClosedStdin):
    """A restored exec's stdin: as a finished one's, but a write past what it took is a retry of
    one acknowledged before the restart (the journal has not the last count), accepted and dropped."""

    __slots__ = ()

    def offer(self, offset: int, data: bytes, eof: bool) -> tuple[bool, bool]:
        if offset > self.written:
            return True, False
        return super().offer(offset, data, eof)


class _EmptyLog(SegmentedLog):
    """A finished stream that holds nothing, shared by every such stream of a store's execs: so
    retention closing an exec's logs leaves it be; `close_empty_log` closes it with the store."""

    __slots__ = ("__weakref__",)

    def close(self) -> None:
        pass


# By id(store): each log holds its store, so the id is that store's while the entry lasts.
_empty_logs: weakref.WeakValueDictionary[int, _EmptyLog] = weakref.WeakValueDictionary()


def _empty_log(store: SegmentStore) -> SegmentedLog:
    """The store's shared empty log (loop thread, or startup's restore)."""
    log = _empty_logs.get(id(store))
    if log is None:
        log = _empty_logs[id(store)] = _EmptyLog(store)
        log.mark_eof()
    return log


def close_empty_log(store: SegmentStore) -> None:
    """The store closes (the engine stops): so does its shared empty log."""
    log = _empty_logs.pop(id(store), None)
    if log is not None:
        SegmentedLog.close(log)


def _trimmed(log: SegmentedLog | None) -> SegmentedLog | None:
    """The shared empty log for a complete stream with nothing in it (and no slot, which its own
    log would give back before the journal says it no longer holds it); else `log` itself."""
    if log is None or not log.eof or log.committed or log.segments:
        return log
    return _empty_log(log.store)


def settle(ex: Exec) -> None:
    """The exec just finished (loop thread, after its status, cause and journal records): keep only
    what a finished exec answers with."""
    with ex.cond:
        ex.pid = ex.pid  # kept when the child goes
        ex.child = None
        ex.output = None
        ex.stdin = ClosedStdin(ex.stdin.written, ex.stdin.eof)
        ex.stdout, ex.stderr = _trimmed(ex.stdout), _trimmed(ex.stderr)
        if ex.spec.env:
            ex.spec = msgspec.structs.replace(ex.spec, env=NO_ENV)
        if ex.started.done() and ex.started.exception() is None:
            ex.started = STARTED
    if not ex.holds_output_for_journal:
        ex.let_go()


def close_logs(ex: Exec) -> None:
    for log in ex.logs():
        log.close()
