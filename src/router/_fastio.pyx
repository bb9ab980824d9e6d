# cython: cdivision=True
"""Segmented append-only log in files: the exec router's output hot path.

One writer (the event-loop thread) drains child pipes with readv() into a
reused buffer and pwrite()s it to the tail segment file; any number of reader
threads pread() committed byte ranges straight into the message they send.
Coordination relies on the GIL: `_committed` only grows, is published after
the bytes are in the page cache, and bytes below it never change.

Why pwrite and not a shared mapping (measured, benchmarks/RESULTS.md): writing
through a file mapping faults in every page (0.8-1.2 GB/s, 1.25 CPU s per GiB
at 4 GiB) and every touched page counts in the server's RSS; readv into a
reused buffer plus pwrite reaches 1.6-2.3 GB/s at half the CPU, with flat RSS.

No descriptor outlives a call: the writer opens the tail segment for the
length of one drain()/append(), readers open a segment per read. Thousands of
execs then cost no descriptors beyond their pipes.
`router.pylog` is the pure-Python twin used as the test oracle.
"""

import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EAGAIN, EINTR, EIO, errno
from libc.string cimport memcpy, memmove
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDONLY, O_WRONLY
from posix.fcntl cimport open as c_open
from posix.uio cimport iovec, readv
from posix.unistd cimport _SC_PAGESIZE, pread, pwrite, sysconf
from posix.unistd cimport close as c_close

from .includes.system cimport EWOULDBLOCK, ROUTER_DEBUG


cdef enum:
    # One readv() takes at most this much; it matches the 1 MiB pipes the engine asks for.
    SCRATCH_SIZE = 1024 * 1024

# The drain buffer. Only the loop thread drains, so one buffer serves every
# log; a concurrent drain (never done by the engine) gets a buffer of its own.
cdef char *_scratch = NULL
cdef bint _scratch_busy = False


cdef inline bint _would_block(int err) noexcept nogil:
    # Two statements on purpose: EAGAIN == EWOULDBLOCK on Linux would make a
    # duplicate case in the C switch Cython emits for `a == X or a == Y`.
    if err == EAGAIN:
        return True
    return err == EWOULDBLOCK


cdef inline Py_ssize_t _varint_len(size_t n) noexcept nogil:
    cdef Py_ssize_t k = 1
    while n >= 0x80:
        n >>= 7
        k += 1
    return k


cdef inline unsigned char *_put_varint(unsigned char *p, size_t n) noexcept nogil:
    while n >= 0x80:
        p[0] = <unsigned char>((n & 0x7F) | 0x80)
        p += 1
        n >>= 7
    p[0] = <unsigned char>n
    return p + 1


cdef class SegmentedLog:
    cdef:
        bytes _prefix               # fs-encoded "directory/name"; segment i is "<prefix>-<i:08d>"
        Py_ssize_t _segsize
        Py_ssize_t _committed
        bint _eof
        bint _closed
        int _wfd                    # writer's descriptor for segment _widx, only during a call
        Py_ssize_t _widx
        char *_stash                # bytes taken from a pipe that could not be written yet
        Py_ssize_t _stash_len

    def __cinit__(self, *args, **kwargs):
        self._prefix = None
        self._segsize = 0
        self._committed = 0
        self._eof = False
        # An instance whose __init__ never ran behaves as closed.
        self._closed = True
        self._wfd = -1
        self._widx = -1
        self._stash = NULL
        self._stash_len = 0

    def __init__(self, directory, Py_ssize_t segment_size=32 * 1024 * 1024, name="seg"):
        if self._prefix is not None:
            raise RuntimeError("SegmentedLog is already initialised")
        cdef long page = sysconf(_SC_PAGESIZE)
        if segment_size <= 0 or segment_size % page != 0:
            raise ValueError(
                f"segment_size must be a positive multiple of the page size ({page}), "
                f"got {segment_size}"
            )
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(2, "log directory does not exist", directory)
        if not name or "/" in name:
            raise ValueError(f"name must be a non-empty file name, got {name!r}")
        self._prefix = os.fsencode(os.path.join(directory, name))
        self._segsize = segment_size
        self._closed = False

    def __dealloc__(self):
        if self._wfd >= 0:
            c_close(self._wfd)
            self._wfd = -1
        PyMem_Free(self._stash)
        self._stash = NULL

    @property
    def committed(self):
        return self._committed

    @property
    def segment_size(self):
        return self._segsize

    @property
    def eof(self):
        return self._eof

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        return (
            f"<router._fastio.SegmentedLog prefix={os.fsdecode(self._prefix or b'')!r} "
            f"committed={self._committed} eof={self._eof} closed={self._closed}>"
        )

    def close(self):
        """Idempotent. Later calls raise ValueError; the files stay (the caller owns the directory)."""
        self._closed = True

    cdef bytes _path(self, Py_ssize_t idx):
        return b"%s-%08d" % (self._prefix, idx)

    cdef int _open(self, Py_ssize_t idx, int flags) except -1:
        cdef bytes path = self._path(idx)
        cdef const char *cpath = path
        cdef int fd, err = 0
        with nogil:
            fd = c_open(cpath, flags | O_CLOEXEC, 0o600)
            if fd < 0:
                err = errno
        if fd < 0:
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        return fd

    # -- writer side ------------------------------------------------------

    cdef void _release_writer(self) noexcept:
        if self._wfd >= 0:
            c_close(self._wfd)
            self._wfd = -1
            self._widx = -1

    cdef int _write(self, const char *src, Py_ssize_t n) except -1:
        """Append n bytes at the tail, crossing segments; publish each piece once written."""
        cdef Py_ssize_t idx, pos, k
        cdef ssize_t w
        cdef int err = 0
        while n > 0:
            idx = self._committed // self._segsize
            pos = self._committed % self._segsize
            k = min(n, self._segsize - pos)
            if idx != self._widx:
                self._release_writer()
                self._wfd = self._open(idx, O_WRONLY | O_CREAT)
                self._widx = idx
            with nogil:
                w = pwrite(self._wfd, src, <size_t>k, pos)
                if w < 0:
                    err = errno
            if w < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                raise OSError(err, os.strerror(err), os.fsdecode(self._path(idx)))
            # A short write (disk full is reported on the next call) just loops.
            self._committed += w
            src += w
            n -= w
        return 0

    cdef int _write_or_keep(self, const char *src, Py_ssize_t n) except -1:
        """_write, but what a failure leaves unwritten is kept, to be written first next time.

        Bytes read from a pipe exist nowhere else: losing them would corrupt the stream.
        """
        cdef Py_ssize_t before = self._committed, rest
        try:
            self._write(src, n)
        except OSError:
            rest = n - (self._committed - before)
            self._stash = <char *>PyMem_Malloc(rest)
            if self._stash == NULL:
                raise MemoryError()
            memcpy(self._stash, src + (n - rest), <size_t>rest)
            self._stash_len = rest
            raise
        return 0

    cdef int _flush_stash(self) except -1:
        cdef Py_ssize_t before = self._committed, done
        try:
            self._write(self._stash, self._stash_len)
        finally:
            done = self._committed - before
            self._stash_len -= done
            if self._stash_len:
                memmove(self._stash, self._stash + done, <size_t>self._stash_len)
            else:
                PyMem_Free(self._stash)
                self._stash = NULL
        return 0

    def append(self, data):
        """Copy a bytes-like object to the tail (crossing segments). ValueError after EOF or close."""
        cdef Py_buffer view
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            raise ValueError("append after EOF")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._write(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
            self._release_writer()

    def mark_eof(self):
        self._eof = True

    def drain(self, int fd, Py_ssize_t budget=4 * 1024 * 1024):
        """readv() a non-blocking fd into the tail until EAGAIN, EOF (EIO counts) or `budget` bytes.

        Returns (bytes drained by this call, eof). The GIL is released around every syscall.
        If writing fails (no descriptor, disk full), OSError is raised and the bytes already
        taken from the pipe are kept: the next call writes them first, so nothing is lost and
        the pipe holds the child back meanwhile.
        """
        global _scratch, _scratch_busy
        cdef iovec iov
        cdef int err
        cdef ssize_t n
        cdef Py_ssize_t drained = 0
        cdef char *buf
        cdef bint own = False

        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            return 0, True
        if self._stash != NULL:
            try:
                self._flush_stash()
            finally:
                self._release_writer()
        if _scratch == NULL:
            _scratch = <char *>PyMem_Malloc(SCRATCH_SIZE)
            if _scratch == NULL:
                raise MemoryError()
        if _scratch_busy:
            own = True
            buf = <char *>PyMem_Malloc(SCRATCH_SIZE)
            if buf == NULL:
                raise MemoryError()
        else:
            _scratch_busy = True
            buf = _scratch
        try:
            while drained < budget and not self._closed:
                iov.iov_base = buf
                iov.iov_len = <size_t>min(budget - drained, <Py_ssize_t>SCRATCH_SIZE)
                with nogil:
                    n = readv(fd, &iov, 1)
                    err = errno if n < 0 else 0
                if n > 0:
                    if ROUTER_DEBUG:
                        assert <size_t>n <= iov.iov_len
                    self._write_or_keep(buf, n)
                    drained += n
                elif n == 0:
                    self._eof = True
                    break
                elif err == EINTR:
                    PyErr_CheckSignals()  # PEP 475: let signal handlers raise
                elif _would_block(err):
                    break
                elif err == EIO:
                    # pty master whose slave side is gone
                    self._eof = True
                    break
                else:
                    raise OSError(err, os.strerror(err))
        finally:
            self._release_writer()
            if own:
                PyMem_Free(buf)
            else:
                _scratch_busy = False
        return drained, self._eof

    # -- reader side ------------------------------------------------------

    cdef Py_ssize_t _span(self, Py_ssize_t offset, Py_ssize_t max_len) except -1:
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if offset < 0 or max_len < 0:
            raise ValueError(f"offset and max_len must be >= 0, got {offset}, {max_len}")
        if offset > self._committed:
            raise ValueError(f"offset {offset} is beyond committed {self._committed}")
        return min(max_len, self._committed - offset)

    cdef int _copy_out(self, char *dst, Py_ssize_t offset, Py_ssize_t n) except -1:
        """pread committed [offset, offset + n) into dst, one segment at a time."""
        cdef Py_ssize_t idx, pos, k
        cdef ssize_t r
        cdef int fd, err
        if ROUTER_DEBUG:
            assert offset + n <= self._committed
        while n > 0:
            idx = offset // self._segsize
            pos = offset % self._segsize
            k = min(n, self._segsize - pos)
            fd = self._open(idx, O_RDONLY)
            err = 0
            with nogil:
                while k > 0:
                    r = pread(fd, dst, <size_t>k, pos)
                    if r > 0:
                        dst += r
                        pos += r
                        offset += r
                        n -= r
                        k -= r
                    elif r == 0 or errno != EINTR:
                        err = errno if r < 0 else EIO  # committed bytes cannot be missing
                        break
                c_close(fd)
            if err:
                raise OSError(err, os.strerror(err), os.fsdecode(self._path(idx)))
        return 0

    def read(self, Py_ssize_t offset, Py_ssize_t max_len):
        """Committed bytes [offset, min(offset + max_len, committed)) as one new bytes object."""
        cdef Py_ssize_t n = self._span(offset, max_len)
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        self._copy_out(PyBytes_AS_STRING(out), offset, n)
        return out

    def read_frame(self, Py_ssize_t offset, Py_ssize_t max_len):
        """Like read(), as the wire form of protobuf `bytes data = 1`; b"" when there is nothing."""
        cdef Py_ssize_t n = self._span(offset, max_len)
        cdef unsigned char *p
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, 1 + _varint_len(<size_t>n) + n)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        p[0] = 0x0A  # field 1, wire type 2 (length-delimited)
        p = _put_varint(p + 1, <size_t>n)
        self._copy_out(<char *>p, offset, n)
        return out
