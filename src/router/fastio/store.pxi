# SegmentStore: fixed-size segment slots in a few large sparse arena files whose descriptors it
# keeps open; the free list that hands given-back slots out again; a restored log's claims; and
# pread/pwrite/splice at a position within a slot. Included by _fastio.pyx; attributes and C
# methods are declared in store.pxd.

from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EBADF, EINTR, EINVAL, EIO, EOPNOTSUPP, errno
from libc.string cimport memmove
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDWR
from posix.fcntl cimport open as c_open
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport _SC_PAGESIZE, fdatasync, pread, pwrite, sysconf
from posix.unistd cimport close as c_close

from .includes.system cimport FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, ROUTER_DEBUG, fallocate, splice


cdef class SegmentStore:
    def __cinit__(self, *args, **kwargs):
        self._dir = None
        self._fds = NULL
        self._nfiles = self._cap = self._next = self._users = 0
        self._free = NULL
        self._nfree = self._free_cap = self._npunched = self._nheld = 0
        self._hold = False
        self._scratch = NULL
        self._scratch_busy = False
        self._restoring = True
        self._claimed = set()
        self._closed = True  # until __init__ ran

    def __init__(self, directory, Py_ssize_t segment_size=32 * 1024 * 1024, Py_ssize_t slots_per_file=1024):
        if self._dir is not None:
            raise RuntimeError("SegmentStore is already initialised")
        cdef long page = sysconf(_SC_PAGESIZE)
        if segment_size <= 0 or segment_size % page != 0:
            raise ValueError(
                f"segment_size must be a positive multiple of the page size ({page}), "
                f"got {segment_size}"
            )
        if slots_per_file <= 0:
            raise ValueError(f"slots_per_file must be positive, got {slots_per_file}")
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(2, "log directory does not exist", directory)
        self._dir = os.fsencode(directory)
        self._segsize = segment_size
        self._per_file = slots_per_file
        self._closed = False
        _count(&_counts.open_stores, 1)

    def __dealloc__(self):
        if not self._closed:
            self._closed = True
            _count(&_counts.open_stores, -1)
        self._close_fds()
        PyMem_Free(self._free)
        self._free = NULL
        if ROUTER_DEBUG:
            assert not self._scratch_busy  # a drain holds a reference
        self._free_scratch()

    @property
    def segment_size(self):
        return self._segsize

    @property
    def slots_used(self):
        """Slots made so far (the arenas' extent); given-back slots are reused before it grows."""
        return self._next

    @property
    def closed(self):
        return self._closed

    def __repr__(self):
        return (f"<router._fastio.SegmentStore dir={os.fsdecode(self._dir or b'')!r} "
                f"slots_used={self._next} closed={self._closed}>")

    cdef bytes _path(self, Py_ssize_t i):
        return b"%s/arena-%08d" % (self._dir, i)

    cdef str _arena_name(self, Py_ssize_t slot):
        """The arena file holding slot, as OSError's filename."""
        return os.fsdecode(self._path(slot // self._per_file))

    cdef int _close_fds(self) except -1:
        cdef Py_ssize_t i
        cdef int fd, rc, err
        for i in range(self._nfiles):
            fd = self._fds[i]
            self._fds[i] = -1  # at once: a stale number could name another file
            if fd >= 0:
                with nogil:
                    rc = c_close(fd)
                    err = errno if rc < 0 else 0
                # Never retried: Linux frees the descriptor even when close() reports EINTR, so a
                # retry could close one another thread just opened (PEP 475 leaves close() alone).
                # Nothing else to do on error either: the descriptor is gone.
                if ROUTER_DEBUG:
                    assert err != EBADF, "arena descriptor closed twice"
        PyMem_Free(self._fds)
        self._fds = NULL
        self._nfiles = self._cap = 0
        return 0

    def close(self):
        """Idempotent. Descriptors close once no call is inside a pread/pwrite, the drain buffer once
        no drain holds it; files stay. Logs of the store can no longer read, append or drain."""
        if not self._closed:
            self._closed = True
            _count(&_counts.open_stores, -1)
        if self._users == 0:
            self._close_fds()
        self._free_scratch()  # unless a drain is using it: then when it gives it back

    cdef char *_take_scratch(self) except NULL:
        cdef char *buf
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if not self._scratch_busy:
            if self._scratch == NULL:
                self._scratch = <char *>PyMem_Malloc(SCRATCH_SIZE)
                if self._scratch == NULL:
                    raise MemoryError()
                _count(&_counts.scratch_buffers, 1)
            self._scratch_busy = True
            return self._scratch
        buf = <char *>PyMem_Malloc(SCRATCH_SIZE)
        if buf == NULL:
            raise MemoryError()
        _count(&_counts.scratch_buffers, 1)
        return buf

    cdef int _give_scratch(self, char *buf) except -1:
        if buf == self._scratch:
            self._scratch_busy = False
            if self._closed:
                self._free_scratch()
        else:
            PyMem_Free(buf)
            _count(&_counts.scratch_buffers, -1)
        return 0

    cdef int _free_scratch(self) except -1:
        if self._scratch != NULL and not self._scratch_busy:
            PyMem_Free(self._scratch)
            self._scratch = NULL
            _count(&_counts.scratch_buffers, -1)
        return 0

    cdef int _enter(self) except -1:
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        self._users += 1
        _count(&_counts.syscalls_in_flight, 1)
        return 0

    cdef int _leave(self) except -1:
        self._users -= 1
        _count(&_counts.syscalls_in_flight, -1)
        if self._users == 0 and self._closed:
            self._close_fds()
        return 0

    cdef int _grow_free(self, Py_ssize_t upto) except -1:
        """Room on the free list for every slot below upto."""
        cdef Py_ssize_t n
        cdef Py_ssize_t *grown
        if upto > self._free_cap:
            n = max(16, self._free_cap * 2, upto)
            grown = <Py_ssize_t *>PyMem_Realloc(self._free, n * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self._free = grown
            self._free_cap = n
        return 0

    cdef int _open_arena(self, Py_ssize_t f, bint create) except -1:
        """Open arena file f unless it is open: created (sparse) if `create`, never truncated.
        Without `create` a missing file raises FileNotFoundError."""
        cdef Py_ssize_t n, i
        cdef int *grown
        cdef int fd = -1, err, flags = O_RDWR | O_CLOEXEC
        cdef bytes path
        cdef const char *cpath
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if f < self._nfiles and self._fds[f] >= 0:
            return 0
        if f >= self._cap:
            n = max(4, self._cap * 2, f + 1)
            grown = <int *>PyMem_Realloc(self._fds, n * sizeof(int))
            if grown == NULL:
                raise MemoryError()
            self._fds = grown
            self._cap = n
        for i in range(self._nfiles, f + 1):
            self._fds[i] = -1
        self._nfiles = max(self._nfiles, f + 1)
        if create:
            flags |= O_CREAT
        path = self._path(f)
        cpath = path
        while True:
            with nogil:
                fd = c_open(cpath, flags, 0o600)
                err = errno if fd < 0 else 0
            if fd >= 0:
                break
            if err == EINTR:
                PyErr_CheckSignals()
            else:
                _raise_os_error(err, os.fsdecode(path))
        if self._closed or self._fds[f] >= 0:
            # close() ran while open() had the GIL released (_fds may be gone), or another thread
            # opened the file meanwhile.
            with nogil:
                c_close(fd)
            if self._closed:
                raise ValueError("I/O operation on closed segment store")
            return 0
        self._fds[f] = fd
        return 0

    cdef Py_ssize_t _allocate(self) except -1:
        """A slot for a log: the one given back last if any, else a fresh one. An arena file is
        created (sparse) when the first slot of it is taken, opened when one of it is handed out.
        Ends the restore phase (finish_restore())."""
        cdef Py_ssize_t slot
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if self._restoring:
            self.finish_restore()
        cdef Py_ssize_t usable = self._nfree - self._nheld
        if usable > 0:
            slot = self._free[usable - 1]
            self._open_arena(slot // self._per_file, True)  # a restored store opens them lazily
            # The held slots above it move down one, keeping their order (oldest lowest).
            memmove(&self._free[usable - 1], &self._free[usable], self._nheld * sizeof(Py_ssize_t))
            self._nfree -= 1
            self._npunched = min(self._npunched, usable - 1)
            _count(&_counts.slots_in_use, 1)
            return slot
        slot = self._next
        self._grow_free(slot + 1)
        self._open_arena(slot // self._per_file, True)
        self._next += 1
        _count(&_counts.slots_in_use, 1)
        return slot

    def finish_restore(self):
        """End of startup: every slot below slots_used that no restored log holds goes on the free
        list (lowest handed out first). Later restore() calls raise RuntimeError, as does a second
        finish_restore(). The first allocation does this by itself."""
        cdef Py_ssize_t s
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if not self._restoring:
            raise RuntimeError("the store is past its restore phase")
        self._grow_free(self._next)
        self._nfree = self._npunched = self._nheld = 0  # rebuilt: slots restored logs gave back are not in _claimed either
        for s in range(self._next - 1, -1, -1):
            if s not in self._claimed:
                self._free[self._nfree] = s
                self._nfree += 1
        self._restoring = False
        self._claimed = None
        return None

    cdef int _claim(self, Py_ssize_t *slots, Py_ssize_t n, Py_ssize_t committed) except -1:
        """Restore: check, then take, the slots of a log whose segment i lives in slots[i] (-1:
        released). Each must be >= 0, not held, in an existing arena file long enough for the
        segment's committed bytes. ValueError, with nothing taken, otherwise."""
        cdef Py_ssize_t i, slot, need, top = self._next
        cdef int fd, rc, err
        cdef struct_stat st
        cdef dict seen = {}
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if not self._restoring:
            raise RuntimeError("restore after the store handed out slots or finished restoring")
        for i in range(n):
            slot = slots[i]
            if slot == -1:
                continue
            if slot < 0:
                raise ValueError(f"slot {slot} (segment {i}) is out of range")
            if slot in self._claimed:
                raise ValueError(f"slot {slot} (segment {i}) is already held by a restored log")
            if slot in seen:
                raise ValueError(f"slot {slot} is claimed twice (segments {seen[slot]} and {i})")
            seen[slot] = i
            try:
                self._open_arena(slot // self._per_file, False)
            except FileNotFoundError:
                raise ValueError(
                    f"slot {slot} (segment {i}) is out of range: no arena file "
                    f"{self._arena_name(slot)}") from None
            fd = self._fd(slot)
            while True:
                with nogil:
                    rc = fstat(fd, &st)
                    err = errno if rc < 0 else 0
                if rc == 0:
                    break
                if err == EINTR:
                    PyErr_CheckSignals()
                else:
                    _raise_os_error(err, self._arena_name(slot))
            need = min(max(committed - i * self._segsize, 0), self._segsize)
            if st.st_size < self._base(slot) + need:
                raise ValueError(
                    f"slot {slot} (segment {i}) is short: {self._arena_name(slot)} holds "
                    f"{st.st_size} bytes, committed needs {self._base(slot) + need}")
            top = max(top, slot + 1)
        self._grow_free(top)
        for i in range(n):
            if slots[i] >= 0:
                self._claimed.add(slots[i])
                _count(&_counts.slots_in_use, 1)
        self._next = top
        return 0

    cdef int _free_slot(self, Py_ssize_t slot) except -1:
        """Take back a slot no log uses any more (its bytes stay until it is written again)."""
        cdef Py_ssize_t i
        if ROUTER_DEBUG:
            assert 0 <= slot < self._next and self._nfree < self._free_cap
            for i in range(self._nfree):
                assert self._free[i] != slot, "slot given back twice"
        if self._restoring:
            # finish_restore() rebuilds the free list from _claimed: leave it, and it is free.
            self._claimed.discard(slot)
        self._free[self._nfree] = slot
        self._nfree += 1
        if self._hold and not self._restoring:
            self._nheld += 1
        _count(&_counts.slots_in_use, -1)
        return 0

    def hold_freed(self):
        """From now on a slot given back is held back, neither handed out again nor punched,
        until recycle_held() lets it go: the engine lets a slot go only once its journal says the
        slot's old owner gave it up, so that a crash before that record never leaves a restored
        log holding a slot that new output overwrote."""
        self._hold = True

    @property
    def held_slots(self):
        """Slots given back and held back (hold_freed()), oldest first."""
        return self._nheld

    def recycle_held(self, Py_ssize_t n):
        """Let the `n` oldest held slots (those held when held_slots was `n`) be handed out again."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._nheld -= min(n, self._nheld)

    def sync(self):
        """fdatasync(2) every arena file open: the output written so far survives a power cut
        (`--durability machine`). OSError as the call's; ValueError once closed."""
        cdef Py_ssize_t i
        cdef int fd, rc, err
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        for i in range(self._nfiles):
            self._enter()
            try:
                fd = self._fds[i]
                if fd < 0:
                    continue
                with nogil:
                    rc = fdatasync(fd)
                    err = errno if rc < 0 else 0
            finally:
                self._leave()
            if rc < 0 and err != EINTR:
                _raise_os_error(err, self._arena_name(i * self._per_file))
        return None

    def punch_free(self):
        """Give the pages of free slots back to the filesystem (a hole punched in each, the arena
        keeping its size): a given-back slot otherwise keeps its pages for the next log, which
        a full filesystem needs more. Only slots given back since the last call are punched.
        Returns how many; 0 on a filesystem that cannot punch holes. ValueError once closed."""
        cdef Py_ssize_t i, slot, done = 0
        cdef long long at
        cdef int rc, err, fd
        if self._closed:
            raise ValueError("I/O operation on closed segment store")
        if self._restoring:
            return 0  # free slots are known only once the restore is over
        for i in range(self._npunched, self._nfree - self._nheld):
            slot = self._free[i]
            self._open_arena(slot // self._per_file, True)
            self._enter()
            try:
                fd = self._fd(slot)
                at = self._base(slot)
                with nogil:
                    rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, self._segsize)
                    err = errno if rc < 0 else 0
            finally:
                self._leave()
            if rc < 0 and err == EOPNOTSUPP:
                break
            if rc < 0 and err != EINTR:
                _raise_os_error(err, self._arena_name(slot))
            done += rc == 0
        self._npunched = self._nfree - self._nheld
        return done

    cdef inline int _fd(self, Py_ssize_t slot) noexcept:
        return self._fds[slot // self._per_file]

    cdef inline Py_ssize_t _base(self, Py_ssize_t slot) noexcept:
        return (slot % self._per_file) * self._segsize

    cdef int _pwrite(self, Py_ssize_t slot, const char *src, Py_ssize_t k, Py_ssize_t pos) except -1:
        """Write all of src at pos within the slot, or raise with nothing more written."""
        cdef ssize_t w
        cdef int fd, err
        cdef Py_ssize_t at
        self._enter()
        try:
            fd = self._fd(slot)
            at = self._base(slot) + pos
            while k > 0:
                with nogil:
                    w = pwrite(fd, src, <size_t>k, at)
                    err = errno if w < 0 else 0
                if w >= 0:
                    src += w
                    at += w
                    k -= w
                elif err == EINTR:
                    PyErr_CheckSignals()
                else:
                    _raise_os_error(err, self._arena_name(slot))
        finally:
            self._leave()
        return 0

    cdef ssize_t _splice_in(self, int fd, Py_ssize_t slot, Py_ssize_t k, Py_ssize_t pos) except? -2:
        """splice() up to k bytes from pipe fd into the slot at pos, without a copy through user
        space. Bytes read, 0 at EOF, -1 if the pipe is empty (non-blocking) or fd is no pipe
        (errno EINVAL is returned negated: -EINVAL). A failed write leaves the bytes in the pipe."""
        cdef ssize_t n
        cdef int err
        cdef long long at
        cdef int out
        self._enter()
        try:
            out = self._fd(slot)
            at = self._base(slot) + pos
            while True:
                with nogil:
                    # No SPLICE_F_NONBLOCK: the pipe's own O_NONBLOCK decides, as it does for readv().
                    n = splice(fd, NULL, out, &at, <size_t>k, 0)
                    err = errno if n < 0 else 0
                if n >= 0:
                    return n
                if err == EINTR:
                    PyErr_CheckSignals()
                elif _would_block(err):
                    return -1
                elif err == EINVAL:
                    return -EINVAL
                else:
                    _raise_os_error(err)
        finally:
            self._leave()

    cdef int _pread(self, Py_ssize_t slot, char *dst, Py_ssize_t k, Py_ssize_t pos) except -1:
        cdef ssize_t r
        cdef int fd, err
        cdef Py_ssize_t at
        self._enter()
        try:
            fd = self._fd(slot)
            at = self._base(slot) + pos
            while k > 0:
                with nogil:
                    r = pread(fd, dst, <size_t>k, at)
                    err = errno if r < 0 else 0
                if r > 0:
                    dst += r
                    at += r
                    k -= r
                elif r == 0:
                    _raise_os_error(EIO, self._arena_name(slot))  # committed bytes cannot be missing
                elif err == EINTR:
                    PyErr_CheckSignals()  # a reader blocked in pread must not delay signal handlers
                else:
                    _raise_os_error(err, self._arena_name(slot))
        finally:
            self._leave()
        return 0
