"""Segmented append-only logs in shared arena files (see router.pylog for the pure-Python twin)."""

from typing_extensions import Buffer  # collections.abc.Buffer needs 3.12
from os import PathLike

class SegmentStore:
    """Fixed-size segment slots in sparse files `arena-00000000`, ... of `directory`, whose
    descriptors it keeps open (one per `slots_per_file` slots). Slot s lives in arena
    s // slots_per_file at byte (s % slots_per_file) * segment_size."""

    def __init__(self, directory: str | PathLike[str], segment_size: int = 33554432, slots_per_file: int = 1024) -> None:
        """`directory` must exist; `segment_size` a positive multiple of the page size (else ValueError)."""

    @property
    def segment_size(self) -> int: ...
    @property
    def slots_used(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Idempotent. Descriptors close once no call is inside a syscall on them; files stay."""


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
        """The store slots holding this log's segments, in order."""

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
    def append(self, data: Buffer) -> None:
        """Copy a contiguous bytes-like object into the tail. ValueError after EOF or close."""

    def drain(self, fd: int, budget: int = 4194304) -> tuple[int, bool]:
        """readv() a non-blocking fd into a reused buffer and pwrite() it to the tail segment.

        Stops at EAGAIN, EOF (EIO counts as EOF) or once at least `budget`
        bytes were read in this call. Returns (bytes read by this call, eof).
        Returns (0, True) at once if EOF was already seen.
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
        """Idempotent; later calls raise ValueError. The bytes stay in the store."""
