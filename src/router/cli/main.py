"""The `router` command: serve, token, exec, batch, status, ls, inspect, kill, logs, images, secrets.

No traceback reaches a user: a failure is one line on stderr. Exit statuses: `exec` and `batch`
use 255 for their own failures and usage errors (their other statuses are the commands'), the
other commands 1 for failures and 2 for usage errors; 128+N after signal N (141 for a closed pipe).
`ROUTER_TRACEBACK=1` shows the traceback of an unexpected error.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence

import grpc

from .connection import ROUTER_FAILED, failure
from .parser import parser


def _quiet_stdout() -> None:
    """Our reader left: nothing more can be said, and Python's flush at exit must not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit status; the process ends next."""
    try:
        return _run(argv)
    finally:
        # The heap goes back to the OS whole; without this, Python's collection at exit first walks
        # every object the imports made (~25 ms here, on the clock of every `router batch` and `exec`).
        gc.freeze()


def _run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # `router serve` starts itself again
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    failed = ROUTER_FAILED if args.cmd in ("exec", "batch") else 1
    name = f"router {args.cmd}"
    try:
        return int(args.func(args))
    except grpc.RpcError as e:
        print(f"{name}: {failure(e, getattr(args, 'connected', None), getattr(args, 'give_up', None))}",
              file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:
        _quiet_stdout()
        return 128 + signal.SIGPIPE
    except OSError as e:
        print(f"{name}: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
    except ValueError as e:  # a file a flag names that is not what it should be (a CA, a key)
        print(f"{name}: {e}", file=sys.stderr)
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("ROUTER_TRACEBACK"):
            raise
        print(f"{name}: internal error: {e!r} (ROUTER_TRACEBACK=1 shows where)", file=sys.stderr)
    return failed
