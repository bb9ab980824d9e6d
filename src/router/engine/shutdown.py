"""Ending every exec at a stop (and when a drain's time is up), with the engine's loop still running
so that the calls waiting on them are answered."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from router.errors import RouterError

from . import signals
from .execs import Exec
from .loop import LoopThread
from .spawn_threads import Spawner


def end_execs(loop: LoopThread, spawner: Spawner[Exec, Any], execs: list[Exec], lingering_groups: set[int],
              forget: Callable[[Exec, RouterError], None], timeout: float) -> None:
    """Drop the starts not yet begun, SIGKILL every exec's group (and the groups that outlived
    their exec), and wait until each exec's end is published, for up to `timeout` seconds."""
    # Spawns in flight finish (their outcomes queued for the loop) and queued ones are dropped
    # first (each queued _spawn has submitted its own by the time the barrier returns), so that
    # kill_all, queued after them, finds every child.
    loop.run(lambda: None, timeout=timeout)
    stopping = RouterError(grpc.StatusCode.UNAVAILABLE, "the router is stopping")
    for ex in spawner.stop():
        loop.call_soon(forget, ex, stopping)
    loop.call_soon(signals.kill_all, execs, lingering_groups)
    deadline = time.monotonic() + timeout
    for ex in execs:
        ex.wait_until(lambda ex=ex: not ex.running or ex.failed is not None, lambda: True, deadline)  # type: ignore[misc]
