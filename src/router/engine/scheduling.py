"""`router serve --sched-batch`: the serving process's threads run under SCHED_BATCH; the execs it
starts, as the router was started.

Under load the router's threads (gRPC's, the engine loop, the spawners) wake each other many times
per exec. Under SCHED_OTHER each wake-up may preempt the thread that made it, mid-call and holding
the GIL, which then wakes again to take it back: switches that cost more CPU than the calls around
them. SCHED_BATCH threads do not preempt on wake-up: with Modal's calls (start + wait of `true`, 64
in flight) the router's CPU per exec fell 12-19%. But they do not preempt anything else either:
while the router's own execs keep every CPU busy, each wake-up waits for a scheduler tick, and a
small exec's start + wait took 1.7x as long (benchmarks/HISTORY.md, "Modal's call path"). Hence a
choice, not the default. An idle core runs a wake-up at once whatever the policy.

Children inherit the policy of the thread that spawns them, so the spawner threads go back to the
router's own starting policy (`as_started`) and the execs never see SCHED_BATCH. A router started
under another policy than SCHED_OTHER (an operator's choice: batch, idle, real time) keeps it.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Whether `batch_threads` moved the process from SCHED_OTHER (the only policy it changes).
_batched = False


def batch_threads() -> None:
    """Run the calling thread, and every thread it starts from now on, under SCHED_BATCH, if it
    runs under SCHED_OTHER. Call before the serving process starts its threads."""
    global _batched
    try:
        policy = os.sched_getscheduler(0)
        if policy != os.SCHED_OTHER:
            return
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as e:  # a sandbox that forbids it: the router only runs a little slower
        logger.info("cannot run the router's threads under SCHED_BATCH: %s", e,
                    extra={"event": "sched_batch_refused"})
        return
    _batched = True


def as_started() -> None:
    """Put the calling thread back under the policy the process started with, SCHED_OTHER, if
    `batch_threads` changed it (for a thread that spawns execs: its children inherit it)."""
    if not _batched:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as e:
        logger.warning("cannot put a spawner thread back under its starting scheduling policy: %s", e,
                       extra={"event": "sched_restore_failed"})
