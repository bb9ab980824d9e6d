"""A Watch call's view of the router: the execs it asked for, offered as each starts and finishes.

The engine offers every started and every finished exec to every watcher on its loop thread; the
Watch body takes what has come, sends it, and waits (as on an exec) for more. Each exec's start
and exit are offered to a watcher once each, the start first, so a call sees each exactly once.
"""
from __future__ import annotations

from typing import Literal

from .execs import Changes, Exec
from .records import ExitCause

EventKind = Literal["started", "exited"]


class Watcher(Changes):
    def __init__(self, exec_ids: set[str] | None, include_started: bool = False) -> None:
        """`exec_ids`: the execs to watch (None: every exec, including later ones)."""
        super().__init__()
        self._wanted = exec_ids
        self._include_started = include_started
        self._left = set(exec_ids) if exec_ids is not None else None
        self._started: set[str] = set()
        self._exited: set[str] = set()
        self._ready: list[tuple[EventKind, Exec]] = []

    def _wants(self, ex: Exec) -> bool:
        return self._wanted is None or ex.exec_id in self._wanted

    def _add_started(self, ex: Exec) -> None:
        if self._include_started and ex.exec_id not in self._started:
            self._started.add(ex.exec_id)
            self._ready.append(("started", ex))

    def offer_started(self, ex: Exec) -> None:
        """An exec's process started (or had, when the call began). Loop thread."""
        with self.cond:
            if not self._wants(ex) or not self._include_started or ex.exec_id in self._started:
                return
            self._add_started(ex)
        self.notify()

    def offer(self, ex: Exec) -> None:
        """An exec finished (or had, when the call began). Loop thread."""
        with self.cond:
            if ex.exec_id in self._exited or not self._wants(ex):
                return
            if ex.cause is not ExitCause.FAILED_TO_START:  # it ran: its start comes first, if not sent yet
                self._add_started(ex)
            self._exited.add(ex.exec_id)
            self._ready.append(("exited", ex))
        self.notify()

    def has_events(self) -> bool:
        return bool(self._ready)

    def take(self) -> list[tuple[EventKind, Exec]]:
        with self.cond:
            ready, self._ready = self._ready, []
            if self._left is not None:
                self._left.difference_update(ex.exec_id for kind, ex in ready if kind == "exited")
        return ready

    @property
    def complete(self) -> bool:
        """Every exec asked for has exited and been taken (never, when watching all)."""
        with self.cond:
            return self._left is not None and not self._left and not self._ready
