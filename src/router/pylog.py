"""Pure-Python twin of `router._fastio` (the test oracle): SegmentStore, SegmentedLog, counters().

Same API and semantics, built on os.readv, os.pwrite and os.pread: segments are fixed-size slots
in shared sparse arena files; the writer reads a pipe into the store's drain buffer and writes it at
slot start + position; readers pread committed ranges. A closed log gives its slots back once no
reader (nor the writer) is inside it, and the store reuses them first. counters() keeps its own
counts, of this module's objects only.
"""

from __future__ import annotations

import errno
import mmap
import operator
import os
import sys
import threading
from typing import TYPE_CHECKING, SupportsIndex

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer needs 3.12

__all__ = ["SegmentStore", "SegmentedLog", "counters"]

_SCRATCH_SIZE = 1024 * 1024
_SSIZE_MAX = sys.maxsize

_counts = {"open_stores": 0, "open_logs": 0, "syscalls_in_flight": 0, "slots_in_use": 0, "scratch_buffers": 0}
_counts_lock = threading.Lock()


def _count(key: str, delta: int) -> None:
    with _counts_lock:
        _counts[key] += delta
        assert _counts[key] >= 0, f"{key} went negative"


def counters() -> dict[str, int]:
    """Live stores and logs, calls inside a pread/pwrite, slots held by logs (as router._fastio)."""
    with _counts_lock:
        return dict(_counts)


def _ssize(value: SupportsIndex) -> int:
    # Mirror the C version's Py_ssize_t argument conversion.
    number = operator.index(value)
    if not -_SSIZE_MAX - 1 <= number <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return number


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class SegmentStore:
    __slots__ = ("_dir", "_segsize", "_per_file", "_fds", "_next", "_free", "_users", "_scratch", "_scratch_busy",
                 "_closed", "_lock")

    def __init__(self, directory: str | os.PathLike[str], segment_size: int = 32 * 1024 * 1024, slots_per_file: int = 1024) -> None:
        segment_size = _ssize(segment_size)
        slots_per_file = _ssize(slots_per_file)
        if segment_size <= 0 or segment_size % mmap.PAGESIZE:
            raise ValueError(
                f"segment_size must be a positive multiple of the page size ({mmap.PAGESIZE}), "
                f"got {segment_size}"
            )
        if slots_per_file <= 0:
            raise ValueError(f"slots_per_file must be positive, got {slots_per_file}")
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "log directory does not exist", directory)
        self._dir = os.fsencode(directory)
        self._segsize = segment_size
        self._per_file = slots_per_file
        self._fds: list[int] = []
        self._next = 0
        self._free: list[int] = []  # slots closed logs gave back, handed out again first (LIFO)
        self._users = 0
        self._scratch: bytearray | None = None  # the drain buffer, made on first use
        self._scratch_busy = False
        self._lock = threading.Lock()  # `+=` on an attribute is not atomic across threads in Python
        self._closed = False  # last: __del__ counts the store down only if __init__ got here
        _count("open_stores", 1)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _count("open_stores", -1)
        self._close_fds()
        self._free_scratch()

    @property
    def segment_size(self) -> int:
        return self._segsize

    @property
    def slots_used(self) -> int:
        return self._next

    @property
    def closed(self) -> bool:
        return self._closed

    def _path(self, i: int) -> bytes:
        return b"%s/arena-%08d" % (self._dir, i)

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                _count("open_stores", -1)
            if self._users == 0:
                self._close_fds()
            self._free_scratch()  # unless a drain is using it: then when it gives it back

    def _take_scratch(self) -> bytearray:
        """The store's drain buffer; a drain that finds it busy gets a temporary one."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            if self._scratch_busy:
                _count("scratch_buffers", 1)
                return bytearray(_SCRATCH_SIZE)
            if self._scratch is None:
                self._scratch = bytearray(_SCRATCH_SIZE)
                _count("scratch_buffers", 1)
            self._scratch_busy = True
            return self._scratch

    def _give_scratch(self, buf: bytearray) -> None:
        with self._lock:
            if buf is self._scratch:
                self._scratch_busy = False
                if self._closed:
                    self._free_scratch()
            else:
                _count("scratch_buffers", -1)

    def _free_scratch(self) -> None:
        if self._scratch is not None and not self._scratch_busy:
            self._scratch = None
            _count("scratch_buffers", -1)

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            self._users += 1
            _count("syscalls_in_flight", 1)

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            _count("syscalls_in_flight", -1)
            if self._users == 0 and self._closed:
                self._close_fds()

    def _allocate(self) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            if self._free:
                slot = self._free.pop()
            else:
                slot = self._next
                if slot // self._per_file >= len(self._fds):
                    self._fds.append(os.open(self._path(len(self._fds)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
                self._next += 1
            _count("slots_in_use", 1)
            return slot

    def _free_slot(self, slot: int) -> None:
        with self._lock:
            assert 0 <= slot < self._next and slot not in self._free
            self._free.append(slot)
            _count("slots_in_use", -1)

    def _at(self, slot: int, pos: int) -> tuple[int, int]:
        return self._fds[slot // self._per_file], (slot % self._per_file) * self._segsize + pos

    def _pwrite(self, slot: int, data: Buffer, pos: int) -> None:
        self._enter()
        try:
            fd, at = self._at(slot, pos)
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], at + done)
        finally:
            self._leave()

    def _pread(self, slot: int, k: int, pos: int) -> list[bytes]:
        self._enter()
        try:
            fd, at = self._at(slot, pos)
            parts = []
            while k > 0:
                part = os.pread(fd, k, at)
                if not part:
                    raise OSError(errno.EIO, "committed bytes missing", os.fsdecode(self._path(slot // self._per_file)))
                parts.append(part)
                at += len(part)
                k -= len(part)
            return parts
        finally:
            self._leave()


class SegmentedLog:
    __slots__ = ("_store", "_segsize", "_slots", "_committed", "_readers", "_writers", "_eof", "_closed",
                 "_lock", "_stash")

    def __init__(self, store: SegmentStore) -> None:
        if not isinstance(store, SegmentStore):
            raise TypeError(f"store must be a SegmentStore, not {type(store).__name__}")
        self._segsize = store.segment_size
        self._slots: list[int] = []
        self._committed = 0
        self._readers = 0  # calls inside read/read_frame
        self._writers = 0  # calls inside append/drain
        self._eof = False
        self._closed = False
        self._lock = threading.Lock()
        self._stash = b""  # bytes taken from a pipe that could not be written yet
        self._store = store  # last: __del__ counts down and gives slots back only if __init__ got here
        _count("open_logs", 1)

    def __del__(self) -> None:
        if getattr(self, "_store", None) is None:
            return
        if not self._closed:
            self._closed = True
            _count("open_logs", -1)
        self._release_if_idle()  # whoever was inside held a reference: nobody is

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def segment_size(self) -> int:
        return self._segsize

    @property
    def store(self) -> SegmentStore:
        return self._store

    @property
    def segments(self) -> list[int]:
        return list(self._slots)

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readers(self) -> int:
        return self._readers

    def __repr__(self) -> str:
        return (f"<router.pylog.SegmentedLog segments={len(self._slots)} "
                f"committed={self._committed} eof={self._eof} closed={self._closed}>")

    def close(self) -> None:
        if getattr(self, "_store", None) is None:
            return  # __init__ never ran: behaves as closed (as in _fastio)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _count("open_logs", -1)
        self._release_if_idle()

    # Slots go back to the store only once no call is inside (a reader would copy another log's
    # bytes): now, or when the last one leaves.

    def _leave(self, which: str) -> None:
        with self._lock:
            setattr(self, which, getattr(self, which) - 1)
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        with self._lock:
            if not (self._closed and self._readers == 0 and self._writers == 0):
                return
            slots, self._slots = self._slots, []
        for slot in reversed(slots):  # last first: the next log gets them in this order
            self._store._free_slot(slot)

    # -- writer side ------------------------------------------------------

    def _slot(self, idx: int) -> int:
        if idx == len(self._slots):
            if self._closed:  # closed meanwhile: a slot taken now would never go back
                raise ValueError("I/O operation on closed log")
            self._slots.append(self._store._allocate())
        return self._slots[idx]

    def _write(self, data: Buffer) -> None:
        with memoryview(data) as view:
            if not view.c_contiguous:
                # Same error PyObject_GetBuffer(PyBUF_SIMPLE) gives the C version.
                raise BufferError("append needs a C-contiguous buffer")
            with view.cast("B") as src:
                done, n = 0, len(src)
                while done < n:
                    idx, pos = divmod(self._committed, self._segsize)
                    k = min(n - done, self._segsize - pos)
                    self._store._pwrite(self._slot(idx), src[done:done + k], pos)
                    self._committed += k  # publish after the bytes are in
                    done += k

    def append(self, data: Buffer) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed log")
            if self._eof:
                raise ValueError("append after EOF")
            self._writers += 1
        try:
            self._write(data)
        finally:
            self._leave("_writers")

    def mark_eof(self) -> None:
        self._eof = True

    def drain(self, fd: int, budget: int = 4 * 1024 * 1024) -> tuple[int, bool]:
        fd = operator.index(fd)
        budget = _ssize(budget)
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed log")
            if self._eof:
                return 0, True
            self._writers += 1
        try:
            return self._drain(fd, budget)
        finally:
            self._leave("_writers")

    def _drain(self, fd: int, budget: int) -> tuple[int, bool]:
        store = self._store
        scratch = store._take_scratch()  # ValueError once the store is closed: nothing read
        try:
            return self._drain_into(scratch, fd, budget)
        finally:
            store._give_scratch(scratch)

    def _drain_into(self, scratch: bytearray, fd: int, budget: int) -> tuple[int, bool]:
        if self._stash:
            before = self._committed
            try:
                self._write(self._stash)
            finally:
                self._stash = self._stash[self._committed - before:]
        drained = 0
        with memoryview(scratch) as buf:
            # Stop reading once either is closed: bytes taken from the pipe could not be written.
            while drained < budget and not self._closed and not self._store._closed:
                try:
                    n = os.readv(fd, [buf[:min(budget - drained, _SCRATCH_SIZE)]])  # retries EINTR (PEP 475)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        # pty master whose slave side is gone
                        self._eof = True
                        break
                    raise
                if n == 0:
                    self._eof = True
                    break
                before = self._committed
                try:
                    self._write(buf[:n])
                except OSError:
                    # Bytes read from a pipe exist nowhere else: keep them for the next call.
                    self._stash = bytes(buf[self._committed - before:n])
                    raise
                drained += n
        return drained, self._eof

    # -- reader side ------------------------------------------------------

    def _span(self, offset: SupportsIndex, max_len: SupportsIndex) -> int:
        offset, max_len = _ssize(offset), _ssize(max_len)
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if offset < 0 or max_len < 0:
            raise ValueError(f"offset and max_len must be >= 0, got {offset}, {max_len}")
        if offset > self._committed:
            raise ValueError(f"offset {offset} is beyond committed {self._committed}")
        return min(max_len, self._committed - offset)

    def _copy_out(self, offset: int, n: int) -> list[bytes]:
        parts = []
        while n > 0:
            idx, pos = divmod(offset, self._segsize)
            k = min(n, self._segsize - pos)
            parts += self._store._pread(self._slots[idx], k, pos)
            offset += k
            n -= k
        return parts

    def _enter_reader(self, offset: SupportsIndex, max_len: SupportsIndex) -> int:
        with self._lock:
            n = self._span(offset, max_len)
            if n:
                self._readers += 1
            return n

    def read(self, offset: int, max_len: int) -> bytes:
        n = self._enter_reader(offset, max_len)
        if n == 0:
            return b""
        try:
            return b"".join(self._copy_out(offset, n))
        finally:
            self._leave("_readers")

    def read_frame(self, offset: int, max_len: int) -> bytes:
        n = self._enter_reader(offset, max_len)
        if n == 0:
            return b""
        try:
            return b"".join([b"\x0a", _varint(n), *self._copy_out(offset, n)])
        finally:
            self._leave("_readers")
