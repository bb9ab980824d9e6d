# SegmentedLog: a list of store slots written at the tail by one writer (append, or drain: splice()
# from a pipe, readv() + pwrite() from a pty) and read by any number of reader threads (read,
# read_frame: pread() straight into the message), its released range (OffsetReleased) and its
# restore from a journal. Included by _fastio.pyx; attributes and C methods are declared in
# log.pxd.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EINTR, EINVAL, EIO, errno
from libc.string cimport memcpy, memmove
from posix.uio cimport iovec, readv

from .includes.system cimport FIONREAD, ROUTER_DEBUG, ioctl


class OffsetReleased(LookupError):
    """read()/read_frame() at an offset inside a log's released range; `first_held` is the first
    offset after it that the log still holds."""

    def __init__(self, offset, first_held):
        super().__init__(f"offset {offset} was released; the first offset still held is {first_held}")
        self.offset = offset
        self.first_held = first_held

    def __reduce__(self):
        return type(self), (self.offset, self.first_held)


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


# No tp_clear: __dealloc__ needs _store to give the slots back, even when the log dies in a cycle.
@cython.no_gc_clear
cdef class SegmentedLog:
    def __cinit__(self, *args, **kwargs):
        self._store = None
        self._segsize = 0
        self._slots = NULL
        self._nslots = self._cap = 0
        self._committed = 0
        self._rel_start = self._rel_end = self._ret_end = 0
        self._readers = self._writers = 0
        self._no_splice = False
        self._eof = False
        # An instance whose __init__ never ran behaves as closed.
        self._closed = True
        self._stash = NULL
        self._stash_len = 0

    def __init__(self, SegmentStore store not None):
        if self._store is not None:
            raise RuntimeError("SegmentedLog is already initialised")
        self._store = store
        self._segsize = store._segsize
        self._closed = False
        _count(&_counts.open_logs, 1)

    def __dealloc__(self):
        if self._store is not None:
            # Whoever was inside held a reference: nobody is.
            if ROUTER_DEBUG:
                assert self._readers == 0 and self._writers == 0
            if not self._closed:
                self._closed = True
                _count(&_counts.open_logs, -1)
            self._release_slots()
        PyMem_Free(self._slots)
        self._slots = NULL
        PyMem_Free(self._stash)
        self._stash = NULL

    @property
    def store(self):
        return self._store

    @classmethod
    def restore(cls, SegmentStore store not None, slots, Py_ssize_t committed, eof):
        """A log as a journal recorded it before a restart: segment i in slots[i] (-1: released;
        those form one contiguous run, the released range), `committed` bytes, `eof`.

        Only while the store restores (RuntimeError after finish_restore() or any allocation;
        ValueError once closed). ValueError, with nothing taken from the store, when a slot is
        negative (other than -1), has no arena file, is listed twice or held by a restored log,
        when the arena file is too short for the committed bytes, when len(slots) does not fit
        committed (ceil(committed / segment_size), or one more whose segment has no byte yet), or
        when the -1 entries are not one run wholly below the tail segment.
        """
        cdef SegmentedLog log
        cdef Py_ssize_t seg = store._segsize, n, i, a = -1, b = -1
        cdef Py_ssize_t *arr = NULL
        if store._closed:
            raise ValueError("I/O operation on closed segment store")
        if not store._restoring:
            raise RuntimeError("restore after the store handed out slots or finished restoring")
        if committed < 0:
            raise ValueError(f"committed must be >= 0, got {committed}")
        slots = list(slots)
        n = len(slots)
        if not (committed + seg - 1) // seg <= n <= committed // seg + 1:
            raise ValueError(
                f"committed {committed} does not fit {n} slots of {seg} bytes "
                f"(needs {(committed + seg - 1) // seg}, or {committed // seg + 1} with an empty tail)")
        arr = <Py_ssize_t *>PyMem_Malloc(max(n, 1) * sizeof(Py_ssize_t))
        if arr == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                arr[i] = slots[i]
                if arr[i] == -1:
                    if a < 0:
                        a = i
                    elif b != i:
                        raise ValueError(f"released slots (-1) must be one contiguous run: {slots}")
                    b = i + 1
            if a >= 0 and b > committed // seg:
                raise ValueError(
                    f"released segments [{a}, {b}) must lie below the tail segment {committed // seg}")
            store._claim(arr, n, committed)
            try:
                log = cls(store)
            except BaseException:
                for i in range(n):
                    if arr[i] >= 0:
                        store._free_slot(arr[i])
                raise
            if ROUTER_DEBUG:
                assert log._nslots == 0 and log._slots == NULL
            log._slots = arr
            arr = NULL
            log._nslots = log._cap = n
            log._committed = committed
            log._eof = bool(eof)
            if a >= 0:
                log._rel_start = a
                log._rel_end = log._ret_end = b
            return log
        finally:
            PyMem_Free(arr)

    @property
    def segments(self):
        """The store slots holding this log's segments, in order; -1 for released ones."""
        return [-1 if self._rel_start <= i < self._rel_end else self._slots[i] for i in range(self._nslots)]

    @property
    def released_range(self):
        """Byte offsets [start, end) released by release(); (0, 0) if none."""
        if self._rel_end == self._rel_start:
            return (0, 0)
        return (self._rel_start * self._segsize, self._rel_end * self._segsize)

    @property
    def held_bytes(self):
        """committed minus the released bytes."""
        return self._committed - (self._rel_end - self._rel_start) * self._segsize

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

    @property
    def readers(self):
        """Calls inside read()/read_frame() right now."""
        return self._readers

    def __repr__(self):
        return (
            f"<router._fastio.SegmentedLog segments={self._nslots} "
            f"committed={self._committed} eof={self._eof} closed={self._closed}>"
        )

    def close(self):
        """Idempotent. Later calls raise ValueError. The slots go back to the store for other logs
        once no call is inside this one: now, or when the last reader (or the writer) leaves."""
        if self._closed:
            return
        self._closed = True
        _count(&_counts.open_logs, -1)
        self._release_if_idle()

    # A closed log's slots may be handed to another log and overwritten: a reader still inside
    # would copy foreign bytes. So, like py-pgproto's buffer that will not move memory while a view
    # is exported, slots go back only once no call is inside. Callers hold the GIL.

    cdef inline int _leave_reader(self) except -1:
        self._readers -= 1
        if ROUTER_DEBUG:
            assert self._readers >= 0
        return self._release_if_idle()

    cdef inline int _leave_writer(self) except -1:
        self._writers -= 1
        if ROUTER_DEBUG:
            assert self._writers >= 0
        return self._release_if_idle()

    cdef int _release_if_idle(self) except -1:
        if self._readers == 0:
            if self._closed and self._writers == 0:
                self._release_slots()
            elif self._ret_end < self._rel_end:
                self._return_released()
        return 0

    cdef int _return_released(self) except -1:
        """Give back the released segments' slots not given back yet (no reader is inside)."""
        cdef Py_ssize_t i, slot
        if ROUTER_DEBUG:
            assert self._readers == 0
        for i in range(self._rel_end - 1, self._ret_end - 1, -1):  # last first, as _release_slots
            slot = self._slots[i]
            if slot >= 0:
                self._slots[i] = -1
                self._store._free_slot(slot)
        self._ret_end = self._rel_end
        return 0

    cdef int _release_slots(self) except -1:
        cdef Py_ssize_t i, slot
        for i in range(self._nslots - 1, -1, -1):  # last first: the next log gets them in this order
            slot = self._slots[i]
            if slot >= 0:  # released ones went back already
                self._slots[i] = -1
                self._store._free_slot(slot)
        self._ret_end = self._rel_end
        self._nslots = self._cap = 0
        PyMem_Free(self._slots)
        self._slots = NULL
        return 0

    def release(self, Py_ssize_t start_segment, Py_ssize_t stop_segment):
        """Release segments [start_segment, stop_segment): reads there raise OffsetReleased from
        now on, and their slots go back to the store once no reader is inside this log (at once,
        or when the last one leaves). Returns the bytes newly released.

        Only whole segments below the tail segment (stop_segment <= committed // segment_size).
        A log has one released range, fixed at its start and extended at its end: a call must
        start inside it or at its end. An empty range does nothing. ValueError otherwise, or once
        closed.
        """
        cdef Py_ssize_t tail = self._committed // self._segsize, first
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

    cdef Py_ssize_t _slot(self, Py_ssize_t idx) except -1:
        """The slot of segment idx; the next segment gets a fresh slot when the tail reaches it."""
        cdef Py_ssize_t *grown
        cdef Py_ssize_t n
        if idx < self._nslots:
            return self._slots[idx]
        if self._closed:  # closed meanwhile: a slot taken now would never go back
            raise ValueError("I/O operation on closed log")
        if self._nslots == self._cap:
            n = max(4, self._cap * 2)
            grown = <Py_ssize_t *>PyMem_Realloc(self._slots, n * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._slots = grown
            self._cap = n
        self._slots[self._nslots] = self._store._allocate()
        self._nslots += 1
        return self._slots[idx]

    cdef int _write(self, const char *src, Py_ssize_t n) except -1:
        """Append n bytes at the tail, crossing segments; publish each piece once written."""
        cdef Py_ssize_t idx, pos, k
        while n > 0:
            idx = self._committed // self._segsize
            pos = self._committed % self._segsize
            k = min(n, self._segsize - pos)
            self._store._pwrite(self._slot(idx), src, k, pos)
            self._committed += k
            src += k
            n -= k
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
        self._writers += 1
        try:
            self._write(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
            self._leave_writer()

    def mark_eof(self):
        self._eof = True

    def drain(self, int fd, Py_ssize_t budget=4 * 1024 * 1024):
        """readv() a non-blocking fd into the tail until EAGAIN, EOF (EIO counts) or `budget` bytes.

        Returns (bytes drained by this call, eof). The GIL is released around every syscall.
        ValueError if the log or its store is closed (before anything is read from fd).
        If writing fails (no descriptor, disk full), OSError is raised and the bytes already
        taken from the pipe are kept: the next call writes them first, so nothing is lost and
        the pipe holds the child back meanwhile.
        """
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if self._eof:
            return 0, True
        self._writers += 1
        try:
            return self._drain(fd, budget)
        finally:
            self._leave_writer()

    cdef tuple _drain(self, int fd, Py_ssize_t budget):
        cdef SegmentStore store = self._store
        cdef iovec iov
        cdef int err
        cdef ssize_t n
        cdef Py_ssize_t drained = 0
        cdef char *buf
        if store._closed:
            raise ValueError("I/O operation on closed segment store")  # before anything is read
        if not self._no_splice and self._stash == NULL:
            drained = self._splice_drain(fd, budget)
            if drained >= 0:
                return drained, self._eof
            drained = 0
        buf = store._take_scratch()  # ValueError once the store is closed: nothing read
        try:
            if self._stash != NULL:
                self._flush_stash()
            # Stop reading once either is closed: bytes taken from the pipe could not be written.
            while drained < budget and not self._closed and not store._closed:
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
                    _raise_os_error(err)
        finally:
            store._give_scratch(buf)
        return drained, self._eof

    cdef Py_ssize_t _splice_drain(self, int fd, Py_ssize_t budget) except? -2:
        """drain() for a pipe: splice() straight into the slots, one copy fewer than readv() +
        pwrite() (benchmarks/HISTORY.md, "Splice, and what the stream target asks"). Bytes drained, or -1 to leave this call to readv()
        with nothing read: fd is no pipe, or a new slot would be needed and the pipe is empty
        (an exec without output must not take a slot; readv() tells an empty pipe from EOF)."""
        cdef SegmentStore store = self._store
        cdef Py_ssize_t drained = 0, idx, pos
        cdef ssize_t n
        cdef int avail = 0
        while drained < budget and not self._closed and not store._closed:
            idx = self._committed // self._segsize
            pos = self._committed % self._segsize
            if idx == self._nslots:
                with nogil:
                    n = ioctl(fd, FIONREAD, &avail)
                if n == 0 and avail == 0:
                    return drained if drained else -1
            n = store._splice_in(fd, self._slot(idx), min(budget - drained, self._segsize - pos), pos)
            if ROUTER_DEBUG:
                assert n <= budget - drained
            if n > 0:
                self._committed += n  # published once the bytes are in the page cache
                drained += n
            elif n == 0:
                self._eof = True
                break
            elif n == -EINVAL and drained == 0:
                self._no_splice = True  # not a pipe: readv() from here on
                return -1
            else:
                break  # empty pipe
        return drained

    # -- reader side ------------------------------------------------------

    cdef Py_ssize_t _span(self, Py_ssize_t offset, Py_ssize_t max_len) except -1:
        if self._closed:
            raise ValueError("I/O operation on closed log")
        if offset < 0 or max_len < 0:
            raise ValueError(f"offset and max_len must be >= 0, got {offset}, {max_len}")
        if offset > self._committed:
            raise ValueError(f"offset {offset} is beyond committed {self._committed}")
        cdef Py_ssize_t lo, hi, n = min(max_len, self._committed - offset)
        if self._rel_end > self._rel_start:
            lo = self._rel_start * self._segsize
            hi = self._rel_end * self._segsize
            if offset >= hi:
                pass
            elif offset >= lo:
                raise OffsetReleased(offset, hi)
            else:
                n = min(n, lo - offset)  # never across the gap
        return n

    cdef int _copy_out(self, char *dst, Py_ssize_t offset, Py_ssize_t n) except -1:
        """pread committed [offset, offset + n) into dst, one segment at a time."""
        cdef Py_ssize_t idx, pos, k
        if ROUTER_DEBUG:
            assert offset + n <= self._committed
        while n > 0:
            idx = offset // self._segsize
            pos = offset % self._segsize
            k = min(n, self._segsize - pos)
            if ROUTER_DEBUG:
                assert self._slots[idx] >= 0, "read from a slot given back"
            self._store._pread(self._slots[idx], dst, k, pos)
            dst += k
            offset += k
            n -= k
        return 0

    def read(self, Py_ssize_t offset, Py_ssize_t max_len):
        """Committed bytes [offset, min(offset + max_len, committed)) as one new bytes object."""
        cdef Py_ssize_t n = self._span(offset, max_len)
        if n == 0:
            return b""
        self._readers += 1  # with the GIL, right after _span's check: close() can't come between
        try:
            out = PyBytes_FromStringAndSize(NULL, n)
            self._copy_out(PyBytes_AS_STRING(out), offset, n)
        finally:
            self._leave_reader()
        return out

    def read_frame(self, Py_ssize_t offset, Py_ssize_t max_len):
        """Like read(), as the wire form of protobuf `bytes data = 1`; b"" when there is nothing."""
        cdef Py_ssize_t n = self._span(offset, max_len)
        cdef unsigned char *p
        if n == 0:
            return b""
        self._readers += 1
        try:
            out = PyBytes_FromStringAndSize(NULL, 1 + _varint_len(<size_t>n) + n)
            p = <unsigned char *>PyBytes_AS_STRING(out)
            p[0] = 0x0A  # field 1, wire type 2 (length-delimited)
            p = _put_varint(p + 1, <size_t>n)
            self._copy_out(<char *>p, offset, n)
        finally:
            self._leave_reader()
        return out
