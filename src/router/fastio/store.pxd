# SegmentStore's attributes and C methods (implemented in store.pxi; included by _fastio.pxd).

cdef enum:
    # One readv() takes at most this much; it matches the 1 MiB pipes the engine asks for.
    SCRATCH_SIZE = 1024 * 1024


cdef class SegmentStore:
    cdef:
        bytes _dir                  # fs-encoded directory
        Py_ssize_t _segsize
        Py_ssize_t _per_file        # slots in one arena file
        int *_fds                   # arena i's descriptor, -1 until first needed
        Py_ssize_t _nfiles
        Py_ssize_t _cap
        Py_ssize_t _next            # slots created so far; the next fresh slot
        Py_ssize_t *_free           # slots closed logs gave back, handed out again first (LIFO)
        Py_ssize_t _nfree
        Py_ssize_t _free_cap        # kept > every slot number: giving a slot back never allocates
        Py_ssize_t _npunched        # the bottom _npunched free slots hold no pages (punch_free())
        # The top _nheld free slots are held back (hold_freed()): not handed out until recycle_held().
        bint _hold
        Py_ssize_t _nheld
        Py_ssize_t _users           # calls inside a syscall on an arena right now
        # Startup: until finish_restore() or the first allocation, logs may be restored; _claimed
        # holds the slots restored logs hold (a closed or released one leaves it).
        bint _restoring
        set _claimed
        # The drain buffer, made on first use. Only the loop thread drains, so one serves every
        # log of the store; a concurrent drain (never done by the engine) gets a temporary one.
        char *_scratch
        bint _scratch_busy
        bint _closed

    cdef bytes _path(self, Py_ssize_t i)
    cdef str _arena_name(self, Py_ssize_t slot)
    cdef int _close_fds(self) except -1
    # The drain buffer: taken by a drain, given back after it.
    cdef char *_take_scratch(self) except NULL
    cdef int _give_scratch(self, char *buf) except -1
    cdef int _free_scratch(self) except -1
    # Around every pread/pwrite/splice on an arena: descriptors close only once no call is inside.
    cdef int _enter(self) except -1
    cdef int _leave(self) except -1
    # Slots: handed out, claimed by restored logs, given back.
    cdef int _grow_free(self, Py_ssize_t upto) except -1
    cdef int _open_arena(self, Py_ssize_t f, bint create) except -1
    cdef Py_ssize_t _allocate(self) except -1
    cdef int _claim(self, Py_ssize_t *slots, Py_ssize_t n, Py_ssize_t committed) except -1
    cdef int _free_slot(self, Py_ssize_t slot) except -1
    # Where a slot lives: arena descriptor, byte offset in it.
    cdef inline int _fd(self, Py_ssize_t slot) noexcept
    cdef inline Py_ssize_t _base(self, Py_ssize_t slot) noexcept
    # I/O at a position within a slot, the GIL released around each syscall.
    cdef int _pwrite(self, Py_ssize_t slot, const char *src, Py_ssize_t k, Py_ssize_t pos) except -1
    cdef ssize_t _splice_in(self, int fd, Py_ssize_t slot, Py_ssize_t k, Py_ssize_t pos) except? -2
    cdef int _pread(self, Py_ssize_t slot, char *dst, Py_ssize_t k, Py_ssize_t pos) except -1
