"""Segmented append-only logs in shared arena files, and spawning without the GIL.

tests/helpers/reference_log.py is the logs' pure-Python twin, the test oracle."""

from collections.abc import Iterable
from os import PathLike
from typing import SupportsIndex

from typing_extensions import Buffer  # collections.abc.Buffer needs 3.12

def counters() -> dict[str, int]:
    """This module's live objects and calls in flight, exact (for leak checks):

    open_stores: stores initialised and not closed (close() or dealloc counts one down once);
    open_logs: logs initialised and not closed (likewise);
    syscalls_in_flight: calls inside a pread/pwrite on any store right now;
    slots_in_use: slots handed to logs and not given back yet;
    scratch_buffers: drain buffers allocated (each store's own, and temporary ones).
    """

class OffsetReleased(LookupError):
    """read()/read_frame() at an offset inside a log's released range (see SegmentedLog.release).
    `first_held` (also in the message) is the first offset after the gap the log still holds."""

    offset: int
    first_held: int
    def __init__(self, offset: int, first_held: int) -> None: ...


class SegmentStore:
    """Fixed-size segment slots in sparse files `arena-00000000`, ... of `directory`, whose
    descriptors it keeps open (one per `slots_per_file` slots). Slot s lives in arena
    s // slots_per_file at byte (s % slots_per_file) * segment_size. Slots that closed logs give
    back are handed out again (last given back first) before a new one is made.

    Arena files already in `directory` (a previous run's) are opened when needed and never
    truncated: a new store starts in its restore phase, where SegmentedLog.restore() claims the
    slots a journal says logs hold, until finish_restore() (or the first allocation) frees the rest."""

    def __init__(self, directory: str | PathLike[str], segment_size: int = 33554432,
                 slots_per_file: int = 1024) -> None:
        """`directory` must exist; `segment_size` a positive multiple of the page size (else ValueError)."""

    @property
    def segment_size(self) -> int: ...
    @property
    def slots_used(self) -> int:
        """Slots made so far (the arenas' extent); it grows only when no given-back slot is free."""

    @property
    def closed(self) -> bool: ...
    def punch_free(self) -> int:
        """Punch a hole over every slot given back since the last call, so that its pages go back to
        the filesystem (a full one needs them more than the next log does). How many were punched;
        0 where holes cannot be punched. ValueError once closed."""

    def sync(self) -> None:
        """fdatasync(2) every arena file open (output survives a power cut)."""
    def hold_freed(self) -> None:
        """From now on a slot given back is neither handed out again nor punched until
        recycle_held() lets it go (once the journal records who gave it up)."""
    @property
    def held_slots(self) -> int: ...
    def recycle_held(self, n: int) -> None:
        """Let the `n` oldest held slots be handed out again."""

    def finish_restore(self) -> None:
        """End of startup: every slot below slots_used that no restored log holds goes on the free
        list (lowest handed out first), to be reused. The first allocation does this by itself.
        RuntimeError if the restore phase is over already (a second call, or after an allocation);
        ValueError once closed."""

    def close(self) -> None:
        """Idempotent. Descriptors close once no call is inside a pread/pwrite on them, the drain
        buffer once no drain holds it; files stay. The store's logs can no longer read, append or
        drain (ValueError); closing them still gives their slots back."""


class SegmentedLog:
    """Append-only byte log whose segments are slots of a SegmentStore.

    Single writer (append/drain/mark_eof), any number of reader threads
    (read/read_frame); close() may come from any thread.
    """

    def __init__(self, store: SegmentStore) -> None: ...
    @classmethod
    def restore(cls, store: SegmentStore, slots: Iterable[SupportsIndex], committed: int, eof: bool) -> SegmentedLog:
        """A log as a journal recorded it (`segments`, `committed`, `eof`) before a restart, on a new
        store over the same directory: segment i lives in slots[i]; -1 entries (one contiguous run)
        become the released range. The slots are claimed (in use, their arena files opened,
        slots_used grows to cover them).

        RuntimeError once the store's restore phase is over (finish_restore() or any allocation);
        ValueError, with nothing claimed, when the store is closed, committed < 0, a slot is < -1
        or has no arena file ("out of range"), is listed twice or already claimed, its arena file
        is too short for the segment's committed bytes, len(slots) does not fit committed (it must
        be ceil(committed / segment_size), or committed // segment_size + 1 when the tail segment
        has a slot but no byte yet), or the -1 entries are not one run below the tail segment.
        """

    @property
    def store(self) -> SegmentStore: ...
    @property
    def segments(self) -> list[int]:
        """The store slots holding this log's segments, in order, -1 for released ones; [] once
        closed and given back."""

    @property
    def released_range(self) -> tuple[int, int]:
        """Byte offsets [start, end) that release() released; (0, 0) if none."""

    @property
    def held_bytes(self) -> int:
        """committed minus the released bytes."""

    @property
    def committed(self) -> int:
        """Bytes readers may trust; only grows."""

    @property
    def segment_size(self) -> int: ...
    @property
    def eof(self) -> bool:
        """True once mark_eof() was called or drain() saw EOF (or EIO)."""

    @property
    def closed(self) -> bool: ...
    @property
    def readers(self) -> int:
        """Calls inside read()/read_frame() right now (they run with the GIL released in pread)."""

    def append(self, data: Buffer) -> None:
        """Copy a contiguous bytes-like object into the tail. ValueError after EOF or close."""

    def drain(self, fd: int, budget: int = 4194304) -> tuple[int, bool]:
        """splice() a pipe into the tail segment; any other fd (a pty) is readv()ed into the store's
        drain buffer and pwrite()n there. A pipe never takes a slot before it has bytes.

        Stops at EAGAIN, EOF (EIO counts as EOF) or once at least `budget`
        bytes were read in this call. Returns (bytes read by this call, eof).
        Returns (0, True) at once if EOF was already seen. ValueError if the
        log or its store is closed, before anything is read from fd.
        """

    def mark_eof(self) -> None: ...
    def release(self, start_segment: int, stop_segment: int) -> int:
        """Release segments [start_segment, stop_segment) of a running log (the per-exec output cap).

        Returns the bytes newly released. From now on reads there raise OffsetReleased; the slots
        go back to the store (to be reused by any log) once no read/read_frame is inside this log:
        at once, or when the last reader leaves. Only whole segments below the tail segment
        (stop_segment <= committed // segment_size). A log has one released range: the first
        non-empty call fixes its start, later ones must start inside it or at its end and may
        extend its end. An empty range (start == stop) does nothing and returns 0. ValueError
        otherwise (negative or reversed bounds, reaching the tail, non-contiguous, closed log).
        """

    def read(self, offset: int, max_len: int) -> bytes:
        """Committed bytes [offset, min(offset + max_len, committed)).

        offset == committed gives b""; offset > committed or negative
        arguments, or a closed log, raise ValueError. An offset inside the
        released range raises OffsetReleased; a read starting before it stops
        at its start.
        """

    def read_frame(self, offset: int, max_len: int) -> bytes:
        """Like read(), wrapped as protobuf `bytes data = 1` (b"\\x0a" + varint(n) + data); b"" when n == 0."""

    def close(self) -> None:
        """Idempotent; later calls raise ValueError. The slots go back to the store (to be reused,
        overwritten) once no read/read_frame nor the writer is inside: at once, or when the last
        one leaves. A log dropped unclosed gives them back too."""


SPAWN_DEVNULL: int  # an output descriptor for spawn(): /dev/null
SPAWN_STDOUT: int   # stderr for spawn(): the same as stdout
SPAWN_PIPE: int     # a descriptor for spawn(): a new pipe (SPAWN_DEVNULL: /dev/null, for stdin too)

def spawn(path: bytes, argv: list[bytes], envp: list[bytes], stdin_fd: int, stdout_fd: int, stderr_fd: int,
          search_path: bool = False, pipe_size: int = 0, cwd_fd: int = -1,
          own_group: bool = True, pid_fd: int = -1) -> tuple[int, int, int, int, int]:
    """posix_spawn(3) (posix_spawnp(3) with `search_path`) in a process group of its own (unless
    not `own_group`), in the directory `cwd_fd` refers to (unless -1), every signal at its default
    disposition and none blocked, stdio dup2()ed from the descriptors given or new pipes
    (SPAWN_PIPE, SPAWN_DEVNULL, SPAWN_STDOUT as in subprocess; output pipes of `pipe_size` where
    allowed). Returns (pid, pidfd, stdin, stdout, stderr): the router's ends of
    the pipes, -1 for the others; the child's ends are closed. The GIL is released throughout.
    OSError with `filename` if the program could not run, without if no process could start;
    nothing is left open or running."""

# Calls that never block, made with the GIL held (the loop thread's).
def epoll_watch(epfd: int, fd: int, add: bool) -> None:
    """epoll_ctl ADD (EPOLLIN, level-triggered) or DEL of fd; OSError as the call's."""

def close_now(fd: int) -> None:
    """close(2); OSError as the call's (EINTR counts as closed)."""

def exit_status(pidfd: int) -> tuple[bool, int] | None:
    """waitid(P_PIDFD, WNOHANG | WNOWAIT): None while it runs, else (True, code) or (False, signal)."""

def reap(pid: int) -> tuple[float, float, int] | None:
    """wait4(pid, WNOHANG): None while it runs, else (user CPU s, system CPU s, peak RSS bytes)."""

def reserve_space(fd: int, offset: int, length: int) -> None:
    """fallocate(2) KEEP_SIZE: blocks for [offset, offset + length) of `fd` allocated, its size
    unchanged; OSError (ENOSPC) if the filesystem has not that much free."""
