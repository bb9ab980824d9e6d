"""Journaling the engine's execs, on the loop thread: records appended as things happen and written
with one flush per loop iteration that changed something. Every answer a client could see waits for
the records it depends on (`when_written`): a reader gets output, a waiter an exit status, a starter
its start, only once the journal holds them, so a restart after `kill -9` never contradicts it."""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from router._fastio import SegmentStore

from .durability import Durability, MachineSync
from .execs import Exec
from .journal import Journal
from .journal_format import Output, Record
from .loop import LoopThread
from .records import StreamName

logger = logging.getLogger(__name__)

# After a failed journal write, the next try comes this much later.
RETRY_SECS = 0.5
# Slots given back while nothing else is journaled are recycled after at most this long.
RECYCLE_SECS = 0.1
# The journal keeps room allocated for this much per running exec (its last Output, Stdin and
# Exited records take a few hundred bytes), plus the margin, whatever fills the state filesystem.
RESERVE_PER_EXEC = 1024
RESERVE_MARGIN = 64 << 10


class ExecJournal:
    """The journal as the loop thread writes it. `journal` is the file, for the start and the stop."""

    def __init__(self, journal: Journal, loop: LoopThread, store: SegmentStore, running: Callable[[], int],
                 durability: Durability = "process") -> None:
        self.journal = journal
        self._loop = loop
        # With "machine", answers also wait for fdatasync (durability.py), on a thread of its own.
        self._sync = MachineSync(journal, store, loop) if durability == "machine" else None
        self._running = running
        # The state filesystem has no room for the reserve: new execs are refused until it has.
        self.full = False
        self.full_listeners: list[Callable[[bool], None]] = []  # told (loop thread) when `full` changes
        self._reserve_tried = 0.0
        self._reserve_retry_armed = False
        self._failing = False  # writes fail: said once, and once when they work again
        # Slots given back are handed out again only once the journal says who gave them up.
        self._store = store
        store.hold_freed()
        self._dirty: set[Exec] = set()  # execs whose output changed since the last flush
        self._waiting: list[Callable[[], None]] = []  # run once what was appended before them is written
        self._flush_scheduled = False
        self._recycle_armed = False

    def record(self, record: Record) -> None:
        self.journal.append(record)
        self.flush_soon()

    def start(self) -> None:
        if self._sync is not None:
            self._sync.start()
        self._loop.call_soon(self._keep_reserve)  # a router restarted on a full filesystem says so

    def stop(self) -> None:
        if self._sync is not None:
            self._sync.stop()

    def when_written(self, then: Callable[[], None]) -> None:
        """Call `then` (on the loop thread) once every record appended so far is written."""
        self._waiting.append(then)
        self.flush_soon()

    def output_changed(self, ex: Exec) -> None:
        """The exec's output grew or ended: journal where it is at the next flush, then let readers have it."""
        self._dirty.add(ex)
        self.flush_soon()

    def flush_soon(self) -> None:
        """Flush once this loop iteration's events are handled: one write for them all."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Journal where the changed execs' output is, then let their readers have it."""
        self._flush_scheduled = False
        held = self._store.held_slots  # their release was recorded before this flush's records
        changed = [(ex, self._record_output(ex)) for ex in self._dirty]
        self._dirty.clear()
        waiting, self._waiting = self._waiting, []
        try:
            self.journal.flush()
        except OSError as e:  # the records stay buffered; their answers wait for the next try
            if not self._failing:
                self._failing = True
                logger.error("writing the journal %s failed (answers wait until it works; retrying every %ss): %s",
                             self.journal.path, RETRY_SECS, e, extra={"event": "journal_write_failed"})
            self._dirty.update(ex for ex, _ in changed)
            self._waiting[:0] = waiting
            self._loop.loop.call_later(RETRY_SECS, self.flush_soon)
            return
        if self._failing:
            self._failing = False
            logger.warning("writing the journal %s works again", self.journal.path,
                           extra={"event": "journal_write_recovered"})
        self._keep_reserve()
        if self._sync is None:
            self._written(held, changed, waiting)
        elif held or changed or waiting:
            self._sync.submit(functools.partial(self._written, held, changed, waiting))

    def _written(self, held: int, changed: list[tuple[Exec, dict[StreamName, int]]],
                 waiting: list[Callable[[], None]]) -> None:
        """The records of one flush are as durable as asked: recycle the slots their releases gave
        back, and give the answers that waited for them."""
        self._store.recycle_held(held)
        if self._store.held_slots and not self._recycle_armed:  # given back meanwhile: recycle soon
            self._recycle_armed = True
            self._loop.loop.call_later(RECYCLE_SECS, self._recycle)
        for ex, lengths in changed:
            ex.output_journaled(lengths)
        for then in waiting:
            then()

    def _keep_reserve(self) -> None:
        """Keep room allocated for the exits of every running exec (and one more); while there is
        none, look again at most every RETRY_SECS."""
        now = time.monotonic()
        if self.full and now - self._reserve_tried < RETRY_SECS:
            # Too soon: try at the end of the interval (a timer a hair early must not end the retries).
            self._retry_reserve(RETRY_SECS - (now - self._reserve_tried))
            return
        self._reserve_tried = now
        full = not self.journal.reserve((self._running() + 1) * RESERVE_PER_EXEC + RESERVE_MARGIN)
        if full:
            self._retry_reserve(RETRY_SECS)  # nothing else may flush while it is full
        if full != self.full:
            self.full = full
            for listener in self.full_listeners:
                listener(full)
            if full:
                logger.error("the state filesystem of %s is full: new execs are refused until it has room for "
                             "the journal's reserve (running execs go on)", self.journal.path,
                             extra={"event": "state_filesystem_full"})
            else:
                logger.warning("the state filesystem of %s has room again: new execs are accepted", self.journal.path,
                               extra={"event": "state_filesystem_room"})

    def listen_full(self, listener: Callable[[bool], None]) -> None:
        """Loop thread: call `listener(full)` now and whenever `full` changes."""
        self.full_listeners.append(listener)
        listener(self.full)

    def _retry_reserve(self, secs: float) -> None:
        if not self._reserve_retry_armed:
            self._reserve_retry_armed = True
            self._loop.loop.call_later(secs, self._reserve_retry)

    def _reserve_retry(self) -> None:
        self._reserve_retry_armed = False
        self.flush_soon()

    def _recycle(self) -> None:
        self._recycle_armed = False
        self.flush_soon()

    def _record_output(self, ex: Exec) -> dict[StreamName, int]:
        """Record where each of the exec's streams is; returns the lengths recorded."""
        lengths: dict[StreamName, int] = {}
        for name, log in ex.named_logs():
            if not log.closed:
                eof = log.eof  # before committed: once eof is seen, committed is final
                committed = log.committed
                if ex.journaled_output.get(name) != (committed, eof):  # else the last record says it
                    self.journal.append(Output(ex.exec_id, name, log.segments, committed, eof))
                    ex.journaled_output[name] = (committed, eof)
                lengths[name] = committed
        return lengths
