"""Pure-Python twin of `router._fastio.SegmentedLog` (the test oracle).

Same API and semantics, built on the mmap module and os.readv.  Differences
that no caller can observe through the API:

* On Python < 3.13 each mmap object keeps a dup of its segment's fd open
  until close() (`trackfd=False` only exists from 3.13).
* Reader bookkeeping uses a lock, since `+=` on an attribute is not atomic
  across threads in Python code.
"""

from __future__ import annotations

import errno
import mmap
import operator
import os
import sys
import threading

__all__ = ["SegmentedLog"]

_BOUNCE_SIZE = 4096
_SSIZE_MAX = sys.maxsize
_MMAP_KW = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _ssize(value) -> int:
    # Mirror the C version's Py_ssize_t argument conversion.
    value = operator.index(value)
    if not -_SSIZE_MAX - 1 <= value <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return value


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class SegmentedLog:
    __slots__ = ("_dir", "_segsize", "_segs", "_committed", "_users", "_eof", "_closed", "_lock")

    def __init__(self, directory, segment_size: int = 32 * 1024 * 1024) -> None:
        segment_size = _ssize(segment_size)
        if segment_size <= 0 or segment_size % mmap.PAGESIZE:
            raise ValueError(
                f"segment_size must be a positive multiple of the page size ({mmap.PAGESIZE}), "
                f"got {segment_size}"
            )
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "log directory does not exist", directory)
        self._dir = os.fsencode(directory)
        self._segsize = segment_size
        self._segs: list[mmap.mmap | None] = []
        self._committed = 0
        self._users = 0
        self._eof = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def segment_size(self) -> int:
        return self._segsize

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<router.pylog.SegmentedLog dir={os.fsdecode(self._dir)!r} "
            f"committed={self._committed} eof={self._eof} closed={self._closed}>"
        )

    # -- lifetime ---------------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed log")
            self._users += 1

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._closed:
                self._unmap_all()

    def _unmap_all(self) -> None:
        for mm in self._segs:
            if mm is not None:
                mm.close()
        self._segs = []

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._users == 0:
                self._unmap_all()

    # -- writer side ------------------------------------------------------

    def _segment(self, idx: int) -> mmap.mmap:
        while len(self._segs) <= idx:
            self._segs.append(None)
        mm = self._segs[idx]
        if mm is None:
            path = b"%s/seg-%08d" % (self._dir, idx)
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, self._segsize)
                mm = mmap.mmap(
                    fd, self._segsize, flags=mmap.MAP_SHARED,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_KW,
                )
            finally:
                os.close(fd)
            self._segs[idx] = mm
        return mm

    def _write(self, data) -> None:
        with memoryview(data) as view:
            if not view.c_contiguous:
                # Same error PyObject_GetBuffer(PyBUF_SIMPLE) gives the C version.
                raise BufferError("append needs a C-contiguous buffer")
            with view.cast("B") as src:
                done, n = 0, len(src)
                while done < n:
                    idx, pos = divmod(self._committed, self._segsize)
                    mm = self._segment(idx)
                    k = min(n - done, self._segsize - pos)
                    mm[pos:pos + k] = src[done:done + k]
                    self._committed += k  # publish after the bytes are in
                    done += k

    def append(self, data) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            raise ValueError("append after EOF")
        self._enter()
        try:
            self._write(data)
        finally:
            self._leave()

    def mark_eof(self) -> None:
        self._eof = True

    def drain(self, fd: int, budget: int = 4 * 1024 * 1024) -> tuple[int, bool]:
        fd = operator.index(fd)
        budget = _ssize(budget)
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            return 0, True
        self._enter()
        drained = 0
        try:
            while drained < budget and not self._closed:
                want = budget - drained
                idx, pos = divmod(self._committed, self._segsize)
                room = self._segsize - pos
                mm = self._segs[idx] if idx < len(self._segs) else None
                try:
                    if mm is None:
                        # Tail segment not created yet: no file until a byte arrives.
                        data = os.read(fd, min(want, _BOUNCE_SIZE))
                        n = len(data)
                        if n:
                            self._write(data)
                    else:
                        views = [memoryview(mm)[pos:pos + min(want, room)]]
                        try:
                            if want > room:
                                nxt = self._segment(idx + 1)
                                views.append(memoryview(nxt)[:min(want - room, self._segsize)])
                            n = os.readv(fd, views)  # retries EINTR itself (PEP 475)
                        finally:
                            # Exported buffers would make mmap.close() fail.
                            for v in views:
                                v.release()
                        if n:
                            self._committed += n
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
                drained += n
        finally:
            self._leave()
        return drained, self._eof

    # -- reader side ------------------------------------------------------

    def _span(self, offset, max_len) -> int:
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
            parts.append(self._segs[idx][pos:pos + k])
            offset += k
            n -= k
        return parts

    def read(self, offset: int, max_len: int) -> bytes:
        n = self._span(offset, max_len)
        if n == 0:
            return b""
        self._enter()
        try:
            return b"".join(self._copy_out(offset, n))
        finally:
            self._leave()

    def read_frame(self, offset: int, max_len: int) -> bytes:
        n = self._span(offset, max_len)
        if n == 0:
            return b""
        self._enter()
        try:
            return b"".join([b"\x0a", _varint(n), *self._copy_out(offset, n)])
        finally:
            self._leave()
