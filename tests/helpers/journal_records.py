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


# A journal writer to kill: `python -c WRITER PATH KEEP SLICE` appends execs e0, e1, ... (Begun,
# Spawned, stdout's Output twice, the first superseded, an empty stderr's, Exited), flushing now and
# then inside an exec and after each; keeps the KEEP newest (0: all, so it never compacts), compacts
# SLICE execs at a time, and after each exec's last flush prints "I COMPACTING" (1 while a
# compaction is in flight).
WRITER = """
import sys
from router.engine import journal
from router.engine.journal import Journal
from router.engine.journal_format import Begun, Exited, Forgotten, Output, Spawned
from router.engine.records import ExecSpec, ExitCause, ExitStatus
keep, journal.COMPACT_SLICE = int(sys.argv[2]), int(sys.argv[3])
j, _ = Journal.open(sys.argv[1], compact_min=1 << 16)
spec = ExecSpec(args=["x" * 100], env={"A": "1"})
i = 0
while True:
    e = f"e{i}"
    for r in (Begun.from_spec(e, bytes(32), spec, 1.0), Spawned(e, i, False), Output(e, "stdout", [i], i, False),
              Output(e, "stdout", [i], i + 1, True), Output(e, "stderr", [], 0, True),
              Exited(e, ExitStatus(code=0), 2.0, ExitCause.EXITED)):
        j.append(r)
        if i % 3 == 0:
            j.flush()
    if i % 7 == 0:
        j.append(Spawned(e, -1, True))  # a record left buffered across execs
    if keep and i >= keep:
        j.append(Forgotten(f"e{i - keep}"))
    j.flush()
    print(i, int(j.compacting), flush=True)
    i += 1
"""
