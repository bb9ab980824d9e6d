"""How durable an answer is before it is given (`router serve --durability`).

"process" (the default): the journal's records are written (handed to the kernel) before any
answer that depends on them, so they survive the router's death, `kill -9` included, though not
the machine's. "machine": also fdatasync'd, the journal and the log arenas holding the output
answered, so they survive a power cut. The syncs run on a thread of their own, one for every batch
of records written meanwhile (group commit), so the event loop never waits for the disk.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Literal

from router._fastio import SegmentStore

from .journal import Journal
from .loop import LoopThread

logger = logging.getLogger(__name__)

Durability = Literal["process", "machine"]
# After a failed sync the next try comes this much later.
RETRY_SECS = 0.5


class MachineSync:
    """Runs each callback on the loop thread once the journal and arenas are synced after it was
    submitted. Thread-safe `submit`; `stop` ends the thread (callbacks not yet run are dropped:
    the journal's close syncs what they waited for)."""

    def __init__(self, journal: Journal, store: SegmentStore, loop: LoopThread) -> None:
        self._journal = journal
        self._store = store
        self._loop = loop
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="router-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, then: Callable[[], None]) -> None:
        self._queue.put(then)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            stop = False
            while not self._queue.empty():
                item = self._queue.get()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._sync()
            with contextlib.suppress(RuntimeError):  # the loop stopped: the router is stopping
                self._loop.call_soon(_run_all, batch)
            if stop:
                return

    def _sync(self) -> None:
        """Output first, then the records that point at it; retried until both work."""
        while True:
            try:
                self._store.sync()
                self._journal.sync()
                return
            except OSError as e:
                logger.error("syncing the journal and logs failed, retrying in %ss: %s", RETRY_SECS, e,
                             extra={"event": "sync_failed"})
            except ValueError:
                return  # closed: the router stops
            threading.Event().wait(RETRY_SECS)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for then in callbacks:
        then()
