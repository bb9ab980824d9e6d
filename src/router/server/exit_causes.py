"""Exit causes on the wire: ExecControl's ExitCause for each of the engine's, and back to its name.

Light on purpose (no engine, no server): the CLI imports it to print causes by name.
"""
from __future__ import annotations

from router._proto import exec_control_pb2 as ec
from router.engine.records import ExitCause

TO_WIRE = {
    ExitCause.EXITED: ec.EXIT_CAUSE_EXITED, ExitCause.SIGNALLED: ec.EXIT_CAUSE_SIGNALLED,
    ExitCause.TIMED_OUT: ec.EXIT_CAUSE_TIMED_OUT, ExitCause.KILLED: ec.EXIT_CAUSE_KILLED,
    ExitCause.LOST: ec.EXIT_CAUSE_LOST, ExitCause.FAILED_TO_START: ec.EXIT_CAUSE_FAILED_TO_START,
    ExitCause.SHUTDOWN: ec.EXIT_CAUSE_SHUTDOWN, ExitCause.OOM: ec.EXIT_CAUSE_OUT_OF_MEMORY,
}
# The names logs and metrics use (ExitCause's values), by the wire's number.
NAMES = {wire: cause.value for cause, wire in TO_WIRE.items()}
