"""Room on the log filesystem: what the router does before an exec's output meets ENOSPC.

Every drain asks `LogSpace.budget` how much it may write. While the filesystem has more free than
the reserve, a log writes up to that; when it has not, room is made, cheapest first: the pages of
slots given back already are punched out (a given-back slot keeps its pages for the next log
otherwise), then finished execs are released oldest first (if that alone makes the room), then,
with `trim` (the default), the running logs holding the most output are trimmed to their head and
tail as `--max-exec-output` does. A log that still finds no room is held back (its child waits on
its pipe) until a tick finds room again. With `block` that is all the router does to running
execs; once an exec's leader exits, though, its log is trimmed as with `trim`, so that it can
finish. The reserve is for logs holding little output: they may take it while the others wait,
so a small exec's output always finds room. The condition is logged once when it starts and once
when it ends (`full`). Loop thread only, but `full` may be read from any thread.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from router._fastio import SegmentedLog, SegmentStore

from .loop import LoopThread

if TYPE_CHECKING:
    from .output import OutputPipes

logger = logging.getLogger(__name__)

OnLogFull = Literal["trim", "block"]
KiB, MiB = 1024, 1024 * 1024
# One drain call takes at most this much from one pipe, so that one loud exec cannot starve the rest.
DRAIN_BUDGET = 4 * MiB
# A log holding more than a little output drains only when at least this much room is left.
MIN_DRAIN = 64 * KiB
# The reserve: a sixteenth of the filesystem, within these bounds; a log holding less than an
# eighth of it (at most SMALL_LOG_MAX) may take it.
RESERVE_MIN, RESERVE_MAX, SMALL_LOG_MAX = 256 * KiB, 256 * MiB, 1 * MiB
# Segments on a small filesystem: at least this many fit, none smaller than MIN_SEGMENT, so that a
# trim to head and tail leaves room for others.
SEGMENTS_PER_FS, MIN_SEGMENT = 64, 64 * KiB
# The segment size the arenas of a log directory were laid out with (deleted with them).
SEGMENT_SIZE_FILE = "arena-segment-size"
# While full: how often held-back logs are offered room again, and how long without a need to
# make room before the condition ends.
TICK_SECS, CALM_SECS = 0.25, 2.0
# Free space is looked at again after this long even while the estimate shows plenty.
REFRESH_SECS = 1.0


def segment_size_for(log_dir: pathlib.Path, configured: int) -> int:
    """The segment size for `log_dir`: the one its arenas were laid out with, else `configured`
    halved until SEGMENTS_PER_FS segments fit the filesystem (at least MIN_SEGMENT), recorded."""
    path = log_dir / SEGMENT_SIZE_FILE
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        pass
    if any(log_dir.glob("arena-0*")):
        return configured  # laid out before sizes were recorded: with the configured one
    fs = os.statvfs(log_dir)
    size = configured
    while size > MIN_SEGMENT and size * SEGMENTS_PER_FS > fs.f_blocks * fs.f_frsize:
        size //= 2
    path.write_text(f"{size}\n")
    return size


def trim(log: SegmentedLog, keep: int) -> int:
    """Keep the head segment and the latest output, `keep` bytes at most in all (never less than
    the tail's own segment); release the segments between. The bytes newly released."""
    seg = log.segment_size
    # The fewest segments released for head + rest <= keep (ceil), never the tail's own segment.
    stop = min(-(-(log.committed - keep + seg) // seg), log.committed // seg)
    if stop > max(1, log.released_range[1] // seg):
        return int(log.release(1, stop))
    return 0


class LogSpace:
    """The log directory's filesystem: the store on it (`open_store`, at start) and room for logs."""

    def __init__(self, log_dir: pathlib.Path, loop: LoopThread, policy: OnLogFull,
                 finished_bytes: Callable[[], int], release_finished: Callable[[int], None],
                 commit: Callable[[], None]) -> None:
        self._log_dir = str(log_dir)
        self._store: SegmentStore | None = None
        self._loop = loop
        self._policy = policy
        self._finished_bytes = finished_bytes
        self._release_finished = release_finished  # oldest first, until this many bytes are released
        # Journal the releases made so far: only then are their slots free to punch or hand out.
        self._commit = commit
        self.reserve = self.small_log = 0  # known once the store is open
        self._pipes: set[OutputPipes] = set()  # draining now
        self._held: set[OutputPipes] = set()  # with a log held back
        self._free = 0  # bytes free as last seen, less what was written since
        self._seen_at = -REFRESH_SECS
        self._pressed_at = 0.0  # when room was last made
        self.full = False

    def open_store(self, segment_size: int) -> SegmentStore:
        """The segment store of the log directory (which must exist), its segments sized to the
        filesystem (segment_size_for), and the reserve."""
        self._store = SegmentStore(self._log_dir, segment_size_for(pathlib.Path(self._log_dir), segment_size))
        fs = os.statvfs(self._log_dir)
        self.reserve = min(max(fs.f_blocks * fs.f_frsize // 16, RESERVE_MIN), RESERVE_MAX)
        self.small_log = min(self.reserve // 8, SMALL_LOG_MAX)
        return self._store

    def attach(self, pipes: OutputPipes) -> None:
        self._pipes.add(pipes)

    def detach(self, pipes: OutputPipes) -> None:
        self._pipes.discard(pipes)
        self._held.discard(pipes)

    def held(self, pipes: OutputPipes) -> None:
        """`pipes` held a log back: offered room again at the next tick."""
        self._held.add(pipes)
        self._press()

    # -- budget ---------------------------------------------------------------------------------

    def budget(self, log: SegmentedLog) -> int:
        """Bytes `log` may drain now; 0: hold it back until room returns."""
        room = self._room()
        if room >= DRAIN_BUDGET:
            return DRAIN_BUDGET
        if room < MIN_DRAIN:
            room = self._make_room(log)
        if room >= MIN_DRAIN:
            return min(room, DRAIN_BUDGET)
        return max(self.small_log - log.held_bytes, 0)  # the reserve, for a log with little output

    def wrote(self, n: int) -> None:
        self._free -= n

    def enospc(self) -> None:
        """A write failed for want of space (another writer on the filesystem, or pages beyond the
        estimate): make what room there is."""
        self._press()
        self._make_room(None)

    def _punch(self) -> None:
        assert self._store is not None, "open_store first"
        self._commit()
        self._store.punch_free()

    def _room(self, fresh: bool = False) -> int:
        now = time.monotonic()
        if fresh or self._free - self.reserve < 2 * DRAIN_BUDGET or now - self._seen_at > REFRESH_SECS:
            fs = os.statvfs(self._log_dir)
            self._free, self._seen_at = fs.f_bavail * fs.f_frsize, now
        return self._free - self.reserve

    # -- making room ----------------------------------------------------------------------------

    def _make_room(self, log: SegmentedLog | None) -> int:
        """Room for the logs holding more than a little output, cheapest first (module docstring)."""
        self._press()
        self._punch()
        room = self._room(fresh=True)
        need = self.reserve - room  # room for the reserve again: twice the reserve free
        if need <= 0:
            return room
        small = log is not None and log.held_bytes < self.small_log
        if self._finished_bytes() >= need or (small and room < 0):
            self._release_finished(need)
            self._punch()
            room = self._room(fresh=True)
            if room >= MIN_DRAIN:
                return room  # finished execs made the room: running ones keep all they hold
        return self._trim_largest()

    def _trim_largest(self) -> int:
        """Trim the logs holding the most output until there is room; with `block`, only those of
        execs whose leader exited (nothing is left to hold back, and their rest must go somewhere)."""
        logs = sorted(((log, pipes) for pipes in self._pipes for log in pipes.draining()
                       if self._policy == "trim" or pipes.leader_gone),
                      key=lambda entry: entry[0].held_bytes, reverse=True)
        room = self._room()
        for log, pipes in logs:
            if trim(log, 3 * log.segment_size):  # as --max-exec-output at its least
                pipes.changed()  # readers learn of it, and so does the journal
                self._punch()
                room = self._room(fresh=True)
                if room >= self.reserve:
                    break
        return room

    # -- the condition --------------------------------------------------------------------------

    def _press(self) -> None:
        self._pressed_at = time.monotonic()
        if not self.full:
            self.full = True
            action = ("trimming the running execs holding the most output to head and tail" if self._policy == "trim"
                      else "holding back the largest writers")
            logger.warning("the log filesystem of %s is full (%d bytes free, %d kept for small outputs): releasing "
                           "finished execs' output, %s (--on-log-full %s)", self._log_dir, max(self._free, 0),
                           self.reserve, action, self._policy,
                           extra={"event": "log_filesystem_full", "free_bytes": max(self._free, 0)})
            self._loop.loop.call_later(TICK_SECS, self._tick)

    def _tick(self) -> None:
        """While full: offer held-back logs room again; end the condition once calm."""
        held, self._held = self._held, set()
        if held and self._room(fresh=True) < MIN_DRAIN:
            self._make_room(None)
        for pipes in held:
            pipes.resume_held()  # each asks for a budget again when it is readable
        if held or time.monotonic() - self._pressed_at < CALM_SECS:
            self._loop.loop.call_later(TICK_SECS, self._tick)
            return
        self.full = False
        free = self._room(fresh=True) + self.reserve
        logger.info("the log filesystem of %s has room again (%d bytes free)", self._log_dir, free,
                    extra={"event": "log_filesystem_room", "free_bytes": free})


def remove_arenas(log_dir: pathlib.Path) -> None:
    """Delete the arena files, and nothing else: the log directory may be shared (--log-dir)."""
    for path in log_dir.glob("arena-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
