"""Each exec's start and end in the server's log, at INFO: its id, pid and number of arguments
(never the arguments or the environment, which may hold secrets), and at the end how and why it
ended. These run per exec at thousands a second: nothing is built unless INFO is logged."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .execs import Exec

logger = logging.getLogger("router.execs")


def started(ex: Exec) -> None:
    """Its process started (loop thread, once its start is journaled)."""
    if logger.isEnabledFor(logging.INFO):
        argc = len(ex.spec.args)
        logger.info("exec %s started: pid %d, %d args", ex.exec_id, ex.pid, argc,
                    extra={"event": "exec_started", "exec_id": ex.exec_id, "pid": ex.pid, "argc": argc})


def ended(ex: Exec) -> None:
    """Its exit is published (loop thread), or it was found lost at a restart."""
    if not logger.isEnabledFor(logging.INFO) or ex.status is None or ex.cause is None:
        return
    status, cause, argc = ex.status, ex.cause.value, len(ex.spec.args)
    secs = round(max(0.0, (ex.ended_at or ex.started_at) - ex.started_at), 6)
    how = f"exit {status.code}" if status.code is not None else f"signal {status.signal}"
    logger.info("exec %s ended: %s (%s) after %.3f s, pid %d, %d args", ex.exec_id, how, cause, secs, ex.pid, argc,
                extra={"event": "exec_ended", "exec_id": ex.exec_id, "pid": ex.pid, "argc": argc,
                       "exit_code": status.code, "signal": status.signal, "cause": cause, "duration_secs": secs})
