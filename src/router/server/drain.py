"""Draining before a stop: on the first SIGTERM or SIGINT the router refuses new execs
(UNAVAILABLE, which Modal's client retries), says it is not ready, and gives the running execs up to
--drain-secs to end while it goes on serving their reads, waits, stdin, signals and kills; a
second signal ends the drain at once. What remains is then ended and the server stopped
(RouterServer.stop)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from router.errors import RouterError

if TYPE_CHECKING:  # the parser reads DEFAULT_DRAIN_SECS: no engine for `router exec`
    from router.engine.core import Engine

logger = logging.getLogger(__name__)

# Kubernetes' default terminationGracePeriodSeconds is 30: this leaves about 5 s to end what still
# runs, answer the calls in flight (RouterServer.stop's grace) and exit before its SIGKILL.
DEFAULT_DRAIN_SECS = 25.0
# How often the drain looks whether execs still run: the stop follows the last one's end by at most this.
POLL_SECS = 0.05
# How often the main thread looks for a signal another thread took: Python runs a handler only in the
# main thread, once it runs Python code again, and a wait without a timeout never returns to it.
WAKE_SECS = 0.1


class StopRequests:
    """SIGTERM and SIGINT as `router serve` counts them: the first asks for a drain (`first`), any
    later one ends it at once (`again`). `request` only sets events: safe in a signal handler."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.again = threading.Event()

    def request(self) -> None:
        (self.again if self.first.is_set() else self.first).set()

    def wait(self) -> None:
        """Until the first request (the main thread: see WAKE_SECS)."""
        while not self.first.wait(WAKE_SECS):
            pass


def drain(engine: Engine, refuse: Callable[[RouterError], None], secs: float, hurry: threading.Event) -> None:
    """`refuse` new execs (it says not ready too), then wait until no exec runs, `secs` pass or
    `hurry` is set; the caller then ends what still runs. `secs` <= 0: no drain at all."""
    if secs <= 0:
        return
    began = time.monotonic()
    until = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + secs))
    refuse(RouterError(grpc.StatusCode.UNAVAILABLE, f"the router is draining: it takes no new exec, and stops once "
                       f"the running ones end (at {until} at the latest); start it on another router, or here "
                       "once restarted"))
    running = engine.running_count
    logger.info("draining: %d execs running, new execs refused; stopping once they end, at %s (--drain-secs %g) "
                "at the latest; a second SIGTERM or SIGINT stops at once", running, until, secs,
                extra={"event": "drain_started", "running": running, "deadline": until, "drain_secs": secs})
    deadline = began + secs
    while engine.running_count:
        left = deadline - time.monotonic()
        if left <= 0 or hurry.wait(min(POLL_SECS, left)):
            break
    took, running = time.monotonic() - began, engine.running_count
    ended = {"event": "drain_ended", "secs": round(took, 3), "running": running}
    if not running:
        logger.info("drained in %.1f s: no exec runs", took, extra={**ended, "outcome": "drained"})
    elif hurry.is_set():
        logger.info("drain ended by a second signal after %.1f s: ending the %d execs still running", took, running,
                    extra={**ended, "outcome": "second_signal"})
    else:
        logger.info("drain time is up (%g s): ending the %d execs still running (cause shutdown)", secs, running,
                    extra={**ended, "outcome": "time_up"})
