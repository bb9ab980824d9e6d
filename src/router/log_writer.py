"""Log lines to a descriptor (stderr) without ever stalling the server on it.

Lines below WARNING are kept in memory and written in blocks by a thread of their own, at most
FLUSH_SECS after them (a write per line cost the exec rate several percent); WARNING and above are
written, with what came before, before the logging call returns. A reader that stops reading (a
pipe nobody drains, a stuck collector) blocks only that thread; past MAX_PENDING_LINES new lines are
dropped and counted, and the count is logged once the reader takes lines again. A write from any
other thread (a WARNING, at exit, before `router serve` prints) gives up on a reader that takes
nothing for STALL_SECS. Only whole lines are written, so another writer on the descriptor never
cuts one.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

FLUSH_SECS = 0.1
MAX_PENDING_LINES = 100_000
STALL_SECS = 1.0
_CHUNK = select.PIPE_BUF  # at most what a pipe that polls writable takes without blocking


def write_whole(fd: int, data: bytes, stall: float | None, stop: Callable[[], bool] = lambda: False) -> int:
    """Write `data` to `fd`, cut only after a newline (a line longer than _CHUNK aside); how much was
    written: less if its reader takes nothing for `stall` seconds (None: as long as it takes, until
    `stop()`) or it is gone."""
    done = 0
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        while done < len(data):
            if not poller.poll(int((STALL_SECS if stall is None else stall) * 1000)):
                if stall is not None or stop():
                    break
                continue
            end = len(data) if len(data) - done <= _CHUNK else data.rfind(b"\n", done, done + _CHUNK) + 1
            done += os.write(fd, memoryview(data)[done:end if end > done else done + _CHUNK])
    except OSError:
        pass  # nowhere to say it: the lines are lost, the server goes on
    return done


class BlockHandler(logging.Handler):
    """`dropped(n)` makes the line that says n lines were dropped (in the handler's format)."""

    def __init__(self, fd: int, dropped: Callable[[int], str]) -> None:
        super().__init__()
        self._fd, self._dropped_line = fd, dropped
        self._lines: list[str] = []  # guarded by self.lock
        self._dropped = 0
        self._writing = threading.Lock()  # one writer at a time, so blocks keep their order
        self._pending = threading.Event()
        self._closed = False
        threading.Thread(target=self._flush_pending, name="router-log-flush", daemon=True).start()

    def handle(self, record: logging.LogRecord) -> bool:
        emitted = super().handle(record)
        if record.levelno >= logging.WARNING:
            self.flush()  # before the call returns (an os._exit may follow), outside the lock emit held
        return emitted

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """A formatted line, to be written with the next block."""
        with self.lock:  # type: ignore[union-attr]
            if len(self._lines) >= MAX_PENDING_LINES:
                self._dropped += 1
                return
            self._lines.append(line)
        if not self._pending.is_set():
            self._pending.set()

    def flush(self, stall: float | None = STALL_SECS) -> None:
        if not self._writing.acquire(timeout=-1 if stall is None else stall):
            return  # the flusher thread waits on the reader: it writes these when it can
        try:
            with self.lock:  # type: ignore[union-attr]
                lines, self._lines = self._lines, []
                dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.append(self._dropped_line(dropped))
            data = ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace") if lines else b""
            written = write_whole(self._fd, data, stall, lambda: self._closed)
            if written < len(data):  # the reader stalled or went: count the lines it did not get
                with self.lock:  # type: ignore[union-attr]
                    self._dropped += data.count(b"\n", written)
                self._pending.set()
        finally:
            self._writing.release()

    def close(self) -> None:
        """Write what is left (giving up on a stalled reader after STALL_SECS); the thread ends soon
        after (not joined: logging.shutdown calls this holding the lock the thread may need)."""
        self._closed = True
        self._pending.set()
        self.flush()
        super().close()

    def _flush_pending(self) -> None:
        while not self._closed:
            self._pending.wait()
            if not self._closed:
                time.sleep(FLUSH_SECS)
            self._pending.clear()
            self.flush(stall=None)
