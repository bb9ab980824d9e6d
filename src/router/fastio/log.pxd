# SegmentedLog's attributes and C methods (implemented in log.pxi; included by _fastio.pxd).

cdef class SegmentedLog:
    cdef:
        SegmentStore _store
        Py_ssize_t _segsize
        Py_ssize_t *_slots          # segment i lives in store slot _slots[i]; -1 once given back
        Py_ssize_t _nslots
        Py_ssize_t _cap
        Py_ssize_t _committed
        # Released segments [_rel_start, _rel_end) (empty: none), reads refuse them at once; their
        # slots go back to the store once no reader is inside: [_rel_start, _ret_end) went back.
        Py_ssize_t _rel_start
        Py_ssize_t _rel_end
        Py_ssize_t _ret_end
        Py_ssize_t _readers         # calls inside read/read_frame (GIL released in pread)
        Py_ssize_t _writers         # calls inside append/drain (one, by contract)
        bint _eof
        bint _closed
        char *_stash                # bytes taken from a pipe that could not be written yet
        bint _no_splice             # drain's fd is no pipe (a pty): readv() + pwrite() instead
        Py_ssize_t _stash_len

    # Leaving a call, and giving slots back once no call is inside.
    cdef inline int _leave_reader(self) except -1
    cdef inline int _leave_writer(self) except -1
    cdef int _release_if_idle(self) except -1
    cdef int _return_released(self) except -1
    cdef int _release_slots(self) except -1
    # Writer side: append, drain.
    cdef Py_ssize_t _slot(self, Py_ssize_t idx) except -1
    cdef int _write(self, const char *src, Py_ssize_t n) except -1
    cdef int _write_or_keep(self, const char *src, Py_ssize_t n) except -1
    cdef int _flush_stash(self) except -1
    cdef tuple _drain(self, int fd, Py_ssize_t budget)
    cdef Py_ssize_t _splice_drain(self, int fd, Py_ssize_t budget) except? -2
    # Reader side: read, read_frame.
    cdef Py_ssize_t _span(self, Py_ssize_t offset, Py_ssize_t max_len) except -1
    cdef int _copy_out(self, char *dst, Py_ssize_t offset, Py_ssize_t n) except -1
