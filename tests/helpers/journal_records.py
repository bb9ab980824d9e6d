"""Journal records as the tests write them, and the state they should replay to."""
from __future__ import annotations

import msgspec

from router.engine.journal_format import Begun, Exited, JournalState, Output, Record, Spawned, Stdin
from router.engine.records import ExecSpec, ExitCause, ExitStatus, PtySpec

SECRET = "s3cr3t-value-that-must-not-leak"


def begun(exec_id: str, **kw: object) -> Begun:
    spec = ExecSpec(args=["sh", "-c", "echo hi"], env={"PATH": "/bin", "TOKEN": SECRET}, workdir="/tmp",
                    timeout_secs=30, pty=PtySpec(24, 80))
    record = Begun.from_spec(exec_id, bytes(32), spec, 1700000000.25)
    return msgspec.structs.replace(record, **kw) if kw else record


def lifecycle(exec_id: str) -> list[Record]:
    """What one finished exec writes: Begun, Spawned, an Output per stream, Stdin, Exited."""
    return [begun(exec_id), Spawned(exec_id, 4242, False),
            Output(exec_id, "stdout", [3, -1, 7], 300_000, True), Output(exec_id, "stderr", [9], 12, True),
            Stdin(exec_id, 5, True), Exited(exec_id, ExitStatus(code=0), 1700000001.5, ExitCause.EXITED)]


def expected(records: list[Record]) -> JournalState:
    state = JournalState()
    for record in records:
        state.apply(record)
    return state


def same(a: JournalState, b: JournalState) -> bool:
    """Equal execs in the same (age) order; counters aside."""
    return a.execs == b.execs and list(a.execs) == list(b.execs)
