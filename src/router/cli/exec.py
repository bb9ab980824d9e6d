"""`router exec`: one command on a router, its output streamed to ours and our stdin to it, as ssh does."""
from __future__ import annotations

import argparse
import functools
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, RouterClient, exit_code

from .connection import connect
from .terminal import in_background, run_on_terminal, window_size


def _copy_output(client: RouterClient, exec_id: str, fd: pb.TaskExecStdioFileDescriptor, out: int) -> None:
    for data in client.read(exec_id, fd):
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


def _forward_stdin(client: RouterClient, exec_id: str) -> None:
    offset = 0
    while True:
        data = os.read(0, 1024 * 1024)
        client.write_stdin(exec_id, offset, data, eof=not data)
        if not data:
            return
        offset += len(data)


def _exec_io(client: RouterClient, exec_id: str, streams: Sequence[tuple[pb.TaskExecStdioFileDescriptor, int]],
             no_stdin: bool, give_up: float) -> int:
    """Copy the exec's `streams` (fd, local fd) out and stdin in; once it has ended and its output is
    all out, its exit code."""
    outputs = [in_background(_copy_output, client, exec_id, fd, out) for fd, out in streams]
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


def cmd_exec(args: argparse.Namespace) -> int:
    if not args.command:
        print("router exec: no command given (router exec -- CMD ARGS...)", file=sys.stderr)
        return 2
    exec_id = f"ex-{uuid.uuid4().hex}"
    fields: dict[str, Any] = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                              "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}
    if args.workdir:
        fields["workdir"] = args.workdir
    if args.timeout:
        fields["timeout_secs"] = args.timeout
    if args.env:
        fields["env"] = dict(item.split("=", 1) for item in args.env)
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
        io = functools.partial(_exec_io, client, exec_id, streams, args.no_stdin, args.give_up)
        if terminal:
            return run_on_terminal(client, exec_id, not args.no_stdin and os.isatty(0), io)
        return io()
