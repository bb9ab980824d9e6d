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
    enum: F_SETPIPE_SZ
    int pipe2(int *fds, int flags)
    # Punching a hole gives a range's pages back to the filesystem (the file keeps its size).
    enum: FALLOC_FL_PUNCH_HOLE
    enum: FALLOC_FL_KEEP_SIZE
    int fallocate(int fd, int mode, long long offset, long long length)


cdef extern from "<sys/syscall.h>" nogil:
    enum: SYS_pidfd_open


cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)


cdef extern from "<sys/ioctl.h>" nogil:
    enum: FIONREAD
    int ioctl(int fd, unsigned long request, ...)


from posix.signal cimport sigset_t


cdef extern from "<spawn.h>" nogil:
    ctypedef struct posix_spawn_file_actions_t:
        pass
    ctypedef struct posix_spawnattr_t:
        pass
    enum: POSIX_SPAWN_SETPGROUP, POSIX_SPAWN_SETSIGDEF, POSIX_SPAWN_SETSIGMASK
    int posix_spawn_file_actions_init(posix_spawn_file_actions_t *actions)
    int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *actions)
    int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *actions, int fd, int newfd)
    int posix_spawn_file_actions_addfchdir_np(posix_spawn_file_actions_t *actions, int fd)  # glibc 2.34, musl 1.1.24
    int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *actions, int fd, const char *path,
                                         int oflag, unsigned int mode)
    int posix_spawnattr_init(posix_spawnattr_t *attr)
    int posix_spawnattr_destroy(posix_spawnattr_t *attr)
    int posix_spawnattr_setflags(posix_spawnattr_t *attr, short flags)
    int posix_spawnattr_setpgroup(posix_spawnattr_t *attr, int pgroup)
    int posix_spawnattr_setsigdefault(posix_spawnattr_t *attr, const sigset_t *sigdefault)
    int posix_spawnattr_setsigmask(posix_spawnattr_t *attr, const sigset_t *sigmask)
    int posix_spawn(int *pid, const char *path, const posix_spawn_file_actions_t *actions,
                    const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
    int posix_spawnp(int *pid, const char *file, const posix_spawn_file_actions_t *actions,
                     const posix_spawnattr_t *attr, char *const argv[], char *const envp[])


cdef extern from "<sys/epoll.h>" nogil:
    enum: EPOLLIN, EPOLL_CTL_ADD, EPOLL_CTL_DEL
    union epoll_data_t "epoll_data":
        int fd
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)


cdef extern from "<sys/resource.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec
    struct rusage:
        timeval ru_utime
        timeval ru_stime
        long ru_maxrss


cdef extern from "<sys/wait.h>" nogil:
    enum: P_PIDFD, WEXITED, WNOHANG, WNOWAIT, CLD_EXITED
    ctypedef struct siginfo_t:
        int si_pid
        int si_code
        int si_status
    int waitid(int idtype, unsigned int id, siginfo_t *infop, int options)
    int wait4(int pid, int *status, int options, rusage *usage)
