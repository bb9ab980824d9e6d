# cython: cdivision=True
"""Segmented append-only logs in shared files: the exec router's output hot path.

A `SegmentStore` hands out fixed-size segment slots in a few large sparse files ("arenas") whose
descriptors it keeps open; a `SegmentedLog` is a list of slots. One writer (the event-loop
thread) splice()s child pipes straight into the slot at start + position (a pty, which cannot be
spliced, is readv()ed into the store's drain buffer and pwrite()n there); any number of reader threads pread() committed ranges straight into the
message they send. Segment = offset // segment size: seeks are O(1). A closed log's slots go back
to the store, which hands them out again before it makes new ones; so do those of the one range a
running log released (release(): the per-exec output cap), whose offsets reads then refuse with
OffsetReleased. After a restart, SegmentedLog.restore() rebuilds logs from a journal's (slots,
committed, eof) on a new store over the same arena files (opened when needed, never truncated),
and SegmentStore.finish_restore() frees every slot no restored log claimed.

Why (benchmarks/RESULTS.md, "Which kind of log"): draining 4 GiB into a file mapping ran at
643 MB/s and left every touched page in RSS (4109 MiB); readv + pwrite ran at 1523 MB/s in 13 MiB.
Into recycled slots splice() takes one copy fewer: 2221 against 1411 MB/s ("Issue 7: splice").
Streams share arena files rather than having a file each: that alone took the fan-out rate from
417 to 505 execs/s ("Earlier states" there).

Coordination relies on the GIL: `_committed` only grows, is published after the bytes are in
the page cache, and bytes below it never change. Nothing is freed under a call still using it (the
py-pgproto rule for exported buffers): the store closes its descriptors once no call is inside a
pread/pwrite, a closed log gives its slots back once no reader (nor the writer) is inside it,
released segments' slots go back once no reader is inside the log, and the drain buffer is freed once no drain holds it. `counters()` counts all of these, exactly, for
leak checks. `tests/reference_log.py` is its pure-Python twin, the test oracle.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EAGAIN, EINTR, EMFILE, ENFILE, ENOMEM, errno
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, O_WRONLY, fcntl
from posix.unistd cimport close as c_close

from posix.signal cimport kill, sigaddset, sigemptyset, sigset_t
from posix.wait cimport waitpid
from libc.signal cimport SIGKILL, SIGPIPE
from .includes.system cimport (
    CLD_EXITED,
    EPOLL_CTL_ADD,
    EPOLL_CTL_DEL,
    EPOLLIN,
    EWOULDBLOCK,
    F_SETPIPE_SZ,
    POSIX_SPAWN_SETPGROUP,
    POSIX_SPAWN_SETSIGDEF,
    POSIX_SPAWN_SETSIGMASK,
    ROUTER_DEBUG,
    SIGXFSZ,
    posix_spawn,
    posix_spawn_file_actions_adddup2,
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
    P_PIDFD,
    SYS_pidfd_open,
    WEXITED,
    WNOHANG,
    WNOWAIT,
    epoll_ctl,
    epoll_event,
    pipe2,
    rusage,
    siginfo_t,
    syscall,
    wait4,
    waitid,
)


# Live objects and calls in flight, for leak checks (see counters()). Always kept: a few integer
# updates, all with the GIL held; debug builds assert none goes negative.
cdef struct Counts:
    Py_ssize_t open_stores          # initialised and not closed
    Py_ssize_t open_logs            # initialised and not closed (close() or dealloc counts once)
    Py_ssize_t syscalls_in_flight   # calls inside a pread/pwrite on a store (its _users, summed)
    Py_ssize_t slots_in_use         # slots handed to logs and not given back
    Py_ssize_t scratch_buffers      # drain buffers allocated: stores' own and temporary ones

cdef Counts _counts


cdef inline int _count(Py_ssize_t *counter, Py_ssize_t delta) except -1:
    counter[0] += delta
    if ROUTER_DEBUG:
        assert counter[0] >= 0, "a counter went negative"
    return 0


def counters():
    """Live stores and logs, calls inside a pread/pwrite, slots held by logs: all exact, so a test
    can check they are back where they were."""
    return {
        "open_stores": _counts.open_stores,
        "open_logs": _counts.open_logs,
        "syscalls_in_flight": _counts.syscalls_in_flight,
        "slots_in_use": _counts.slots_in_use,
        "scratch_buffers": _counts.scratch_buffers,
    }


cdef int _raise_os_error(int err, object filename=None) except -1:
    """The one errno -> OSError conversion; OSError() picks the subclass (FileNotFoundError, ...)."""
    if filename is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), filename)


# Every syscall loop below follows one convention (uvloop's): errno is read into a local inside the
# nogil block right after the call, before anything else can change it; EINTR runs the signal
# handlers with the GIL (PyErr_CheckSignals, PEP 475: a handler may raise) and retries; EAGAIN
# where it can happen means no progress; every other error goes through _raise_os_error.


cdef inline bint _would_block(int err) noexcept nogil:
    # Two statements on purpose: EAGAIN == EWOULDBLOCK on Linux would make a
    # duplicate case in the C switch Cython emits for `a == X or a == Y`.
    if err == EAGAIN:
        return True
    return err == EWOULDBLOCK


include "fastio/store.pxi"


include "fastio/log.pxi"


# -- spawning ----------------------------------------------------------------------------------

# What `spawn` takes for an output descriptor besides a real one: subprocess.DEVNULL and
# subprocess.STDOUT's values, so a caller passes those as they are (a test checks they match).
cdef enum:
    C_SPAWN_DEVNULL = -3  # open /dev/null
    C_SPAWN_STDOUT = -2   # (stderr only) the same as stdout
    C_SPAWN_PIPE = -1     # a new pipe; the router keeps the other end
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
          int pipe_size=0):
    """posix_spawn(3) (posix_spawnp(3) with `search_path`) of `path` with `argv` and `envp` (lists
    of bytes), in a process group of its own, SIGPIPE and SIGXFSZ at their defaults and no signal
    blocked; its stdin, stdout and stderr are dup2()ed from the given descriptors, or are new pipes
    where SPAWN_PIPE is given (output pipes of `pipe_size` bytes where the system allows), or
    /dev/null where SPAWN_DEVNULL is; stderr may be SPAWN_STDOUT.

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
            err = _spawn_piped(c_path, c_argv, c_envp, fds, pipes, search_path, pipe_size, &pid, &pidfd, &stage)
    finally:
        PyMem_Free(c_envp)
        PyMem_Free(c_argv)
    if err != 0:
        _raise_os_error(err, os.fsdecode(path) if stage == _STAGE_EXEC and err not in _RESOURCE_ERRORS else None)
    return (pid, pidfd, pipes[0][1], pipes[1][0], pipes[2][0])


cdef enum:
    _STAGE_PIPES = 0
    _STAGE_EXEC = 1
    _STAGE_PIDFD = 2


cdef int _spawn_piped(const char *path, char **argv, char **envp, int fds[3], int pipes[3][2], bint search_path,
                      int pipe_size, int *pid, int *pidfd, int *stage) noexcept nogil:
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
    sigemptyset(&empty)
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGPIPE)
    sigaddset(&defaults, SIGXFSZ)
    if err == 0:
        err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
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


# -- calls that never block, for the loop thread ---------------------------------------------------
# These keep the GIL: letting it go and taking it back cost the loop thread 30-50 us a call while
# spawner and gRPC threads wanted it (a batch of `true`s, cProfile on the loop thread), where the
# calls themselves take a few us (benchmarks/RESULTS.md, issue 10).


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
