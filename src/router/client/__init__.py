"""Clients for the router over both its services: `RouterClient` (blocking; used by `router exec`,
the tests and the benchmarks) and `AsyncRouterClient` (asyncio), with the same methods.

Each method's logic (its request, retries, offset resume, wait's give-up rule) is written once, as a
generator of steps (_Call, _Sleep, _Open, _NEXT, _Emit) that does no I/O itself; each client has one
small driver that performs the steps, blocking or awaiting. So the two clients cannot drift apart.
"""
from __future__ import annotations

from .aio import AsyncRouterClient
from .calls import CHANNEL_OPTIONS, RETRYABLE, STDERR, STDOUT, UNREACHABLE_SECS, WaitResult, backoff, exit_code
from .connection import TOKEN_ENV, Connection, find_connection
from .sync import RouterClient

__all__ = ["CHANNEL_OPTIONS", "RETRYABLE", "STDERR", "STDOUT", "TOKEN_ENV", "UNREACHABLE_SECS", "AsyncRouterClient",
           "Connection", "RouterClient", "WaitResult", "backoff", "exit_code", "find_connection"]
