"""Segmented append-only logs in shared arena files (see router.pylog for the pure-Python twin)."""

from typing_extensions import Buffer  # collections.abc.Buffer needs 3.12
from os import PathLike

def counters() -> dict[str, int]:
    """This module's live objects and calls in flight, exact (for leak checks):

    open_stores: stores initialised and not closed (close() or dealloc counts one down once);
    open_logs: logs initialised and not closed (likewise);
    syscalls_in_flight: calls inside a pread/pwrite on any store right now;
    slots_in_use: slots handed to logs and not given back yet;
    scratch_buffers: drain buffers allocated (each store's own, and temporary ones).
    """

class SegmentStore:
    """Fixed-size segment slots in sparse files `arena-00000000`, ... of `directory`, whose
    descriptors it keeps open (one per `slots_per_file` slots). Slot s lives in arena
    s // slots_per_file at byte (s % slots_per_file) * segment_size. Slots that closed logs give
    back are handed out again (last given back first) before a new one is made."""

    def __init__(self, directory: str | PathLike[str], segment_size: int = 33554432, slots_per_file: int = 1024) -> None:
        """`directory` must exist; `segment_size` a positive multiple of the page size (else ValueError)."""

    @property
    def segment_size(self) -> int: ...
    @property
    def slots_used(self) -> int:
        """Slots made so far (the arenas' extent); it grows only when no given-back slot is free."""

    @property
    def closed(self) -> bool: ...
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
    @property
    def store(self) -> SegmentStore: ...
    @property
    def segments(self) -> list[int]:
        """The store slots holding this log's segments, in order; [] once closed and given back."""

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
        """readv() a non-blocking fd into the store's drain buffer and pwrite() it to the tail segment.

        Stops at EAGAIN, EOF (EIO counts as EOF) or once at least `budget`
        bytes were read in this call. Returns (bytes read by this call, eof).
        Returns (0, True) at once if EOF was already seen. ValueError if the
        log or its store is closed, before anything is read from fd.
        """

    def mark_eof(self) -> None: ...
    def read(self, offset: int, max_len: int) -> bytes:
        """Committed bytes [offset, min(offset + max_len, committed)).

        offset == committed gives b""; offset > committed or negative
        arguments, or a closed log, raise ValueError.
        """

    def read_frame(self, offset: int, max_len: int) -> bytes:
        """Like read(), wrapped as protobuf `bytes data = 1` (b"\\x0a" + varint(n) + data); b"" when n == 0."""

    def close(self) -> None:
        """Idempotent; later calls raise ValueError. The slots go back to the store (to be reused,
        overwritten) once no read/read_frame nor the writer is inside: at once, or when the last
        one leaves. A log dropped unclosed gives them back too."""
