"""Signalling a running exec, on the loop thread: a signal, a kill (TERM, a grace, KILL), a resize."""
from __future__ import annotations

import asyncio

import grpc

from router.errors import RouterError

from . import child_stdio
from .child import Child
from .execs import Exec


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
