"""Each exec's start and end in the server's log, at INFO: its id, pid and number of arguments
(never the arguments or the environment, which may hold secrets), and at the end how and why it
ended.

These run per exec, thousands of times a second, so they take the short way: nothing is built
unless INFO is logged, and under `router serve` the line goes straight to its handler
(logs.direct); otherwise the record is made directly (Logger.info would walk the stack for the
caller's file and line, which no line shows)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from router import logs

if TYPE_CHECKING:
    from .execs import Exec

logger = logging.getLogger("router.execs")


def _log(message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    handler = logs.direct(logger)
    if handler is not None:
        handler.write("INFO", logger.name, message % args, fields)
    else:
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, args, None, None, fields))


def started(ex: Exec) -> None:
    """Its process started (loop thread, once its start is journaled)."""
    if logger.isEnabledFor(logging.INFO):
        exec_id, pid, argc = ex.exec_id, ex.pid, len(ex.spec.args)
        _log("exec %s started: pid %d, %d args", (exec_id, pid, argc),
             {"event": "exec_started", "exec_id": exec_id, "pid": pid, "argc": argc})


def ended(ex: Exec) -> None:
    """Its exit is published (loop thread), or it was found lost at a restart."""
    if not logger.isEnabledFor(logging.INFO) or ex.status is None or ex.cause is None:
        return
    exec_id, pid, argc, status, cause = ex.exec_id, ex.pid, len(ex.spec.args), ex.status, ex.cause.value
    secs = round(max(0.0, (ex.ended_at or ex.started_at) - ex.started_at), 6)
    how = f"exit {status.code}" if status.code is not None else f"signal {status.signal}"
    _log("exec %s ended: %s (%s) after %.3f s, pid %d, %d args", (exec_id, how, cause, secs, pid, argc),
         {"event": "exec_ended", "exec_id": exec_id, "pid": pid, "argc": argc, "exit_code": status.code,
          "signal": status.signal, "cause": cause, "duration_secs": secs})
