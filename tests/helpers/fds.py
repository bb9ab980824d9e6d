"""Descriptors for the tests: pipes made and closed for them, non-blocking reads, what is open."""
from __future__ import annotations

import fcntl
import os
import socket
import threading
from types import TracebackType


def set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def open_fds() -> list[int]:
    """This process's open descriptors, sorted."""
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]  # the listing's own descriptor is closed by now
    return sorted(fd for fd in listed if is_open(fd))


class Pipe:
    """An os.pipe() for a test: `r` and `w` are its ends, the read end non-blocking unless `blocking`,
    `data` written into it at once. A test ends its input early with close_write() (EOF for the
    reader) or hands the write end to a writer thread with feed(); close(), or the end of a `with`
    block, waits for that thread and closes whatever is still open. `ends`: (read, write) descriptors
    to use instead of a new pipe's."""

    def __init__(self, data: bytes = b"", *, blocking: bool = False, ends: tuple[int, int] | None = None) -> None:
        self.r, self.w = os.pipe() if ends is None else ends
        self._writer: threading.Thread | None = None
        if not blocking:
            set_nonblocking(self.r)
        if data:
            self.write(data)

    @classmethod
    def sockets(cls) -> Pipe:
        """A connected socket pair used the same way: a byte stream that is not a pipe (the hot path
        splices pipes but reads anything else through its drain buffer). `r` is non-blocking."""
        a, b = socket.socketpair()
        return cls(ends=(a.detach(), b.detach()))

    def write(self, data: bytes) -> int:
        return os.write(self.w, data)

    def close_write(self) -> None:
        """Close the write end (if still open): the reader sees EOF once it has read the rest."""
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def feed(self, data: bytes, chunk: int) -> None:
        """A thread of its own writes `data`, `chunk` bytes a write, then closes the write end."""
        w, self.w = self.w, -1  # the thread's now

        def writer() -> None:
            try:
                for i in range(0, len(data), chunk):
                    os.write(w, data[i:i + chunk])
            finally:
                os.close(w)

        self._writer = threading.Thread(target=writer)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.join()
        self.close_write()
        if self.r >= 0:
            os.close(self.r)
            self.r = -1

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
