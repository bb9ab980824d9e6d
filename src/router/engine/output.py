"""Draining an exec's output pipes (or its terminal) into its logs, on the loop thread, as much at a
time as the log filesystem has room for (log_space.py)."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from router import _fastio
from router._fastio import SegmentedLog

from .log_space import LogSpace
from .loop import Readers
from .records import StreamName
from .spawn import Started
from .stats import ExecStats

if TYPE_CHECKING:
    from .execs import Exec

logger = logging.getLogger(__name__)

# After a failed write to a log, reading that pipe waits this long: the pipe holds the child back.
DRAIN_RETRY_SECS = 0.5

Output = tuple[int, SegmentedLog, StreamName]  # a pipe (or terminal) drained, its log, the stream it is


def exec_outputs(ex: Exec, started: Started) -> list[Output]:
    """The router's ends of a started exec's output that have a log, each with its log and stream."""
    outputs: list[Output] = []
    if started.stdout_reader >= 0 and ex.stdout is not None:
        outputs.append((started.stdout_reader, ex.stdout, "stdout"))
    if started.stderr_reader >= 0 and ex.stderr is not None:
        outputs.append((started.stderr_reader, ex.stderr, "stderr"))
    return outputs


class OutputPipes:
    """The router's ends of an exec's output, each drained into its log as it becomes readable.

    `on_change` runs after new bytes, an end of stream or a trim; `on_done` once every stream is
    complete. A log `space` finds no room for is held back: its pipe is not read until
    `resume_held`. `stats` counts the bytes drained, by stream.
    """

    def __init__(self, exec_id: str, loop: asyncio.AbstractEventLoop, readers: Readers, outputs: list[Output],
                 terminal: bool, on_change: Callable[[], None], on_done: Callable[[], None], space: LogSpace,
                 stats: ExecStats) -> None:
        self._exec_id = exec_id
        self._space = space
        self._counted = stats.output_bytes
        self._streams = {fd: name for fd, _, name in outputs}
        self._held: set[int] = set()
        self._loop = loop
        self._readers = readers
        self._terminal = terminal
        self._on_change = on_change
        self._on_done = on_done
        self._logs = {fd: log for fd, log, _ in outputs}
        self._held_master = -1  # a terminal's master, kept open until the leader exits
        self._leader_exited = False
        self._retries: list[asyncio.TimerHandle] = []
        for fd in self._logs:
            os.set_blocking(fd, False)
            readers.add_reader(fd, self._on_readable, fd)
        if self._logs:
            space.attach(self)

    @property
    def done(self) -> bool:
        return not self._logs

    @property
    def held_back(self) -> bool:
        """A stream waits for room on the log filesystem (its writer waits on its pipe). Any thread."""
        return bool(self._held)

    @property
    def leader_gone(self) -> bool:
        return self._leader_exited

    def draining(self) -> list[SegmentedLog]:
        return list(self._logs.values())

    def descriptors(self) -> tuple[dict[int, SegmentedLog], int]:
        """For a handover: each open stream's pipe (or terminal) and its log, and a terminal's master
        kept open after its output ended (-1 if none)."""
        return dict(self._logs), self._held_master

    def keep_master(self, fd: int) -> None:
        """For a handover: a terminal's master whose output has ended, held until the leader exits."""
        self._held_master = fd

    def changed(self) -> None:
        """A log was trimmed: tell readers (and the journal)."""
        self._on_change()

    def resume_held(self) -> None:
        for fd in self._held:
            self._readers.add_reader(fd, self._on_readable, fd)
        self._held.clear()

    def _hold(self, fd: int) -> None:
        self._readers.remove_reader(fd)
        self._held.add(fd)
        self._space.held(self)

    def terminal_fd(self) -> int | None:
        """A terminal's master while the exec can still use it (for resizing); else None."""
        if not self._terminal or self._leader_exited:
            return None
        return next(iter(self._logs), None) if self._logs else (self._held_master if self._held_master >= 0 else None)

    def _on_readable(self, fd: int) -> None:
        log = self._logs[fd]
        budget = self._space.budget(log)
        if budget <= 0:
            self._hold(fd)
            return
        try:
            n, eof = log.drain(fd, budget)
        except OSError as e:
            if e.errno == errno.ENOSPC:  # the log kept what it took from the pipe
                self._space.enospc()
                self._hold(fd)
                return
            # The log kept what it took from the pipe; stop reading until writing can work again.
            logger.error("writing output failed (exec %s), retrying in %ss: %s", self._exec_id, DRAIN_RETRY_SECS, e,
                         extra={"event": "output_write_failed", "exec_id": self._exec_id})
            self._readers.remove_reader(fd)
            self._retries.append(self._loop.call_later(DRAIN_RETRY_SECS, self._resume, fd))
            return
        self._space.wrote(n)
        self._counted[self._streams[fd]] += n
        if eof:
            self._close(fd)
        if n or eof:
            self._on_change()
        if eof and self.done:
            self._on_done()

    def _resume(self, fd: int) -> None:
        if fd in self._logs:
            self._readers.add_reader(fd, self._on_readable, fd)

    def _close(self, fd: int) -> None:
        self._readers.remove_reader(fd)
        self._held.discard(fd)
        log = self._logs.pop(fd)
        if not self._logs:
            self._space.detach(self)
        if not log.eof:
            log.mark_eof()
        if self._terminal and not self._leader_exited:
            # Closing the master hangs the terminal up (SIGHUP): a program that closes its
            # terminal descriptors just before exiting (cat does) must be left to exit.
            self._held_master = fd
        else:
            _fastio.close_now(fd)

    def leader_exited(self) -> None:
        self._leader_exited = True
        if self._held_master >= 0:
            _fastio.close_now(self._held_master)
            self._held_master = -1

    def close(self) -> None:
        """Stop draining: every stream ends where it is. For shutdown."""
        for timer in self._retries:
            timer.cancel()
        self._retries.clear()
        for fd in list(self._logs):
            self._close(fd)
        self.leader_exited()
