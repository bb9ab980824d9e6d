# C declarations that Cython's bundled libc.*/posix.* cimports lack.
# Everything else (readv/iovec, pread, pwrite, open, close, errno) comes
# from those bundled .pxd files.

cdef extern from "<errno.h>" nogil:
    # Same value as EAGAIN on Linux, but POSIX allows them to differ.
    enum: EWOULDBLOCK


cdef extern from *:
    """
    #ifndef ROUTER_DEBUG
    #define ROUTER_DEBUG 0
    #endif
    """
    # Defined to 1 by setup.py for ROUTER_DEBUG=1 builds; gates invariant
    # checks that the C compiler drops entirely from release builds.
    enum: ROUTER_DEBUG


cdef extern from "<fcntl.h>" nogil:
    # Linux; setup.py's _GNU_SOURCE... is implied by Python.h, which Cython includes first.
    ssize_t splice(int fd_in, long long *off_in, int fd_out, long long *off_out, size_t len,
                   unsigned int flags)


cdef extern from "<sys/ioctl.h>" nogil:
    enum: FIONREAD
    int ioctl(int fd, unsigned long request, ...)
