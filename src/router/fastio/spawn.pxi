# spawn(): posix_spawn(3) of a child in a process group of its own, with new pipes, /dev/null or
# given descriptors as its stdio, and a pidfd for it; the GIL is released from the first pipe to
# the pidfd. Included by _fastio.pyx; its C constants are declared in spawn.pxd.

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EAGAIN, EMFILE, ENFILE, ENOMEM, errno
from libc.signal cimport SIGKILL
from libc.string cimport memset
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, O_WRONLY, fcntl
from posix.signal cimport kill, sigemptyset, sigset_t
from posix.unistd cimport close as c_close
from posix.unistd cimport pwrite
from posix.wait cimport waitpid

from .includes.system cimport (
    F_SETPIPE_SZ,
    POSIX_SPAWN_SETPGROUP,
    POSIX_SPAWN_SETSIGDEF,
    POSIX_SPAWN_SETSIGMASK,
    SYS_pidfd_open,
    pipe2,
    posix_spawn,
    posix_spawn_file_actions_adddup2,
    posix_spawn_file_actions_addfchdir_np,
    posix_spawn_file_actions_addopen,
    posix_spawn_file_actions_destroy,
    posix_spawn_file_actions_init,
    posix_spawn_file_actions_t,
    posix_spawnattr_destroy,
    posix_spawnattr_init,
    posix_spawnattr_setflags,
    posix_spawnattr_setpgroup,
    posix_spawnattr_setsigdefault,
    posix_spawnattr_setsigmask,
    posix_spawnattr_t,
    posix_spawnp,
    syscall,
)


# The C_SPAWN_* values (spawn.pxd) for Python callers.
SPAWN_DEVNULL = C_SPAWN_DEVNULL
SPAWN_STDOUT = C_SPAWN_STDOUT
SPAWN_PIPE = C_SPAWN_PIPE

# Errors of the spawn itself rather than of the program: the caller may retry later.
_RESOURCE_ERRORS = frozenset({EAGAIN, ENOMEM, EMFILE, ENFILE})


cdef char **_c_strings(list items, list keep) except NULL:
    """A NULL-terminated char* array over bytes objects (kept alive by `keep`); PyMem_Free it."""
    cdef Py_ssize_t i, n = len(items)
    cdef char **out = <char **>PyMem_Malloc((n + 1) * sizeof(char *))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        item = items[i]
        if not isinstance(item, bytes) or b"\0" in item:
            PyMem_Free(out)
            raise ValueError(f"item {i} is not bytes without NUL")
        keep.append(item)
        out[i] = PyBytes_AS_STRING(item)
    out[n] = NULL
    return out


def spawn(bytes path, list argv, list envp, int stdin_fd, int stdout_fd, int stderr_fd, bint search_path=False,
          int pipe_size=0, int cwd_fd=-1, bint own_group=True, int pid_fd=-1):
    """posix_spawn(3) (posix_spawnp(3) with `search_path`) of `path` with `argv` and `envp` (lists
    of bytes), in a process group of its own (unless not `own_group`), in the directory `cwd_fd`
    refers to (if not -1), every signal at its default disposition whatever the router's (one it
    ignores would stay ignored across exec) and none blocked; its stdin, stdout and stderr are dup2()ed from the given descriptors, or are new pipes
    where SPAWN_PIPE is given (output pipes of `pipe_size` bytes where the system allows), or
    /dev/null where SPAWN_DEVNULL is; stderr may be SPAWN_STDOUT. With `pid_fd`, the child's pid
    (a native int) is written at offset 0 of that file the moment the spawn returns, still without
    the GIL: a record a restarted router can find the child by, however long this thread then
    waits for the GIL (a failed write is ignored: the caller journals the pid too).

    Returns (pid, pidfd, stdin, stdout, stderr): a pidfd for the child and the router's ends of
    the pipes (close-on-exec, -1 where none was asked for). The child's ends are closed before
    it returns, so a caller never holds them.

    Unlike os.posix_spawn, the GIL is released from the first pipe to the pidfd, the vfork child's
    run up to its exec included (most of a millisecond), so the router's other threads go on
    meanwhile. OSError on failure, with nothing left open or running: with `filename` set when the
    program could not be run, without it when the system could not start a process or make its
    pipes (EAGAIN, ENOMEM, EMFILE, ENFILE)."""
    cdef int pid = 0, pidfd = -1, err = 0, stage = 0
    cdef int fds[3]
    cdef int pipes[3][2]
    cdef char **c_argv = NULL
    cdef char **c_envp = NULL
    cdef const char *c_path = path
    if b"\0" in path or not argv:
        raise ValueError("path holds NUL, or argv is empty")
    fds[0], fds[1], fds[2] = stdin_fd, stdout_fd, stderr_fd
    keep = []
    c_argv = _c_strings(argv, keep)
    try:
        c_envp = _c_strings(envp, keep)
    except BaseException:
        PyMem_Free(c_argv)
        raise
    try:
        with nogil:
            err = _spawn_piped(c_path, c_argv, c_envp, fds, pipes, search_path, pipe_size, cwd_fd, own_group,
                               &pid, &pidfd, &stage)
            if err == 0 and pid_fd >= 0:
                pwrite(pid_fd, &pid, sizeof(pid), 0)
    finally:
        PyMem_Free(c_envp)
        PyMem_Free(c_argv)
    if err != 0:
        _raise_os_error(err, os.fsdecode(path) if stage == _STAGE_EXEC and err not in _RESOURCE_ERRORS else None)
    return (pid, pidfd, pipes[0][1], pipes[1][0], pipes[2][0])


cdef int _spawn_piped(const char *path, char **argv, char **envp, int fds[3], int pipes[3][2], bint search_path,
                      int pipe_size, int cwd_fd, bint own_group, int *pid, int *pidfd, int *stage) noexcept nogil:
    """spawn() without the GIL: pipes, the spawn, the child's ends closed, a pidfd. Returns 0 or
    an errno, with `stage` saying which step failed and everything it made undone."""
    cdef posix_spawn_file_actions_t actions
    cdef posix_spawnattr_t attr
    cdef sigset_t defaults, empty
    cdef int err = 0, i, child_end
    for i in range(3):
        pipes[i][0] = pipes[i][1] = -1
    stage[0] = _STAGE_PIPES
    for i in range(3):
        if fds[i] == C_SPAWN_PIPE:
            if pipe2(pipes[i], O_CLOEXEC) != 0:
                err = errno
                _close_pipes(pipes, False)
                _close_pipes(pipes, True)
                return err
            if i > 0 and pipe_size > 0:
                fcntl(pipes[i][0], F_SETPIPE_SZ, pipe_size)  # an optimisation: a lower limit is fine
    posix_spawn_file_actions_init(&actions)
    posix_spawnattr_init(&attr)
    for i in range(3):
        if err != 0:
            break
        child_end = (pipes[i][0] if i == 0 else pipes[i][1]) if fds[i] == C_SPAWN_PIPE else fds[i]
        err = _add_stdio(&actions, child_end, i)
    if err == 0 and cwd_fd >= 0:
        err = posix_spawn_file_actions_addfchdir_np(&actions, cwd_fd)
    sigemptyset(&empty)
    # Every signal, the C library's own (32, 33) too, which sigfillset() leaves out: glibc's child
    # walks all 64 either way (reading each disposition, or here setting it), so this costs nothing.
    memset(&defaults, 0xff, sizeof(defaults))
    if err == 0:
        err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
                                       | (POSIX_SPAWN_SETPGROUP if own_group else 0))
    if err == 0:
        err = posix_spawnattr_setpgroup(&attr, 0)
    if err == 0:
        err = posix_spawnattr_setsigdefault(&attr, &defaults)
    if err == 0:
        err = posix_spawnattr_setsigmask(&attr, &empty)
    if err == 0:
        stage[0] = _STAGE_EXEC
        if search_path:
            err = posix_spawnp(pid, path, &actions, &attr, argv, envp)
        else:
            err = posix_spawn(pid, path, &actions, &attr, argv, envp)
    posix_spawnattr_destroy(&attr)
    posix_spawn_file_actions_destroy(&actions)
    _close_pipes(pipes, False)  # the child has its own copies, or never ran
    if err != 0:
        _close_pipes(pipes, True)
        return err
    stage[0] = _STAGE_PIDFD
    pidfd[0] = <int>syscall(SYS_pidfd_open, pid[0], 0)
    if pidfd[0] < 0:
        # Nothing may run that no one watches: kill and reap it before saying so.
        err = errno
        kill(-pid[0], SIGKILL)
        kill(pid[0], SIGKILL)
        waitpid(pid[0], NULL, 0)
        _close_pipes(pipes, True)
        return err
    return 0


cdef void _close_pipes(int pipes[3][2], bint router_ends) noexcept nogil:
    """Close the child's ends of the pipes (stdin's read end, the outputs' write ends), or the router's."""
    cdef int i, end
    for i in range(3):
        end = (1 if i == 0 else 0) if router_ends else (0 if i == 0 else 1)
        if pipes[i][end] >= 0:
            c_close(pipes[i][end])
            pipes[i][end] = -1


cdef int _add_stdio(posix_spawn_file_actions_t *actions, int fd, int target) noexcept nogil:
    """The child's descriptor `target` (0, 1, 2): /dev/null (read for stdin, written otherwise),
    stdout's (SPAWN_STDOUT), or a dup2() of `fd`."""
    if fd == C_SPAWN_DEVNULL:
        return posix_spawn_file_actions_addopen(actions, target, b"/dev/null", O_RDONLY if target == 0 else O_WRONLY, 0)
    if fd == C_SPAWN_STDOUT:
        return posix_spawn_file_actions_adddup2(actions, 1, target)
    return posix_spawn_file_actions_adddup2(actions, fd, target)
