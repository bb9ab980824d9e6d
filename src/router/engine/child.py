"""An exec's leader, watched through a pidfd on the loop thread: exit, timeout, signals, reaping.

The pidfd is held from spawn until the exec is finished. While it is open the leader stays unreaped
once it exits (a zombie), so its pid and process group id cannot be reused: signalling the group,
the leader (even one that left its group) and a terminal's session is safe until `release()`.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from router import _fastio

from . import procs
from .loop import Readers
from .records import ExitStatus, Usage, exit_status

logger = logging.getLogger(__name__)


class Child:
    def __init__(self, pid: int, pidfd: int, terminal: bool) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._terminal = terminal
        self.exited = False
        self.timed_out = False  # its timeout fired
        self.usage: Usage | None = None  # its rusage, once reaped
        self._readers: Readers | None = None
        self._timers: list[asyncio.TimerHandle] = []
        # Monotonic times (one clock for every process of the machine) a handover carries over.
        self.timeout_at: float | None = None
        self.kill_at: float | None = None  # the SIGKILL after a grace

    @property
    def pidfd(self) -> int:
        return self._pidfd

    @property
    def held(self) -> bool:
        """Until release(): the pid and group id are still this child's."""
        return self._pidfd >= 0

    def watch(self, readers: Readers, on_exit: Callable[[], None]) -> None:
        self._readers = readers
        readers.add_reader(self._pidfd, on_exit)

    def exit_status(self) -> ExitStatus | None:
        """The leader's status once it has exited (None before: a spurious wake-up); not reaped."""
        if self._pidfd < 0 or self.exited:
            return None
        ended = _fastio.exit_status(self._pidfd)  # with the GIL held: see _fastio
        if ended is None:
            return None
        self.exited = True
        self._unwatch()
        exited, value = ended
        return exit_status(exited, value)

    def _unwatch(self) -> None:
        if self._readers is not None:
            self._readers.remove_reader(self._pidfd)
            self._readers = None

    # -- signals and timeouts ---------------------------------------------------------------------

    def signal(self, sig: int, sessions: bool = True) -> None:
        """Signal the process group, the leader (even if it left the group) and, for a terminal,
        its whole session (an interactive shell puts each job in a group of its own)."""
        if self._pidfd < 0:
            return
        procs.killpg_quietly(self.pid, sig)
        if not self.exited:
            procs.signal_pidfd(self._pidfd, sig)
        if sessions and self._terminal:
            procs.kill_sessions([self.pid], sig)

    def signal_leader(self, sig: int) -> None:
        """The leader alone (through its pidfd: never another process that took its pid)."""
        if self._pidfd >= 0 and not self.exited:
            procs.signal_pidfd(self._pidfd, sig)

    def terminate(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        """SIGTERM to the group (and a terminal's session), SIGKILL `grace` later unless the child is
        released first; SIGKILL at once without a grace."""
        if grace > 0:
            self.signal(signal.SIGTERM)
            self.kill_at = time.monotonic() + grace
            self._timers.append(loop.call_later(grace, self.signal, signal.SIGKILL))
        else:
            self.signal(signal.SIGKILL)

    @property
    def terminal(self) -> bool:
        return self._terminal

    def arm_timeout(self, loop: asyncio.AbstractEventLoop, secs: float, grace: float) -> None:
        """At `secs`, SIGKILL the exec; with a `grace`, SIGTERM first and SIGKILL `grace` later."""
        self.timeout_at = time.monotonic() + secs
        self._timers.append(loop.call_later(secs, self._on_timeout, loop, grace))

    def rearm(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        """After a handover: the timeout and a pending SIGKILL at their original times."""
        now = time.monotonic()
        if self.timeout_at is not None and not self.timed_out:
            self._timers.append(loop.call_later(max(0.0, self.timeout_at - now), self._on_timeout, loop, grace))
        if self.kill_at is not None:
            self._timers.append(loop.call_later(max(0.0, self.kill_at - now), self.signal, signal.SIGKILL))

    def _on_timeout(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        self.timed_out = True
        self.terminate(loop, grace)

    # -- the end ---------------------------------------------------------------------------------

    def release(self) -> bool:
        """Reap the leader and drop the pidfd: after this its pid and group id may be reused.
        True if members of its process group live on (background jobs that closed their output)."""
        if self._pidfd < 0:
            self.drop()
            return False
        if self.exited:
            # By pid, for its rusage: the pidfd held until here keeps the pid from reuse.
            reaped = _fastio.reap(self.pid)
            if reaped is not None:
                self.usage = Usage(user_cpu_secs=reaped[0], system_cpu_secs=reaped[1], max_rss_bytes=reaped[2])
        else:
            logger.error("leader %d survived SIGKILL; leaving it unreaped", self.pid,
                         extra={"event": "leader_survived_sigkill", "pid": self.pid})
        self.drop()
        # Linux keeps a group's id from reuse while it has members.
        return procs.group_exists(self.pid)

    def drop(self) -> None:
        """Cancel the timers, stop watching, close the pidfd (the leader reaped, or someone else's)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._pidfd >= 0:
            self._unwatch()
            _fastio.close_now(self._pidfd)
            self._pidfd = -1
