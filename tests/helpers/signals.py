"""Signals delivered while the hot path sleeps in a system call (tests/fastio/test_signals.py and
the tests of slots given back with a reader inside)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

Handler = Callable[[int, FrameType | None], object]


class Interrupted(Exception):
    """Raised by a test's signal handler."""


@contextlib.contextmanager
def kicking(handler: Handler, enough: Callable[[], bool], on_timeout: Callable[[], object],
            timeout: float = 5.0) -> Iterator[list[bool]]:
    """Install `handler` for SIGUSR1 and send SIGUSR1 to the main thread every 10 ms until `enough()`.

    A signal that lands before the main thread sleeps in the syscall only sets Python's flag, so
    keep sending: the next one interrupts the syscall. If `enough()` stays false for `timeout`
    seconds (the handler never ran: the bug under test), `on_timeout()` must unblock the main
    thread; the yielded list then holds True.
    """
    main = threading.main_thread().ident
    assert main is not None  # the main thread has started
    timed_out: list[bool] = []
    stop = threading.Event()

    def kick() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and not enough():
            if time.monotonic() > deadline:
                timed_out.append(True)
                on_timeout()
                return
            signal.pthread_kill(main, signal.SIGUSR1)
            stop.wait(0.01)

    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=kick)
    t.start()
    try:
        yield timed_out
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)


def raised_in(exc: BaseException, name: str) -> bool:
    """Whether `name` (a Python or Cython function) is on the exception's traceback."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name.rsplit(".", 1)[-1] == name:
            return True
        tb = tb.tb_next
    return False


def _kmsg_reader() -> int | None:
    """A descriptor on /dev/kmsg positioned at its end, where pread() sleeps until the kernel logs
    something: the one file here a pread() really blocks on (pipes and FIFOs refuse pread).
    None where it can't be used (not root, no /dev/kmsg)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_END)
        with open("/dev/kmsg", "wb"):  # the failure path needs to wake a stuck pread by logging a line
            pass
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def blocking_arena(logdir: str, arena: int) -> Iterator[Callable[[], None]]:
    """Make reads from arena file `arena` (already open in a store) sleep in pread().

    The store's descriptor for it is replaced in place (dup2) by one on /dev/kmsg, read-only: a
    write there fails with EBADF. On exit the file is put back. Yields `unblock`, which makes the
    sleeping pread return and the next ones read the file again: for a test whose bug keeps it asleep.
    """
    kmsg = _kmsg_reader()
    if kmsg is None:
        pytest.skip("needs a readable and writable /dev/kmsg (root)")
    path = os.path.join(logdir, f"arena-{arena:08d}")
    fds = [int(fd) for fd in os.listdir("/proc/self/fd")
           if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path)]
    assert len(fds) == 1, fds
    arena_fd = fds[0]
    saved = os.dup(arena_fd)
    os.dup2(kmsg, arena_fd, inheritable=False)
    os.close(kmsg)

    def unblock() -> None:
        os.dup2(saved, arena_fd, inheritable=False)  # the next pread reads the file again
        with open("/dev/kmsg", "wb") as k:
            k.write(b"router tests/fastio: waking a pread that ignored signals\n")

    try:
        yield unblock
    finally:
        os.dup2(saved, arena_fd, inheritable=False)
        os.close(saved)
