"""Pure-Python twin of `router._fastio.SegmentedLog` (the test oracle).

Same API and semantics, built on os.readv, os.pwrite and os.pread: the writer
reads into a reused buffer and writes it to the tail segment file; readers
pread from the segment files. No descriptor outlives a call.
"""

from __future__ import annotations

import errno
import mmap
import operator
import os
import sys

__all__ = ["SegmentedLog"]

_SCRATCH_SIZE = 1024 * 1024
_SSIZE_MAX = sys.maxsize


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
    __slots__ = ("_prefix", "_segsize", "_committed", "_eof", "_closed", "_scratch", "_stash")

    def __init__(self, directory, segment_size: int = 32 * 1024 * 1024, name: str = "seg") -> None:
        segment_size = _ssize(segment_size)
        if segment_size <= 0 or segment_size % mmap.PAGESIZE:
            raise ValueError(
                f"segment_size must be a positive multiple of the page size ({mmap.PAGESIZE}), "
                f"got {segment_size}"
            )
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "log directory does not exist", directory)
        if not name or "/" in name:
            raise ValueError(f"name must be a non-empty file name, got {name!r}")
        self._prefix = os.fsencode(os.path.join(directory, name))
        self._segsize = segment_size
        self._committed = 0
        self._eof = False
        self._closed = False
        self._scratch = bytearray(_SCRATCH_SIZE)
        self._stash = b""  # bytes taken from a pipe that could not be written yet

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
            f"<router.pylog.SegmentedLog prefix={os.fsdecode(self._prefix)!r} "
            f"committed={self._committed} eof={self._eof} closed={self._closed}>"
        )

    def close(self) -> None:
        self._closed = True

    def _path(self, idx: int) -> bytes:
        return b"%s-%08d" % (self._prefix, idx)

    # -- writer side ------------------------------------------------------

    def _write(self, data) -> None:
        with memoryview(data) as view:
            if not view.c_contiguous:
                # Same error PyObject_GetBuffer(PyBUF_SIMPLE) gives the C version.
                raise BufferError("append needs a C-contiguous buffer")
            with view.cast("B") as src:
                done, n = 0, len(src)
                fd, fd_idx = -1, -1
                try:
                    while done < n:
                        idx, pos = divmod(self._committed, self._segsize)
                        if idx != fd_idx:
                            if fd >= 0:
                                os.close(fd)
                                fd = -1
                            fd = os.open(self._path(idx), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                            fd_idx = idx
                        k = min(n - done, self._segsize - pos)
                        w = os.pwrite(fd, src[done:done + k], pos)
                        self._committed += w  # publish after the bytes are in
                        done += w
                finally:
                    if fd >= 0:
                        os.close(fd)

    def append(self, data) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            raise ValueError("append after EOF")
        self._write(data)

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
        if self._stash:
            before = self._committed
            try:
                self._write(self._stash)
            finally:
                self._stash = self._stash[self._committed - before:]
        drained = 0
        with memoryview(self._scratch) as buf:
            while drained < budget and not self._closed:
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
            fd = os.open(self._path(idx), os.O_RDONLY | os.O_CLOEXEC)
            try:
                while k > 0:
                    part = os.pread(fd, k, pos)
                    if not part:
                        raise OSError(errno.EIO, "committed bytes missing from segment", os.fsdecode(self._path(idx)))
                    parts.append(part)
                    pos += len(part)
                    offset += len(part)
                    n -= len(part)
                    k -= len(part)
            finally:
                os.close(fd)
        return parts

    def read(self, offset: int, max_len: int) -> bytes:
        n = self._span(offset, max_len)
        if n == 0:
            return b""
        return b"".join(self._copy_out(offset, n))

    def read_frame(self, offset: int, max_len: int) -> bytes:
        n = self._span(offset, max_len)
        if n == 0:
            return b""
        return b"".join([b"\x0a", _varint(n), *self._copy_out(offset, n)])
