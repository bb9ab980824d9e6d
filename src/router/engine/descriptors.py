"""The process's open descriptors against its open-file limit: a new exec is admitted only while
one more fits below the limit less a reserve.

The reserve keeps descriptors for what must go on when execs fill the rest: grpc accepting new
connections (at EMFILE it leaves them queued, retrying once a second), the journal (compaction
opens a temporary file), snapshots and mounts, spawns in flight. Admission runs for every start,
so it does not count the process's descriptors each time: it adds to the last count what each
exec admitted since may hold, and what those still starting at the count (whose pipes and pidfd
did not exist yet) will, and counts again only once a SAMPLE_SECS has passed, after a start failed
for want of resources, or when the estimate leaves no room (then spending at most a tenth of its
time counting: a count is a stat of microseconds on Linux 6.2+, a listing of milliseconds before).
Descriptors freed by finished execs are seen at the next count, so admission resumes by itself.
"""
from __future__ import annotations

import os
import resource
import time

from router.errors import RETRY_AFTER_SECS, RouterError, throttled

# Descriptors each running exec may hold: stdin, stdout, stderr, pidfd.
FDS_PER_EXEC = 4
# The reserve: an eighth of the limit, within these bounds.
MIN_RESERVE = 64
MAX_RESERVE = 1024
# A count older than this is taken again: it follows what is not tracked (connections, files).
SAMPLE_SECS = 1.0
# Near the limit, counting takes at most 1/NEAR_COUNT_COST of the time (execs finishing free room).
NEAR_COUNT_COST = 10


def raise_open_file_limit() -> None:
    """The soft limit up to the hard one: a router runs thousands of execs of four descriptors each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE (RLIM_INFINITY as the largest descriptor count Linux allows)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def reserve_for(limit: int) -> int:
    return min(max(limit // 8, MIN_RESERVE), MAX_RESERVE)


def open_descriptors() -> int:
    """How many descriptors this process has open. Linux 6.2+ gives the count as /proc/self/fd's
    size (microseconds, no descriptor needed); older kernels say 0 there, and the directory is
    listed (milliseconds at ten thousand)."""
    size = os.stat("/proc/self/fd").st_size
    return size if size > 0 else listed_descriptors()


def listed_descriptors() -> int:
    """open_descriptors() by listing /proc/self/fd; a listing that fails for want of a descriptor
    means a full table."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
    except OSError:
        return open_file_limit()


class DescriptorBudget:
    """Admission by descriptors. Not thread-safe: the registry calls `admit` under its lock."""

    def __init__(self) -> None:
        self.limit = open_file_limit()
        self.reserve = reserve_for(self.limit)
        self._open = 0  # at the last count
        self._starting = 0  # execs admitted and not yet spawned at the last count
        self._admitted = 0  # execs admitted since
        self._counted_at = float("-inf")
        self._count_cost = 0.0

    def admit(self, starting: int) -> None:
        """Count one more exec in, or raise RESOURCE_EXHAUSTED (with a retry policy) saying why.
        `starting`: execs admitted whose spawn has not come back yet."""
        now = time.monotonic()
        age = now - self._counted_at
        if age >= SAMPLE_SECS or (not self._fits() and age >= NEAR_COUNT_COST * self._count_cost):
            self._count(now, starting)
        if not self._fits():
            raise self._refusal()
        self._admitted += 1

    def recount(self) -> None:
        """The next admission counts again (a start failed for want of resources: the count is off)."""
        self._counted_at = float("-inf")

    def _refusal(self) -> RouterError:
        return throttled(f"the router is out of file descriptors: {self._open} open of limit {self.limit} "
                         f"({self.reserve} kept for connections and files)", retry_after=RETRY_AFTER_SECS)

    def _fits(self) -> bool:
        return self._open + (self._starting + self._admitted + 1) * FDS_PER_EXEC <= self.limit - self.reserve

    def _count(self, now: float, starting: int) -> None:
        self.limit = open_file_limit()  # prlimit(1) may have changed it
        self.reserve = reserve_for(self.limit)
        self._open = open_descriptors()
        self._starting, self._admitted = starting, 0
        self._counted_at = time.monotonic()
        self._count_cost = self._counted_at - now
