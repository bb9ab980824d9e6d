"""`router exec`: one command on a router, its output streamed to ours and our stdin to it, as ssh does.

Without a terminal, SIGINT, SIGTERM and SIGHUP are passed on to the command's process group (as
docker run's signal proxy does); a second SIGINT kills it and ends `router exec`. A stdout or
stderr whose reader went away (`| head`) ends `router exec` at once with 141 and sends the command
SIGPIPE, as it would have got writing to that pipe itself.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, RouterClient, exit_code

from .connection import ROUTER_FAILED, connect
from .supervise import DONE, OUTPUT_CLOSED, Supervisor, in_background
from .terminal import run_on_terminal, window_size

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _copy_output(client: RouterClient, exec_id: str, fd: pb.TaskExecStdioFileDescriptor, out: int,
                 closed: Callable[[], None]) -> None:
    try:
        for data in client.read(exec_id, fd):
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
    except BrokenPipeError:
        closed()


def _forward_stdin(client: RouterClient, exec_id: str) -> None:
    offset = 0
    while True:
        data = os.read(0, 1024 * 1024)
        client.write_stdin(exec_id, offset, data, eof=not data)
        if not data:
            return
        offset += len(data)


def _exec_io(client: RouterClient, exec_id: str, streams: Sequence[tuple[pb.TaskExecStdioFileDescriptor, int]],
             no_stdin: bool, give_up: float, closed: Callable[[], None]) -> int:
    """Copy the exec's `streams` (fd, local fd) out and stdin in; once it has ended and its output is
    all out, its exit code (128+N for signal N)."""
    outputs = [in_background(_copy_output, client, exec_id, fd, out, closed) for fd, out in streams]
    errors: list[Exception] = []
    if no_stdin:
        client.write_stdin(exec_id, 0, b"", eof=True)
    else:
        errors = in_background(_forward_stdin, client, exec_id)[1]
    code = exit_code(client.wait(exec_id, unreachable_secs=give_up))
    for thread, output_errors in outputs:
        thread.join()
        errors += output_errors
    if errors:
        raise errors[0]
    return 1 if code is None else code


def _forwarding_signals(client: RouterClient, exec_id: str, io: Callable[[Callable[[], None]], int]) -> int:
    """Run `io` while passing signals on to the exec's group; see the module's docstring."""
    forwarded = 0
    with Supervisor(_FORWARDED) as sup:
        worker = sup.start(io)
        for event in sup.events():
            if event == DONE:
                break
            if event == OUTPUT_CLOSED:
                with contextlib.suppress(grpc.RpcError, ValueError):
                    client.signal(exec_id, signal.SIGPIPE)
                return 128 + signal.SIGPIPE
            if event == signal.SIGINT and forwarded == signal.SIGINT:
                print("router exec: interrupted again: killing the command", file=sys.stderr)
                with contextlib.suppress(grpc.RpcError, ValueError):
                    client.kill(exec_id, 0.0, timeout=5.0)
                return 128 + signal.SIGINT
            forwarded = event
            with contextlib.suppress(grpc.RpcError, ValueError):  # it may have ended meanwhile
                client.signal(exec_id, event)
    worker.join()
    sup.close(worker)
    if sup.errors:
        raise sup.errors[0]
    return sup.outcome[0]


def _say_why(client: RouterClient, exec_id: str, code: int, timeout: int | None) -> None:
    """A line on stderr when the command was ended by a signal the router sent, not by its own doing."""
    if code <= 128:
        return
    with contextlib.suppress(grpc.RpcError, ValueError):
        # The cause is set once the exec has finished, a moment after its exit status: ask again briefly.
        for _ in range(20):
            cause = client.inspect(exec_id).exit.cause
            if cause != ec.EXIT_CAUSE_UNSPECIFIED:
                break
            time.sleep(0.05)
        if cause == ec.EXIT_CAUSE_TIMED_OUT:
            print(f"router exec: the command timed out after {timeout} s and was killed", file=sys.stderr)
        elif cause == ec.EXIT_CAUSE_OUT_OF_MEMORY:
            print("router exec: the command ran out of memory and was killed", file=sys.stderr)
        elif cause == ec.EXIT_CAUSE_SHUTDOWN:
            print("router exec: the router shut down and killed the command", file=sys.stderr)


def _environment(items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE as given; KEY alone takes this shell's value, and is left out if it has none (as docker's)."""
    env: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def cmd_exec(args: argparse.Namespace) -> int:
    if not args.command:
        print("router exec: no command given (router exec [OPTIONS] -- CMD ARGS...)", file=sys.stderr)
        return ROUTER_FAILED
    exec_id = f"ex-{uuid.uuid4().hex}"
    fields: dict[str, Any] = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                              "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}
    if args.workdir:
        fields["workdir"] = args.workdir
    if args.timeout:
        fields["timeout_secs"] = args.timeout
    if args.env:
        fields["env"] = _environment(args.env)
    if args.secret:
        fields["secret_ids"] = args.secret
    # As ssh: -t gives a terminal when stdin is one, -tt always.
    terminal = args.tty >= 2 or (args.tty == 1 and os.isatty(0))
    if args.tty == 1 and not terminal:
        print("Pseudo-terminal will not be allocated because stdin is not a terminal.", file=sys.stderr)
    if terminal:
        rows, cols = window_size()
        from router._proto import api_pb2

        fields["pty_info"] = api_pb2.PTYInfo(enabled=True, winsz_rows=rows, winsz_cols=cols,
                                             env_term=os.environ.get("TERM", ""))
    # A terminal's stderr is its stdout: one stream, in order.
    streams = ((STDOUT, 1),) if terminal else ((STDOUT, 1), (STDERR, 2))
    with connect(args) as client:
        client.start(exec_id, args.command, **fields)
        # The supervisor running it says how to report a closed output (the last argument).
        io = functools.partial(_exec_io, client, exec_id, streams, args.no_stdin, args.give_up)
        if terminal:
            return run_on_terminal(client, exec_id, not args.no_stdin and os.isatty(0), io)
        code = _forwarding_signals(client, exec_id, io)
        if code != 128 + signal.SIGPIPE:
            _say_why(client, exec_id, code, args.timeout)
        return code
