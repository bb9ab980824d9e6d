"""A Watch call's view of the router: the execs it asked for, offered as each finishes.

The engine offers every finished exec to every watcher on its loop thread; the Watch body takes
what has come, sends it, and waits (as on an exec) for more. Each exec is offered to a watcher
once, so a call sees each exit exactly once.
"""
from __future__ import annotations

from .execs import Changes, Exec


class Watcher(Changes):
    def __init__(self, exec_ids: set[str] | None) -> None:
        """`exec_ids`: the execs to watch (None: every exec, including later ones)."""
        super().__init__()
        self._wanted = exec_ids
        self._left = set(exec_ids) if exec_ids is not None else None
        self._sent: set[str] = set()
        self._ready: list[Exec] = []

    def offer(self, ex: Exec) -> None:
        """An exec finished (or had, when the call began). Loop thread."""
        with self.cond:
            if ex.exec_id in self._sent or (self._wanted is not None and ex.exec_id not in self._wanted):
                return
            self._sent.add(ex.exec_id)
            self._ready.append(ex)
        self.notify()

    def has_events(self) -> bool:
        return bool(self._ready)

    def take(self) -> list[Exec]:
        with self.cond:
            ready, self._ready = self._ready, []
            if self._left is not None:
                self._left.difference_update(ex.exec_id for ex in ready)
        return ready

    @property
    def complete(self) -> bool:
        """Every exec asked for has been taken (never, when watching all)."""
        with self.cond:
            return self._left is not None and not self._left and not self._ready
