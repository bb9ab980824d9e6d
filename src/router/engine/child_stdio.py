"""A child's stdio: pipes, or a pseudo-terminal, and which ends the router keeps."""
from __future__ import annotations

import dataclasses
import fcntl
import os
import struct
import subprocess
import termios

from .records import ExecSpec

# Big pipes: a writer of big chunks blocks less often (one wake-up of the drain per MiB, not per 64 KiB).
PIPE_SIZE = 1024 * 1024


@dataclasses.dataclass
class ChildStdio:
    """The child's ends (descriptors, or subprocess.DEVNULL / subprocess.STDOUT) and the router's."""

    stdin: int
    stdout: int
    stderr: int
    stdin_writer: int  # the router's end of the child's stdin
    stdout_reader: int  # the router's ends to drain (-1: none); a terminal's output is its stdout
    stderr_reader: int
    child_fds: list[int] = dataclasses.field(default_factory=list)
    router_fds: list[int] = dataclasses.field(default_factory=list)

    def close_child_ends(self) -> None:
        """Once the child holds them (or will never run), the router's copies must go."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds.clear()

    def close_router_ends(self) -> None:
        for fd in self.router_fds:
            os.close(fd)
        self.router_fds.clear()


def open_stdio(spec: ExecSpec, stdout: bool, stderr: bool) -> ChildStdio:
    """Pipes (or a terminal) for a child, with output pipes for the streams logged. On OSError
    nothing stays open. (Execs without a terminal or workdir get theirs from _fastio.spawn.)"""
    child_fds: list[int] = []
    router_fds: list[int] = []
    try:
        if spec.pty is not None:
            return _terminal(spec, child_fds, router_fds)
        return _pipes(spec, stdout, stderr, child_fds, router_fds)
    except BaseException:
        for fd in child_fds + router_fds:
            os.close(fd)
        raise


def _pipes(spec: ExecSpec, has_stdout: bool, has_stderr: bool, child_fds: list[int], router_fds: list[int]
           ) -> ChildStdio:
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    child_fds.append(stdin_r)
    router_fds.append(stdin_w)
    readers = [-1, -1]

    def output_pipe(which: int) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        router_fds.append(r)
        child_fds.append(w)
        try:
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # an optimisation; the limit for unprivileged users is lower
        readers[which] = r
        return w

    stdout = output_pipe(0) if has_stdout else subprocess.DEVNULL
    if spec.stderr == "stdout":
        stderr = subprocess.STDOUT
    elif has_stderr:
        stderr = output_pipe(1)
    else:
        stderr = subprocess.DEVNULL
    return ChildStdio(stdin_r, stdout, stderr, stdin_w, readers[0], readers[1], child_fds, router_fds)


def _terminal(spec: ExecSpec, child_fds: list[int], router_fds: list[int]) -> ChildStdio:
    assert spec.pty is not None
    master, slave = os.openpty()
    router_fds.append(master)
    child_fds.append(slave)
    os.set_inheritable(master, False)
    resize(master, spec.pty.rows, spec.pty.cols)
    # Writes go through their own descriptor so that closing stdin never closes the output side.
    stdin_w = os.dup(master)
    router_fds.append(stdin_w)
    return ChildStdio(slave, slave, slave, stdin_w, master, -1, child_fds, router_fds)


def resize(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (the foreground process group gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
