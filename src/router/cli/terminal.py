"""`router exec -t`: the local terminal while a remote one runs, as `ssh -t` keeps it."""
from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Callable

import grpc

from router._proto import exec_control_pb2 as ec
from router.client import RouterClient

from .supervise import DONE, OUTPUT_CLOSED, Supervisor


def window_size() -> tuple[int, int]:
    """The local terminal's (rows, cols), stdin's else stdout's; (0, 0), the router's 24x80, without one."""
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 0, 0


def run_on_terminal(client: RouterClient, exec_id: str, raw: bool, io: Callable[[Callable[[], None]], int]) -> int:
    """Run `io` (the exec's output, input and wait) in a thread while this one keeps the local
    terminal: with `raw`, stdin's terminal in raw mode, so that every key reaches the remote terminal
    as a byte (Ctrl-C and Ctrl-D too); window changes forwarded; SIGTERM, SIGHUP or SIGINT hang up
    the remote terminal, as a closed ssh connection does, and give 128+N; a closed output hangs it
    up too and gives 141. The local terminal is put back in every case."""
    saved_mode = termios.tcgetattr(0) if raw else None
    stop = 0
    with Supervisor((signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)) as sup:
        try:
            # Raw before the first remote byte is written out: a cooked terminal would turn its \r\n into \r\r\n.
            if saved_mode is not None:
                tty.setraw(0, termios.TCSADRAIN)
            worker = sup.start(io)
            for event in sup.events():
                if event == DONE:
                    break
                if event == signal.SIGWINCH:
                    # A resize that fails (the exec just ended, the router is away) is no reason to stop.
                    with contextlib.suppress(grpc.RpcError, ValueError):
                        client.resize(exec_id, *window_size())
                    continue
                stop = signal.SIGPIPE if event == OUTPUT_CLOSED else event
                break
        finally:
            if saved_mode is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved_mode)
    if stop:
        with contextlib.suppress(grpc.RpcError, ValueError):
            client.signal(exec_id, signal.SIGHUP, ec.SIGNAL_TARGET_SESSION)
    worker.join(5 if stop else None)  # a hung-up exec ends at once
    sup.close(worker)
    if stop:
        return 128 + stop
    if sup.errors:
        raise sup.errors[0]
    return sup.outcome[0]
