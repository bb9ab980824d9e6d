"""Pure-Python twin of `router._fastio` (the test oracle): SegmentStore, SegmentedLog, counters().

Same API and semantics, built on os.readv, os.pwrite and os.pread: segments are fixed-size slots
in shared sparse arena files; the writer reads a pipe into the store's drain buffer and writes it at
slot start + position; readers pread committed ranges. A closed log gives its slots back once no
reader (nor the writer) is inside it, and the store reuses them first; a running log's released
range (release()) gives its slots back once no reader is inside. SegmentedLog.restore() and
SegmentStore.finish_restore() rebuild logs after a restart. counters() keeps its own counts, of this
module's objects only.
"""

from __future__ import annotations

import errno
import mmap
import operator
import os
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, SupportsIndex

# The extension's own exception: callers catch one class whichever kind of log they hold.
from router._fastio import OffsetReleased

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer needs 3.12

__all__ = ["OffsetReleased", "SegmentStore", "SegmentedLog", "counters"]

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
                 "_restoring", "_claimed", "_closed", "_lock")

    def __init__(self, directory: str | os.PathLike[str], segment_size: int = 32 * 1024 * 1024,
                 slots_per_file: int = 1024) -> None:
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
        self._fds: list[int] = []  # arena i's descriptor, -1 until first needed
        self._next = 0
        self._free: list[int] = []  # slots closed logs gave back, handed out again first (LIFO)
        self._users = 0
        self._scratch: bytearray | None = None  # the drain buffer, made on first use
        self._scratch_busy = False
        self._lock = threading.Lock()  # `+=` on an attribute is not atomic across threads in Python
        # Startup: until finish_restore() or the first allocation, logs may be restored; _claimed
        # holds the slots restored logs hold (a closed or released one leaves it).
        self._restoring = True
        self._claimed: set[int] = set()
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
            if fd >= 0:
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

    def _open_arena(self, f: int, create: bool) -> None:
        """Open arena file f unless it is open (lock held): created (sparse) if `create`, never
        truncated. Without `create` a missing file raises FileNotFoundError."""
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if f < len(self._fds) and self._fds[f] >= 0:
            return
        self._fds.extend([-1] * (f + 1 - len(self._fds)))
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self._fds[f] = os.open(self._path(f), flags, 0o600)

    def _allocate(self) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            if self._restoring:
                self._finish_restore()
            if self._free:
                slot = self._free[-1]
                self._open_arena(slot // self._per_file, True)  # a restored store opens them lazily
                self._free.pop()
            else:
                slot = self._next
                self._open_arena(slot // self._per_file, True)
                self._next += 1
            _count("slots_in_use", 1)
            return slot

    def finish_restore(self) -> None:
        """End of startup: every slot below slots_used that no restored log holds goes on the free
        list (lowest handed out first). Later restore() calls raise RuntimeError, as does a second
        finish_restore(). The first allocation does this by itself."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            if not self._restoring:
                raise RuntimeError("the store is past its restore phase")
            self._finish_restore()

    def _finish_restore(self) -> None:
        # Rebuilt: slots restored logs gave back are not in _claimed either.
        self._free = [s for s in range(self._next - 1, -1, -1) if s not in self._claimed]
        self._restoring = False
        self._claimed = set()

    def _claim(self, slots: list[int], committed: int) -> None:
        """Restore: check, then take, the slots of a log whose segment i lives in slots[i] (-1:
        released). Each must be >= 0, not held, in an existing arena file long enough for the
        segment's committed bytes. ValueError, with nothing taken, otherwise."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            if not self._restoring:
                raise RuntimeError("restore after the store handed out slots or finished restoring")
            seen: dict[int, int] = {}
            top = self._next
            for i, slot in enumerate(slots):
                if slot == -1:
                    continue
                if slot < 0:
                    raise ValueError(f"slot {slot} (segment {i}) is out of range")
                if slot in self._claimed:
                    raise ValueError(f"slot {slot} (segment {i}) is already held by a restored log")
                if slot in seen:
                    raise ValueError(f"slot {slot} is claimed twice (segments {seen[slot]} and {i})")
                seen[slot] = i
                name = os.fsdecode(self._path(slot // self._per_file))
                try:
                    self._open_arena(slot // self._per_file, False)
                except FileNotFoundError:
                    raise ValueError(f"slot {slot} (segment {i}) is out of range: no arena file {name}") from None
                fd, base = self._at(slot, 0)
                size = os.fstat(fd).st_size
                need = min(max(committed - i * self._segsize, 0), self._segsize)
                if size < base + need:
                    raise ValueError(
                        f"slot {slot} (segment {i}) is short: {name} holds {size} bytes, committed needs {base + need}")
                top = max(top, slot + 1)
            for slot in seen:
                self._claimed.add(slot)
                _count("slots_in_use", 1)
            self._next = top

    def _free_slot(self, slot: int) -> None:
        with self._lock:
            assert 0 <= slot < self._next and slot not in self._free
            if self._restoring:
                # finish_restore() rebuilds the free list from _claimed: leave it, and it is free.
                self._claimed.discard(slot)
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
    __slots__ = ("_store", "_segsize", "_slots", "_committed", "_rel_start", "_rel_end", "_ret_end", "_readers",
                 "_writers", "_eof", "_closed", "_lock", "_stash")

    def __init__(self, store: SegmentStore) -> None:
        if not isinstance(store, SegmentStore):
            raise TypeError(f"store must be a SegmentStore, not {type(store).__name__}")
        self._segsize = store.segment_size
        self._slots: list[int] = []  # -1 once a released segment's slot went back
        self._committed = 0
        # Released segments [_rel_start, _rel_end) (empty: none), reads refuse them at once; their
        # slots go back to the store once no reader is inside: [_rel_start, _ret_end) went back.
        self._rel_start = self._rel_end = self._ret_end = 0
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

    @classmethod
    def restore(cls, store: SegmentStore, slots: Iterable[SupportsIndex], committed: int, eof: bool) -> SegmentedLog:
        """A log as a journal recorded it before a restart (see router._fastio)."""
        if not isinstance(store, SegmentStore):
            raise TypeError(f"store must be a SegmentStore, not {type(store).__name__}")
        committed = _ssize(committed)
        if store._closed:
            raise ValueError("I/O operation on closed segment store")
        if not store._restoring:
            raise RuntimeError("restore after the store handed out slots or finished restoring")
        if committed < 0:
            raise ValueError(f"committed must be >= 0, got {committed}")
        seg = store.segment_size
        listed = list(slots)
        n = len(listed)
        if not (committed + seg - 1) // seg <= n <= committed // seg + 1:
            raise ValueError(
                f"committed {committed} does not fit {n} slots of {seg} bytes "
                f"(needs {(committed + seg - 1) // seg}, or {committed // seg + 1} with an empty tail)")
        arr = [_ssize(s) for s in listed]
        a = b = -1
        for i, slot in enumerate(arr):
            if slot == -1:
                if a < 0:
                    a = i
                elif b != i:
                    raise ValueError(f"released slots (-1) must be one contiguous run: {listed}")
                b = i + 1
        if a >= 0 and b > committed // seg:
            raise ValueError(f"released segments [{a}, {b}) must lie below the tail segment {committed // seg}")
        store._claim(arr, committed)
        try:
            log = cls(store)
        except BaseException:
            for slot in arr:
                if slot >= 0:
                    store._free_slot(slot)
            raise
        log._slots = arr
        log._committed = committed
        log._eof = bool(eof)
        if a >= 0:
            log._rel_start = a
            log._rel_end = log._ret_end = b
        return log

    @property
    def segments(self) -> list[int]:
        """The store slots holding this log's segments, in order; -1 for released ones."""
        lo, hi = self._rel_start, self._rel_end
        return [-1 if lo <= i < hi else s for i, s in enumerate(self._slots)]

    @property
    def released_range(self) -> tuple[int, int]:
        """Byte offsets [start, end) released by release(); (0, 0) if none."""
        if self._rel_end == self._rel_start:
            return (0, 0)
        return (self._rel_start * self._segsize, self._rel_end * self._segsize)

    @property
    def held_bytes(self) -> int:
        return self._committed - (self._rel_end - self._rel_start) * self._segsize

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
        return (f"<reference_log.SegmentedLog segments={len(self._slots)} "
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
            if self._readers:
                return
            if self._closed and self._writers == 0:
                give = [s for s in reversed(self._slots) if s >= 0]  # last first: the next log gets them in order
                self._slots = []
            else:
                give = []
                for i in range(self._rel_end - 1, self._ret_end - 1, -1):  # released ones, no reader inside
                    if self._slots[i] >= 0:
                        give.append(self._slots[i])
                        self._slots[i] = -1
            self._ret_end = self._rel_end
        for slot in give:
            self._store._free_slot(slot)

    def release(self, start_segment: int, stop_segment: int) -> int:
        """Release segments [start_segment, stop_segment) (see router._fastio)."""
        start_segment, stop_segment = _ssize(start_segment), _ssize(stop_segment)
        with self._lock:
            tail = self._committed // self._segsize
            if self._closed:
                raise ValueError("I/O operation on closed log")
            if start_segment < 0 or stop_segment < start_segment:
                raise ValueError(f"bad segment range [{start_segment}, {stop_segment})")
            if start_segment == stop_segment:
                return 0
            if stop_segment > tail:
                raise ValueError(
                    f"segments [{start_segment}, {stop_segment}) reach the tail segment {tail}: "
                    f"only whole segments below it can be released")
            if self._rel_end > self._rel_start:
                if not self._rel_start <= start_segment <= self._rel_end:
                    raise ValueError(
                        f"released [{self._rel_start}, {self._rel_end}) can only be extended at its end, "
                        f"not by [{start_segment}, {stop_segment})")
                first = max(start_segment, self._rel_end)
                if stop_segment <= first:
                    return 0
            else:
                first = self._rel_start = self._ret_end = start_segment
            self._rel_end = stop_segment  # published: from here on reads refuse the range
        self._release_if_idle()
        return (stop_segment - first) * self._segsize

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
        n = min(max_len, self._committed - offset)
        if self._rel_end > self._rel_start:
            lo, hi = self._rel_start * self._segsize, self._rel_end * self._segsize
            if lo <= offset < hi:
                raise OffsetReleased(offset, hi)
            if offset < lo:
                n = min(n, lo - offset)  # never across the gap
        return n

    def _copy_out(self, offset: int, n: int) -> list[bytes]:
        parts = []
        while n > 0:
            idx, pos = divmod(offset, self._segsize)
            k = min(n, self._segsize - pos)
            assert self._slots[idx] >= 0, "read from a slot given back"
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
