# Calls that never block, for the loop thread: epoll_watch, close_now, exit_status, reap; and
# reserve_space, which may wait for the disk and so lets the GIL go. Included
# by _fastio.pyx; they declare nothing of their own (the C declarations are in includes/system.pxd).
#
# These keep the GIL: letting it go and taking it back cost the loop thread 30-50 us a call while
# spawner and gRPC threads wanted it (a batch of `true`s, cProfile on the loop thread), where the
# calls themselves take a few us (benchmarks/HISTORY.md, "The loop thread and the GIL").

from libc.errno cimport EINTR, errno
from posix.unistd cimport close as c_close

from .includes.system cimport (
    CLD_EXITED,
    EPOLL_CTL_ADD,
    EPOLL_CTL_DEL,
    EPOLLIN,
    FALLOC_FL_KEEP_SIZE,
    P_PIDFD,
    WEXITED,
    WNOHANG,
    WNOWAIT,
    epoll_ctl,
    epoll_event,
    fallocate,
    rusage,
    siginfo_t,
    wait4,
    waitid,
)


def epoll_watch(int epfd, int fd, bint add):
    """epoll_ctl(2): ADD `fd` for reading (level-triggered), or DEL it. OSError as the call's."""
    cdef epoll_event event
    event.events = EPOLLIN
    event.data.fd = fd
    if epoll_ctl(epfd, EPOLL_CTL_ADD if add else EPOLL_CTL_DEL, fd, &event) != 0:
        _raise_os_error(errno)


def close_now(int fd):
    """close(2) of a pipe end, a terminal's master or a pidfd. OSError as the call's (EINTR
    counts as closed, as on Linux it is)."""
    if c_close(fd) != 0 and errno != EINTR:
        _raise_os_error(errno)


def exit_status(int pidfd):
    """How the process behind `pidfd` ended, without reaping it (waitid WNOWAIT): None while it
    runs, else (True, exit code) or (False, signal number)."""
    cdef siginfo_t info
    info.si_pid = 0
    if waitid(P_PIDFD, pidfd, &info, WEXITED | WNOHANG | WNOWAIT) != 0:
        _raise_os_error(errno)
    if info.si_pid == 0:
        return None
    return (info.si_code == CLD_EXITED, info.si_status)


def reap(int pid):
    """wait4(pid, WNOHANG): None while it runs, else its (user CPU s, system CPU s, peak RSS bytes)."""
    cdef rusage usage
    cdef int status = 0
    cdef int got = wait4(pid, &status, WNOHANG, &usage)
    if got < 0:
        _raise_os_error(errno)
    if got == 0:
        return None
    return (usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6,
            usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6, usage.ru_maxrss * 1024)


def reserve_space(int fd, long long offset, long long length):
    """fallocate(2) with KEEP_SIZE: the blocks of [offset, offset + length) of `fd` allocated and
    its size unchanged, so that writing there later cannot fail for want of space. OSError as the
    call's (ENOSPC: the filesystem has not that much free)."""
    cdef int rc, err
    while True:
        with nogil:
            rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length)
            err = errno if rc < 0 else 0
        if rc == 0:
            return None
        if err != EINTR:
            _raise_os_error(err)
