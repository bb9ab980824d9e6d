"""Signalling a running exec, on the loop thread: a signal, a kill (TERM, a grace, KILL), a resize;
killing everything at shutdown; and what ended an exec."""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable

import grpc

from router.errors import RouterError

from . import child_stdio, procs
from .child import Child
from .execs import Exec
from .oom import OomKills
from .records import ExitCause, ExitStatus


def running_child(ex: Exec) -> Child | None:
    """The exec's leader while it can still be signalled."""
    child = ex.child
    return child if child is not None and child.held and not child.exited else None


def send_signal(ex: Exec, sig: int, target: str) -> None:
    """`sig` to the exec's group ("group"), leader ("leader") or terminal session ("session");
    FAILED_PRECONDITION once it has ended. A signal that ends it counts as a kill on request."""
    child = running_child(ex)
    if child is None:
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"exec {ex.exec_id!r} is not running")
    if target == "session" and not child.terminal:
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, f"exec {ex.exec_id!r} has no terminal")
    ex.kill_requested = True
    if target == "leader":
        child.signal_leader(sig)
    else:
        child.signal(sig, sessions=target == "session")


def start_kill(ex: Exec, grace: float, loop: asyncio.AbstractEventLoop) -> None:
    """TERM, then KILL after `grace` (at once without one), to the whole group."""
    child = running_child(ex)
    if child is None:
        return  # over already: the caller finds it finished
    ex.kill_requested = True
    child.terminate(loop, grace)


def resize_terminal(ex: Exec, rows: int, cols: int) -> None:
    fd = ex.output.terminal_fd() if ex.output is not None else None
    if fd is None:
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"exec {ex.exec_id!r} has no terminal (or it has exited)")
    child_stdio.resize(fd, rows, cols)


def kill_all(execs: list[Exec], lingering_groups: Iterable[int]) -> None:
    """SIGKILL to every exec's group and terminal session, and to groups that outlived their exec."""
    for pgid in lingering_groups:
        procs.killpg_quietly(pgid, signal.SIGKILL)
    live = [ex.child for ex in execs if ex.child is not None and ex.child.held]
    for child in live:
        child.signal(signal.SIGKILL, sessions=False)
    # One /proc scan for every terminal session, rather than one per exec.
    procs.kill_sessions((child.pid for child in live if child.terminal), signal.SIGKILL)


def exit_cause(ex: Exec, status: ExitStatus, oom: OomKills | None, stopping: bool) -> ExitCause:
    """Why the exec's leader ended with `status`, as the router saw it."""
    if ex.child is None:
        return ExitCause.FAILED_TO_START
    if status.code is not None:
        return ExitCause.EXITED
    if ex.child.timed_out:
        return ExitCause.TIMED_OUT
    if ex.kill_requested:
        return ExitCause.KILLED
    if status.signal == signal.SIGKILL and oom is not None and oom.killed(ex.child.pid):
        return ExitCause.OOM
    return ExitCause.SHUTDOWN if stopping else ExitCause.SIGNALLED
