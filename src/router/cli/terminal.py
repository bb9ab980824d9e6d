"""`router exec -t`: the local terminal while a remote one runs, as `ssh -t` keeps it."""
from __future__ import annotations

import contextlib
import os
import signal
import termios
import threading
import tty
from collections.abc import Callable
from typing import Any

import grpc

from router._proto import exec_control_pb2 as ec
from router.client import RouterClient


def in_background(fn: Callable[..., None], *args: Any) -> tuple[threading.Thread, list[Exception]]:
    """Run fn(*args) in a daemon thread; a failed call lands in the returned list, not a traceback
    (ValueError: the channel was closed under it, as when the main thread gives up and leaves)."""
    errors: list[Exception] = []

    def run() -> None:
        try:
            fn(*args)
        except (grpc.RpcError, ValueError) as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def window_size() -> tuple[int, int]:
    """The local terminal's (rows, cols), stdin's else stdout's; (0, 0), the router's 24x80, without one."""
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 0, 0


def _noted(signum: int, frame: object) -> None:
    """A signal run_on_terminal handles: the wakeup descriptor brings it there."""


def run_on_terminal(client: RouterClient, exec_id: str, raw: bool, io: Callable[[], int]) -> int:
    """Run `io` (the exec's output, input and wait) in a thread while this one keeps the local
    terminal: with `raw`, stdin's terminal in raw mode, so that every key reaches the remote terminal
    as a byte (Ctrl-C and Ctrl-D too); window changes forwarded; SIGTERM, SIGHUP or SIGINT hang up
    the remote terminal, as a closed ssh connection does, and give 128+N. The local terminal is put
    back in every case."""
    # Signals come here as bytes on a pipe, never as an exception in the middle of putting things back.
    r, w = os.pipe()
    os.set_blocking(w, False)
    saved_wakeup = signal.set_wakeup_fd(w)  # first: no signal may come to _noted and not to the pipe
    caught = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    saved_handlers = {sig: signal.signal(sig, _noted) for sig in caught}
    saved_mode = termios.tcgetattr(0) if raw else None
    outcome: list[int] = []

    def work() -> None:
        try:
            outcome.append(io())
        finally:
            os.write(w, b"\0")  # no signal has number 0

    signalled = 0
    try:
        # Raw before the first remote byte is written out: a cooked terminal would turn its \r\n into \r\r\n.
        if saved_mode is not None:
            tty.setraw(0, termios.TCSADRAIN)
        worker, errors = in_background(work)
        finished = False
        while not finished and not signalled:
            for signum in os.read(r, 64):
                if signum == 0:
                    finished = True
                elif signum == signal.SIGWINCH:
                    # A resize that fails (the exec just ended, the router is away) is no reason to stop.
                    with contextlib.suppress(grpc.RpcError):
                        client.resize(exec_id, *window_size())
                else:
                    signalled = signum
    finally:
        if saved_mode is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_mode)
        signal.set_wakeup_fd(saved_wakeup)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
    if signalled:
        with contextlib.suppress(grpc.RpcError):
            client.signal(exec_id, signal.SIGHUP, ec.SIGNAL_TARGET_SESSION)
    worker.join(5 if signalled else None)  # a hung-up exec ends at once
    if not worker.is_alive():  # else it may still write to w
        os.close(r)
        os.close(w)
    if signalled:
        return 128 + signalled
    if errors:
        raise errors[0]
    return outcome[0]
