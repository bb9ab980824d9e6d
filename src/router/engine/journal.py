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

Compaction: once the file has outgrown its live state, `flush` starts a rewrite of it on a thread
of its own and goes on appending meanwhile (an encode of 100,000 execs' records takes a third of a
second, too long for the event loop that flushes). That thread writes the live state, as the
journal's state holds it from the moment it starts, into `<path>.tmp` a slice of execs at a time,
pausing between slices so that the loop thread, waiting for the GIL, gets it at once; writes it
back (fdatasync); then copies the records flushed since it started, byte for byte, and renames the
file over the journal under the io lock (records flushed meanwhile go to the old file and are copied
too). A crash at any moment leaves the old journal or the new one; `open` removes a stale `.tmp`.
A full disk (ENOSPC) leaves the old journal in use: `compaction_error` says why, and it is tried
again once the file has grown by COMPACT_MIN. The snapshot is not a copy:
an exec may be written with records flushed after the start already merged, which the copied
records then merge again, to the same state (each record sets what it sets, Begun starts an exec
afresh, Forgotten ends it), so a replay of a file compacted in the background may count orphans
and replaced execs.

Threads: `append` may be called from any thread (it takes a lock and buffers the record);
`flush`, `compact` and `close` serialize among themselves; `compact` and `close` first cancel a
compaction in flight and wait for its thread.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Final

from router import _fastio

from .journal_files import copy_range, fsync_dir, pwrite_all, read_all, release
from .journal_format import (
    ENCODER,
    FRAME,
    HEADER,
    MAX_RECORD,
    JournaledExec,
    JournalState,
    Record,
    RecordTooLarge,
    parse,
)

# Automatic compaction: rewrite once the file is over max(COMPACT_MIN, COMPACT_RATIO x live size).
COMPACT_MIN: Final = 1 << 20
COMPACT_RATIO: Final = 4.0
# A compaction encodes this many execs at a time (about 0.2 ms with the GIL held, for finished
# execs), then sleeps COMPACT_PAUSE times as long as that took: the loop thread, waiting for the
# GIL, gets it within a slice, and the compaction holds the GIL a tenth of the time at most,
# however loaded the machine (a thread holding the GIL can be preempted, stalling every other).
# 100,000 finished execs take about 3 s (benchmarks/tools/loop_stall.py).
COMPACT_SLICE: Final = 100
COMPACT_PAUSE: Final = 9.0
# A compaction catches up with the records flushed while it ran until fewer bytes than this are
# left, then copies the rest with the io lock held (flushes wait for that copy and the rename).
CATCH_UP: Final = 64 << 10


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
        self._lock = threading.Lock()  # guards _buffer and _appended
        self._appended = self._written = 0  # records appended, and written (numbered as append says)
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
        # The automatic compaction in flight: its thread and what cancels it.
        self._compaction: tuple[threading.Thread, threading.Event] | None = None
        self._fsync_asked = False  # flush(fsync=True) or sync() ran while it was in flight: it fsyncs too

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
            data = read_all(fd)
            state = parse(data)
            if state.valid_length < len(HEADER):
                os.ftruncate(fd, 0)
                pwrite_all(fd, HEADER, 0)
                size = len(HEADER)
                fsync_dir(path.parent)  # so that flush(fsync=True) finds the file after a power cut
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

    @property
    def compacting(self) -> bool:
        """An automatic compaction is in flight."""
        return self._compaction is not None

    def append(self, record: Record) -> int:
        """Buffer one record for the next flush; returns its number (see `written_through`). No
        system call; any thread."""
        with self._lock:
            if self._closed:
                raise ValueError("journal is closed")
            self._buffer.append(record)
            self._appended += 1
            return self._appended

    def written_through(self, number: int) -> None:
        """Return once the record `append` numbered `number` is written: at once if a flush did
        already (as one almost always has), else by flushing now. OSError as flush's."""
        if self._written < number:
            self.flush()

    def flush(self, *, fsync: bool = False) -> int:
        """Write every buffered record with one write (fsync too if asked); return the bytes written.
        If the write fails (OSError, e.g. ENOSPC) the records stay buffered for the next flush and
        the file keeps only whole records. Then, if the file has passed its threshold, start a
        compaction in the background (a failure there is kept in `compaction_error`, not raised)."""
        with self._io_lock:
            self._check_open()
            written = self._flush_locked(fsync)
            if self._compaction is not None:
                self._fsync_asked |= fsync
            elif self._auto_compact and self._size > self._threshold:
                cancel = threading.Event()
                thread = threading.Thread(target=self._compact_in_background, args=(cancel,),
                                          name="journal-compaction", daemon=True)
                self._compaction = (thread, cancel)
                self._fsync_asked = fsync  # the records just fsynced are copied too
                thread.start()
            return written

    def compact(self, live: Iterable[Record] | None = None) -> int:
        """Flush, then rewrite the journal as its live state, the fewest records that replay to it:
        into `<path>.tmp`, fsync, rename over the journal. `live`, if given, is that state as the
        caller knows it (it must include every record appended so far). Returns the new size.
        An automatic compaction in flight is cancelled first."""
        with self._quiesced():
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
        that write fails (its OSError propagates, and those records are lost). An automatic
        compaction in flight is cancelled (and its thread waited for) first. Idempotent."""
        with self._quiesced():
            if self._closed:
                return
            with self._lock:
                self._closed = True  # no appends from here on
            try:
                self._flush_locked(fsync)
            finally:
                os.close(self._fd)
                self._fd = -1

    def settle(self) -> None:
        """Cancel a compaction in flight and wait for its thread (another process opens the file next)."""
        with self._quiesced():
            pass

    def sync(self) -> None:
        """fdatasync(2) the file: every record flushed so far survives a power cut."""
        with self._io_lock:
            self._check_open()
            os.fdatasync(self._fd)
            if self._compaction is not None:
                self._fsync_asked = True  # its new file takes these records: it is synced too

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

    @contextlib.contextmanager
    def _quiesced(self) -> Iterator[None]:
        """Hold _io_lock with no compaction in flight: cancel one and wait for its thread."""
        while True:
            with self._io_lock:
                running = self._compaction
                if running is None:
                    yield
                    return
            thread, cancel = running
            cancel.set()
            thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("journal is closed")

    def _flush_locked(self, fsync: bool) -> int:
        with self._lock:
            batch, self._buffer = self._buffer, []
            upto = self._appended
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
        self._written = upto
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
            pwrite_all(self._fd, data, self._size)
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._torn = True  # retried before the next write
            raise

    def _rewrite(self, state: JournalState, records: bytes, fsync: bool) -> None:
        fd = self._open_tmp()
        try:
            size = len(HEADER) + len(records)
            pwrite_all(fd, HEADER + records, 0)
            reserved = self._reserve_in(fd, size)
            if fsync:
                os.fsync(fd)
            os.replace(self._tmp, self.path)
        except BaseException:
            self._drop_tmp(fd)
            raise
        os.close(self._swap(fd, size, live=size, reserved=reserved, fsync=fsync))
        self._state = state

    def _open_tmp(self) -> int:
        return os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def _drop_tmp(self, fd: int) -> None:
        os.close(fd)
        self._tmp.unlink(missing_ok=True)

    def _reserve_in(self, fd: int, size: int) -> int:
        """Allocate in the new file at `fd` (`size` bytes long) the room that reserve() holds in
        the journal, before it takes the journal's place; returns where that room ends. Raises
        OSError (ENOSPC, say): the journal keeps its file, and its room."""
        ahead = self._reserved_end - self._size if self._reserved_fd == self._fd else 0
        if ahead > 0:
            _fastio.reserve_space(fd, size, ahead)
        return size + max(ahead, 0)

    def _swap(self, fd: int, size: int, *, live: int, reserved: int, fsync: bool) -> int:
        """The file at `fd` (`size` bytes, `live` of them the live state, blocks allocated up to
        `reserved`) was renamed over the journal: append there from now on. Returns the old
        descriptor, for the caller to close."""
        old, self._fd = self._fd, fd
        self._reserved_fd, self._reserved_end = fd, reserved
        if fsync:
            fsync_dir(self.path.parent)
        self._size = size
        self._torn = False
        self._threshold = max(self._compact_min, int(self._compact_ratio * live))
        self.compactions += 1
        return old

    # -- the automatic compaction, on a thread of its own -----------------------------------------

    def _compact_in_background(self, cancel: threading.Event) -> None:
        """Rewrite the journal as its live state if that is under 1/COMPACT_RATIO of the file, else
        raise the threshold to COMPACT_RATIO x the live state; see the module's docstring."""
        fd = old = -1
        old_size = 0
        try:
            with self._io_lock:  # the state is the merge of the records up to `start`, or later ones too
                start, execs = self._size, self._state.execs
            ids = list(execs)  # one call, so atomic: execs begun since are copied and merged again
            fd = self._open_tmp()
            live = self._write_live(fd, execs, ids, cancel)
            if live is None:
                return
            if start <= self._compact_ratio * live:
                with self._io_lock:
                    self._threshold = max(self._compact_min, int(self._compact_ratio * live))
                return
            size, copied = live, start
            # Written back now, on this thread: else the kernel writes it back later, allocating its
            # blocks while the loop's flushes append to the same file, and they wait for that.
            os.fdatasync(fd)
            while not cancel.is_set() and self._size - copied > CATCH_UP:  # bytes below _size are whole records
                end = self._size
                size += copy_range(self._fd, copied, end, fd, size)
                copied = end
            with self._io_lock:
                if cancel.is_set():
                    return
                size += copy_range(self._fd, copied, self._size, fd, size)
                reserved = self._reserve_in(fd, size)
                # The records copied last are not fsynced unless a flush asked for it: surviving a
                # crash of the router needs only the page cache (close() and compact() fsync).
                if self._fsync_asked:
                    os.fsync(fd)
                os.replace(self._tmp, self.path)
                old_size = max(self._size, self._reserved_end)
                old, fd = self._swap(fd, size, live=live, reserved=reserved, fsync=self._fsync_asked), -1
                self.compaction_error = None
        except BaseException as e:  # the journal is intact and still appended to
            with self._io_lock:
                self._threshold = self._size + self._compact_min  # try again after some growth
                if isinstance(e, OSError):
                    self.compaction_error = e
            if not isinstance(e, OSError):
                raise  # a bug: the thread's excepthook reports it
        finally:
            if fd >= 0:
                self._drop_tmp(fd)
            if old >= 0:
                fsync_dir(self.path.parent)  # the rename reaches the disk before the old file's cuts do
                release(old, old_size)  # without the lock, and a slice at a time
            with self._io_lock:
                self._compaction = None

    def _write_live(self, fd: int, execs: dict[str, JournaledExec], ids: list[str],
                    cancel: threading.Event) -> int | None:
        """Write the header, then the records of the execs `ids` still in `execs`, a slice at a
        time. Returns the file's length, or None if cancelled."""
        pwrite_all(fd, HEADER, 0)
        size = len(HEADER)
        get = execs.get
        for i in range(0, len(ids), COMPACT_SLICE):
            began = time.perf_counter()
            # No lock: the loop thread may merge records into these execs meanwhile; the copy of
            # the records flushed since the start merges them again.
            batch = [r for exec_id in ids[i:i + COMPACT_SLICE] if (ex := get(exec_id)) is not None
                     for r in ex.records()]
            data = self._encode(batch)
            pause = COMPACT_PAUSE * (time.perf_counter() - began)
            pwrite_all(fd, data, size)
            size += len(data)
            if cancel.wait(pause):  # the GIL is the loop thread's meanwhile
                return None
        return size
