"""task-command-router: a gRPC server that runs commands and streams their output.

It serves Modal's `modal.task_command_router.TaskCommandRouter` service, and its own
`task_command_router.v1.ExecControl` beside it. What a library user needs is here:

- `RouterClient`, `AsyncRouterClient`: clients over both services, blocking and asyncio, with the
  same methods (`router.client`); `exit_code` reads a wait or poll response as a shell would;
  `STDOUT`, `STDERR` name the streams to read.
- `RouterServer`, `ServerConfig`: a server in this process (`router.server.grpc_server`,
  `router.config`); `router serve` is the same server from the command line.
- `ExitCause`: why an exec ended (`router.engine.records`).
- `RouterError`: the one error the server's parts raise, with the gRPC status it answers.

The subpackages hold the rest: `router.engine` (processes, logs, journal), `router.images` (the
image store), `router.server` (the RPCs), `router.cli` (the `router` command).

`import router` loads nothing else: each name is imported when first used, so the CLI and asv's
plugin loader, which import this package, do not pay for gRPC before they need it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "RouterClient": "router.client",
    "AsyncRouterClient": "router.client",
    "exit_code": "router.client",
    "STDOUT": "router.client",
    "STDERR": "router.client",
    "RouterServer": "router.server.grpc_server",
    "ServerConfig": "router.config",
    "ExitCause": "router.engine.records",
    "RouterError": "router.errors",
}
__all__ = ["STDERR", "STDOUT", "AsyncRouterClient", "ExitCause", "RouterClient", "RouterError", "RouterServer",
           "ServerConfig", "exit_code"]

if TYPE_CHECKING:
    from router.client import STDERR, STDOUT, AsyncRouterClient, RouterClient, exit_code
    from router.config import ServerConfig
    from router.engine.records import ExitCause
    from router.errors import RouterError
    from router.server.grpc_server import RouterServer


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
