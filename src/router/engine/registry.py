"""The registry: exec id -> Exec, admission (how many may run, whether their descriptors fit),
idempotent begin, forgetting."""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

import grpc

from router.errors import RETRY_AFTER_SECS, RouterError, not_found, throttled

from .descriptors import DescriptorBudget
from .execs import Exec
from .records import ExitCause
from .retention import Retention
from .stats import ExecStats


class Registry:
    """Thread-safe. `running` counts execs admitted and not yet exited (at most `max_running`, if
    not 0), `starting` those of them not yet spawned; finished execs are kept in the order they
    finished, with their output's size, for retention. `stats` counts starts and exits for metrics."""

    def __init__(self, max_running: int) -> None:
        self.stats = ExecStats(lambda: self._finished_bytes)
        self._lock = threading.Lock()
        self._execs: dict[str, Exec] = {}
        self._max_running = max_running
        self._budget = DescriptorBudget()
        self._running = 0
        self._starting = 0
        self._closing = False
        self.refusing: RouterError | None = None  # why new execs are refused for now (a handover)
        # In the order they finished, each with the output it held then (Exec.retained_bytes, None
        # until it is here): a deque costs a pointer per exec, a dict of them ten times as much.
        self._finished: collections.deque[Exec] = collections.deque()
        self._finished_bytes = 0

    @property
    def finished_bytes(self) -> int:
        """Output held by finished execs."""
        return self._finished_bytes

    @property
    def running(self) -> int:
        return self._running

    def all(self) -> list[Exec]:
        """Every exec known, oldest start first."""
        with self._lock:
            execs = list(self._execs.values())
        return sorted(execs, key=lambda ex: ex.started_at)

    def get(self, exec_id: str) -> Exec:
        ex = self._execs.get(exec_id)
        if ex is None:
            raise not_found(f"exec {exec_id!r} not found")
        return ex

    def begin(self, exec_id: str, fingerprint: bytes, make: Callable[[], Exec],
              admitted: Callable[[Exec], None]) -> Exec:
        """The exec with this id: the one already there if its request had the same `fingerprint`,
        else a new one from `make()`, then passed to `admitted()` under the registry's lock (so
        that `close()` sees whatever it schedules)."""
        with self._lock:
            if self._closing:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, "router is shutting down")
            ex = self._execs.get(exec_id)
            if ex is not None:
                if ex.fingerprint != fingerprint:
                    raise RouterError(grpc.StatusCode.ALREADY_EXISTS,
                                      f"exec {exec_id!r} already exists with a different request")
                return ex
            if self.refusing is not None:
                raise self.refusing
            if self._max_running and self._running >= self._max_running:
                raise throttled(f"too many running execs ({self._running})", retry_after=RETRY_AFTER_SECS)
            self._budget.admit(self._starting)
            ex = make()
            self._execs[exec_id] = ex
            self._running += 1
            self._starting += 1
            admitted(ex)
            return ex

    def spawned(self, outcomes: Sequence[tuple[Exec, object]]) -> None:
        """The spawns of admitted execs came back, each with its process or the exception that
        prevented it."""
        started = sum(not isinstance(outcome, BaseException) for _, outcome in outcomes)
        with self._lock:
            self._starting -= len(outcomes)
            self.stats.started_ok += started

    def exited(self, cause: ExitCause, secs: float) -> None:
        """An admitted exec stopped running, for `cause`, `secs` after it was admitted."""
        with self._lock:
            self._running -= 1
            self.stats.exited(cause, secs)

    def forget(self, ex: Exec) -> None:
        """Drop an exec whose start failed, so a retry of its id starts afresh."""
        with self._lock:
            self._budget.recount()
            if self._execs.get(ex.exec_id) is ex:
                del self._execs[ex.exec_id]
            self._running -= 1

    def finished(self, ex: Exec, held_bytes: int) -> None:
        """An exec is finished (exited, output complete) holding `held_bytes` of output."""
        with self._lock:
            if ex.retained_bytes is None and self._execs.get(ex.exec_id) is ex:
                self._keep(ex, held_bytes)

    @property
    def finished_count(self) -> int:
        return len(self._finished)

    def restore(self, ex: Exec, held_bytes: int) -> None:
        """A finished exec from the journal, at startup."""
        with self._lock:
            self._execs[ex.exec_id] = ex
            self._keep(ex, held_bytes)

    def adopt(self, ex: Exec, running: bool) -> None:
        """An exec a handover brought, still running (or its leader exited, its output not yet complete)."""
        with self._lock:
            self._execs[ex.exec_id] = ex
            self._running += running

    @property
    def starting(self) -> int:
        return self._starting

    def refuse(self, why: RouterError | None) -> None:
        """Refuse new execs with `why` (None: admit again). Under the lock: a begin() past its check
        has counted itself in `starting` by the time this returns."""
        with self._lock:
            self.refusing = why

    def _keep(self, ex: Exec, held_bytes: int) -> None:
        ex.retained_bytes = held_bytes
        self._finished.append(ex)
        self._finished_bytes += held_bytes

    def expire(self, retention: Retention) -> list[Exec]:
        """Forget finished execs, oldest first, while any limit of `retention` is passed; the
        caller releases what they hold."""
        now = time.monotonic()
        released = []
        with self._lock:
            while self._finished:
                ex = self._finished[0]
                if (len(self._finished) <= retention.execs and self._finished_bytes <= retention.bytes
                        and (ex.exited_at is None or now - ex.exited_at <= retention.secs)):
                    break
                self._finished.popleft()
                del self._execs[ex.exec_id]
                self._finished_bytes -= ex.retained_bytes or 0  # set when it came in
                released.append(ex)
        return released

    def close(self) -> list[Exec] | None:
        """Admit nothing more; every exec there is, or None if already closed."""
        with self._lock:
            if self._closing:
                return None
            self._closing = True
            return list(self._execs.values())
