# cython: cdivision=True
"""Segmented, mmap-backed append-only log: the exec router's output hot path.

One writer (the event-loop thread) drains child pipes straight into the
mapped tail with readv(); any number of reader threads copy committed byte
ranges out.  Coordination relies on the GIL: `_committed`, the segment table
and the user count are only touched with the GIL held, and bytes below
`_committed` never change, so readers may copy them with the GIL released.
`router.pylog` is the pure-Python twin used as the test oracle.
"""

import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.errno cimport EAGAIN, EINTR, EIO, errno
from libc.string cimport memcpy, memset
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDWR
from posix.fcntl cimport open as c_open
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.uio cimport iovec, readv
from posix.unistd cimport _SC_PAGESIZE, ftruncate, sysconf
from posix.unistd cimport close as c_close

from .includes.system cimport EWOULDBLOCK, ROUTER_DEBUG


# Below this, releasing and re-taking the GIL costs more than the memcpy
# (and risks a switch-interval wait when the GIL is contended).
cdef enum:
    NOGIL_COPY = 64 * 1024
    # Landing zone for the first read into a segment that does not exist yet,
    # so a stream that never produces a byte never creates a file.
    BOUNCE_SIZE = 4096


cdef inline bint _would_block(int err) noexcept nogil:
    # Two statements on purpose: Cython turns `a == X or a == Y` into a C
    # switch, and EAGAIN == EWOULDBLOCK on Linux makes that a duplicate case.
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
        bytes _dir                  # fs-encoded directory
        Py_ssize_t _segsize
        char **_segs                # base of each mapped segment, NULL if not mapped
        Py_ssize_t _nslots          # allocated length of _segs
        Py_ssize_t _committed
        Py_ssize_t _users           # calls that may touch the mappings right now
        bint _eof
        bint _closed

    def __cinit__(self, *args, **kwargs):
        self._dir = None
        self._segsize = 0
        self._segs = NULL
        self._nslots = 0
        self._committed = 0
        self._users = 0
        self._eof = False
        # An instance whose __init__ never ran behaves as closed.
        self._closed = True

    def __init__(self, directory, Py_ssize_t segment_size=32 * 1024 * 1024):
        if self._dir is not None:
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
        self._dir = os.fsencode(directory)
        self._segsize = segment_size
        self._closed = False

    def __dealloc__(self):
        self._unmap_all()

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
            f"<router._fastio.SegmentedLog dir={os.fsdecode(self._dir or b'')!r} "
            f"committed={self._committed} eof={self._eof} closed={self._closed}>"
        )

    # -- lifetime ---------------------------------------------------------

    cdef int _enter(self) except -1:
        if self._closed:
            raise ValueError("I/O operation on closed log")
        self._users += 1
        return 0

    cdef void _leave(self) noexcept:
        self._users -= 1
        if self._users == 0 and self._closed:
            self._unmap_all()

    cdef void _unmap_all(self) noexcept:
        cdef Py_ssize_t i
        if self._segs == NULL:
            return
        for i in range(self._nslots):
            if self._segs[i] != NULL:
                munmap(self._segs[i], <size_t>self._segsize)
        PyMem_Free(self._segs)
        self._segs = NULL
        self._nslots = 0

    def close(self):
        if self._closed:
            return
        self._closed = True
        # A reader inside a GIL-released memcpy (or the writer inside readv)
        # still uses the mappings: the last one to leave unmaps instead.
        if self._users == 0:
            self._unmap_all()

    # -- writer side ------------------------------------------------------

    cdef char *_segment(self, Py_ssize_t idx) except NULL:
        """Base of segment idx, creating and mapping its file first if needed."""
        cdef char **slots
        cdef Py_ssize_t n
        cdef bytes path
        cdef const char *cpath
        cdef int fd, err = 0
        cdef size_t size = <size_t>self._segsize
        cdef void *base = MAP_FAILED

        if idx >= self._nslots:
            n = max(idx + 1, self._nslots * 2, 8)
            slots = <char **>PyMem_Realloc(self._segs, n * sizeof(char *))
            if slots == NULL:
                raise MemoryError()
            memset(slots + self._nslots, 0, (n - self._nslots) * sizeof(char *))
            self._segs = slots
            self._nslots = n
        if self._segs[idx] != NULL:
            return self._segs[idx]

        path = b"%s/seg-%08d" % (self._dir, idx)
        cpath = path
        with nogil:
            fd = c_open(cpath, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            if fd < 0:
                err = errno
            else:
                if ftruncate(fd, self._segsize) != 0:
                    err = errno
                else:
                    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                    if base == MAP_FAILED:
                        err = errno
                # The mapping keeps the file alive; no fd per segment.
                c_close(fd)
                fd = -1
        if err:
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        self._segs[idx] = <char *>base
        return <char *>base

    cdef int _write(self, const char *src, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos, k
        cdef char *dst
        while n > 0:
            pos = self._committed % self._segsize
            dst = self._segment(self._committed // self._segsize) + pos
            k = min(n, self._segsize - pos)
            if k >= NOGIL_COPY:
                with nogil:
                    memcpy(dst, src, <size_t>k)
            else:
                memcpy(dst, src, <size_t>k)
            # Publish only once the bytes are in the mapping.
            self._committed += k
            src += k
            n -= k
        return 0

    def append(self, data):
        cdef Py_buffer view
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            raise ValueError("append after EOF")
        self._enter()
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._write(<const char *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        finally:
            self._leave()

    def mark_eof(self):
        self._eof = True

    def drain(self, int fd, Py_ssize_t budget=4 * 1024 * 1024):
        cdef iovec iov[2]
        cdef char bounce[BOUNCE_SIZE]
        cdef int cnt, err
        cdef ssize_t n
        cdef Py_ssize_t drained = 0, want, pos, room, idx
        cdef char *base
        cdef bint bounced

        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            return 0, True
        self._enter()
        try:
            # Re-check _closed: close() from another thread while readv ran.
            while drained < budget and not self._closed:
                want = budget - drained
                idx = self._committed // self._segsize
                pos = self._committed % self._segsize
                room = self._segsize - pos
                base = self._segs[idx] if idx < self._nslots else NULL
                bounced = base == NULL
                if bounced:
                    # Tail segment not created yet (so pos == 0).
                    iov[0].iov_base = bounce
                    iov[0].iov_len = <size_t>min(want, <Py_ssize_t>BOUNCE_SIZE)
                    cnt = 1
                else:
                    iov[0].iov_base = base + pos
                    iov[0].iov_len = <size_t>min(want, room)
                    cnt = 1
                    if want > room:
                        iov[1].iov_base = self._segment(idx + 1)
                        iov[1].iov_len = <size_t>min(want - room, self._segsize)
                        cnt = 2

                with nogil:
                    n = readv(fd, iov, cnt)
                    err = errno if n < 0 else 0

                if n > 0:
                    if ROUTER_DEBUG:
                        assert <size_t>n <= iov[0].iov_len + (iov[1].iov_len if cnt == 2 else 0)
                    if bounced:
                        self._write(bounce, n)
                    else:
                        self._committed += n
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
            self._leave()
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
        """Copy committed [offset, offset + n) to dst; caller holds a user slot."""
        cdef Py_ssize_t pos, k
        cdef const char *src
        if ROUTER_DEBUG:
            assert offset + n <= self._committed
        while n > 0:
            pos = offset % self._segsize
            # Re-read the table each time round: the writer may realloc it
            # while the GIL is released.
            src = self._segs[offset // self._segsize] + pos
            if ROUTER_DEBUG:
                assert self._segs[offset // self._segsize] != NULL
            k = min(n, self._segsize - pos)
            if k >= NOGIL_COPY:
                with nogil:
                    memcpy(dst, src, <size_t>k)
            else:
                memcpy(dst, src, <size_t>k)
            dst += k
            offset += k
            n -= k
        return 0

    def read(self, Py_ssize_t offset, Py_ssize_t max_len):
        cdef Py_ssize_t n = self._span(offset, max_len)
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        self._enter()
        try:
            self._copy_out(PyBytes_AS_STRING(out), offset, n)
        finally:
            self._leave()
        return out

    def read_frame(self, Py_ssize_t offset, Py_ssize_t max_len):
        cdef Py_ssize_t n = self._span(offset, max_len)
        cdef unsigned char *p
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, 1 + _varint_len(<size_t>n) + n)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        p[0] = 0x0A  # field 1, wire type 2 (length-delimited)
        p = _put_varint(p + 1, <size_t>n)
        self._enter()
        try:
            self._copy_out(<char *>p, offset, n)
        finally:
            self._leave()
        return out
