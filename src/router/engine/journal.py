"""The exec journal: an append-only file of exec records that a restarted router replays.

The router must survive `kill -9`. Every change to an exec that a client can observe after a
restart (it began, its leader's pid, which arena slots hold its output, how much stdin went in,
how it ended, that it was released) is appended here as a small record, so that on restart
`Journal.open` rebuilds the finished execs (pollable, readable) and the started ones (a repeated
TaskExecStart with the same id and request runs nothing). The records and their framing:
journal_format.py.

Durability: `flush()` hands the records to the kernel with one write and no fsync; the page cache
survives the death of the process, which is what this journal is for. `flush(fsync=True)` (and
`close()`) also survive the machine's.

Threads: `append` may be called from any thread (it takes a lock and buffers the record);
`flush`, `compact` and `close` serialize among themselves.
"""
from __future__ import annotations

import errno
import os
import pathlib
import threading
import zlib
from collections.abc import Iterable
from typing import Final

from router import _fastio

from .journal_format import (
    ENCODER,
    FRAME,
    HEADER,
    MAX_RECORD,
    JournalState,
    Record,
    RecordTooLarge,
    parse,
)

# Automatic compaction: rewrite once the file is over max(COMPACT_MIN, COMPACT_RATIO x live size).
COMPACT_MIN: Final = 1 << 20
COMPACT_RATIO: Final = 4.0


class Journal:
    """The journal open for appending. Make one with `Journal.open`."""

    def __init__(self, path: pathlib.Path, fd: int, size: int, state: JournalState, *,
                 compact_min: int, compact_ratio: float, auto_compact: bool) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._fd = fd
        self._size = size  # where the next record goes: the end of the last whole record
        self._state = state  # the merge of every record written (not of those still buffered)
        self._buffer: list[Record] = []
        self._lock = threading.Lock()  # guards _buffer
        self._io_lock = threading.Lock()  # serializes flush, compact, close
        self._closed = False
        self._torn = False  # a failed write may have left bytes past _size
        self._compact_min = compact_min
        self._compact_ratio = compact_ratio
        self._auto_compact = auto_compact
        self._threshold = compact_min
        self._reserved_fd, self._reserved_end = -1, 0  # blocks allocated up to there (reserve())
        self.compactions = 0
        # Why the last automatic compaction failed (it is retried once the file grows further).
        self.compaction_error: OSError | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, compact_min: int = COMPACT_MIN,
             compact_ratio: float = COMPACT_RATIO, auto_compact: bool = True) -> tuple[Journal, JournalState]:
        """Replay the journal at `path` (creating it, mode 0600, if missing), cut off a torn tail,
        and open it for appending. Returns the journal and the replayed state, which is the
        caller's: the journal keeps its own copy. Raises JournalError if `path` is not a journal."""
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a compaction that a crash interrupted: the journal is intact
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            data = _read_all(fd)
            state = parse(data)
            if state.valid_length < len(HEADER):
                os.ftruncate(fd, 0)
                _pwrite_all(fd, HEADER, 0)
                size = len(HEADER)
                _fsync_dir(path.parent)  # so that flush(fsync=True) finds the file after a power cut
            else:
                size = state.valid_length
                if size < len(data):
                    os.ftruncate(fd, size)
            journal = cls(path, fd, size, state.copy(), compact_min=compact_min,
                          compact_ratio=compact_ratio, auto_compact=auto_compact)
        except BaseException:
            os.close(fd)
            raise
        return journal, state

    @property
    def size(self) -> int:
        """The file's length: header and every record flushed."""
        return self._size

    @property
    def pending(self) -> int:
        """Records appended and not yet flushed."""
        with self._lock:
            return len(self._buffer)

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, record: Record) -> None:
        """Buffer one record for the next flush. No system call; any thread."""
        with self._lock:
            if self._closed:
                raise ValueError("journal is closed")
            self._buffer.append(record)

    def flush(self, *, fsync: bool = False) -> int:
        """Write every buffered record with one write (fsync too if asked); return the bytes written.
        If the write fails (OSError, e.g. ENOSPC) the records stay buffered for the next flush and
        the file keeps only whole records. Then, if the file has outgrown its live state,
        compact it (a failure there is kept in `compaction_error`, not raised)."""
        with self._io_lock:
            self._check_open()
            written = self._flush_locked(fsync)
            if self._auto_compact and self._size > self._threshold:
                self._auto_compact_locked()
            return written

    def compact(self, live: Iterable[Record] | None = None) -> int:
        """Flush, then rewrite the journal as its live state, the fewest records that replay to it:
        into `<path>.tmp`, fsync, rename over the journal. `live`, if given, is that state as the
        caller knows it (it must include every record appended so far). Returns the new size."""
        with self._io_lock:
            self._check_open()
            self._flush_locked(False)
            if live is None:
                state = self._state
            else:
                state = JournalState()
                for record in live:
                    state.apply(record)
            self._rewrite(state, self._encode(list(state.records())), fsync=True)
            return self._size

    def close(self, *, fsync: bool = True) -> None:
        """Flush (and fsync) what is buffered and close the file. The descriptor is closed even if
        that write fails (its OSError propagates, and those records are lost). Idempotent."""
        with self._io_lock:
            if self._closed:
                return
            with self._lock:
                self._closed = True  # no appends from here on
            try:
                self._flush_locked(fsync)
            finally:
                os.close(self._fd)
                self._fd = -1

    def sync(self) -> None:
        """fdatasync(2) the file: every record flushed so far survives a power cut."""
        with self._io_lock:
            self._check_open()
            os.fdatasync(self._fd)

    def reserve(self, ahead: int) -> bool:
        """Have the blocks of the next `ahead` bytes allocated (the file's size unchanged), so that
        that many bytes of records can be written whatever else fills the filesystem; False if it
        has not that much free. Allocates twice `ahead` at a time, so most calls make no call."""
        with self._io_lock:
            self._check_open()
            if self._reserved_fd != self._fd:  # a compaction put a new file in place
                self._reserved_fd, self._reserved_end = self._fd, 0
            if self._size + ahead <= self._reserved_end:
                return True
            try:
                _fastio.reserve_space(self._fd, self._size, 2 * ahead)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return False
            self._reserved_end = self._size + 2 * ahead
            return True

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (with _io_lock held) ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("journal is closed")

    def _flush_locked(self, fsync: bool) -> int:
        with self._lock:
            batch, self._buffer = self._buffer, []
        written = 0
        if batch:
            try:
                data = self._encode(batch)
                if self._torn:
                    os.ftruncate(self._fd, self._size)
                    self._torn = False
                self._write(data)
            except BaseException:
                with self._lock:
                    self._buffer[:0] = batch
                raise
            self._size += len(data)
            apply = self._state.apply
            for record in batch:
                apply(record)
            written = len(data)
        if fsync:
            os.fsync(self._fd)
        return written

    def _encode(self, batch: list[Record]) -> bytes:
        """Frame every record into one buffer. A record over MAX_RECORD is removed from `batch`
        and RecordTooLarge raised (the caller puts the rest back)."""
        parts: list[bytes] = []
        add, encode, pack, crc32, limit = parts.append, ENCODER.encode, FRAME.pack, zlib.crc32, MAX_RECORD
        for i, record in enumerate(batch):
            payload = encode(record)
            if len(payload) > limit:
                del batch[i]
                raise RecordTooLarge(f"{type(record).__name__} of exec {record.exec_id!r} encodes to "
                                     f"{len(payload)} bytes (at most {limit})")
            add(pack(len(payload), crc32(payload)))
            add(payload)
        return b"".join(parts)

    def _write(self, data: bytes) -> None:
        """Write `data` at the end of the last whole record, looping on short writes. If that
        fails, cut the file back so it ends with a whole record, and raise."""
        try:
            _pwrite_all(self._fd, data, self._size)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._torn = True  # retried before the next write
            raise

    def _auto_compact_locked(self) -> None:
        """The file passed its threshold: compact if it is over COMPACT_RATIO x the live state,
        else raise the threshold to that."""
        data = self._encode(list(self._state.records()))
        live = len(HEADER) + len(data)
        if self._size <= self._compact_ratio * live:
            self._threshold = max(self._compact_min, int(self._compact_ratio * live))
            return
        try:
            # No fsync: this runs on the router's event loop, and surviving a crash of the router
            # needs only the page cache (close() and compact() fsync for a clean stop).
            self._rewrite(self._state, data, fsync=False)
        except OSError as e:
            self.compaction_error = e
            self._threshold = self._size + self._compact_min  # try again after some growth
        else:
            self.compaction_error = None

    def _rewrite(self, state: JournalState, records: bytes, fsync: bool) -> None:
        fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _pwrite_all(fd, HEADER + records, 0)
            if fsync:
                os.fsync(fd)
            os.replace(self._tmp, self.path)
        except BaseException:
            os.close(fd)
            self._tmp.unlink(missing_ok=True)
            raise
        old, self._fd = self._fd, fd
        os.close(old)
        if fsync:
            _fsync_dir(self.path.parent)
        self._size = len(HEADER) + len(records)
        self._torn = False
        self._state = state
        self._threshold = max(self._compact_min, int(self._compact_ratio * self._size))
        self.compactions += 1


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(data):
            n = os.pwrite(fd, view[done:], offset + done)
            if n == 0:
                raise OSError(28, "no space left on device (wrote nothing)")
            done += n


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename in `directory` durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
