"""Journaling the engine's execs, on the loop thread: records appended as things happen and written
with one flush per loop iteration that changed something. Every answer a client could see waits for
the records it depends on (`when_written`): a reader gets output, a waiter an exit status, a starter
its start, only once the journal holds them, so a restart after `kill -9` never contradicts it."""
from __future__ import annotations

import logging
from collections.abc import Callable

from router._fastio import SegmentStore

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


class ExecJournal:
    """The journal as the loop thread writes it. `journal` is the file, for the start and the stop."""

    def __init__(self, journal: Journal, loop: LoopThread, store: SegmentStore) -> None:
        self.journal = journal
        self._loop = loop
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
            logger.error("writing the journal failed, retrying in %ss: %s", RETRY_SECS, e)
            self._dirty.update(ex for ex, _ in changed)
            self._waiting[:0] = waiting
            self._loop.loop.call_later(RETRY_SECS, self.flush_soon)
            return
        self._store.recycle_held(held)
        if self._store.held_slots and not self._recycle_armed:  # given back meanwhile: recycle soon
            self._recycle_armed = True
            self._loop.loop.call_later(RECYCLE_SECS, self._recycle)
        for ex, lengths in changed:
            ex.output_journaled(lengths)
        for then in waiting:
            then()

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
