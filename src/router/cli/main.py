"""The `router` command: serve, token, exec, batch, ls, inspect, kill, logs, images, secrets."""
from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc

from .connection import ROUTER_FAILED
from .parser import parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        return int(args.func(args))
    except grpc.RpcError as e:
        print(f"router {args.cmd}: {e.code().name}: {e.details()}", file=sys.stderr)
        return ROUTER_FAILED
