"""The exec journal's cost, in this process (no server): appending and flushing what 10,000 execs
write (Begun, Spawned, Output x2, Exited each), replaying a journal of 10,000 finished execs, and
compacting one (`asv run --python=same --bench bench_journal`)."""
from __future__ import annotations

import pathlib
import shutil
import tempfile

from router.engine import journal as jr
from router.engine import journal_format as jf
from router.engine.records import ExecSpec, ExitCause, ExitStatus

from .common import TMP

EXECS = 10_000
_SPEC = ExecSpec(args=["python", "-c", "print('hello')"], env={"PATH": "/usr/bin:/bin", "HOME": "/root",
                                                                  "TOKEN": "secret"}, workdir="/work")


def exec_records(i: int) -> list[jf.Record]:
    exec_id = f"exec-{i:08d}-0123456789abcdef"
    return [jf.Begun.from_spec(exec_id, bytes(32), _SPEC, 1.7e9 + i),
            jf.Spawned(exec_id, 100_000 + i, False),
            jf.Output(exec_id, "stdout", [i % 4096, (i + 1) % 4096], 70_000, True),
            jf.Output(exec_id, "stderr", [(i + 2) % 4096], 120, True),
            jf.Exited(exec_id, ExitStatus(code=0), 1.7e9 + i + 0.5, ExitCause.EXITED)]


class Journal:
    """10,000 execs' records appended, flushed every `flush_every` execs (1: one write per exec,
    the most the engine could do; 100: a busy loop iteration)."""

    params = [[1, 100]]
    param_names = ["flush_every"]
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self, flush_every: int) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-journal-", dir=TMP))
        self.records = [exec_records(i) for i in range(EXECS)]
        self.journal, _ = jr.Journal.open(self.dir / "journal", auto_compact=False)

    def teardown(self, flush_every: int) -> None:
        self.journal.close(fsync=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_append_flush(self, flush_every: int) -> None:
        append, flush = self.journal.append, self.journal.flush
        for i, records in enumerate(self.records):
            for record in records:
                append(record)
            if i % flush_every == 0:
                flush()
        flush()


class Replay:
    """Replaying a journal that holds 10,000 finished execs (50,000 records)."""

    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-journal-", dir=TMP))
        self.path = self.dir / "journal"
        write_finished(self.path)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_replay(self) -> None:
        state = jf.replay(self.path)
        assert len(state.execs) == EXECS

    def track_bytes_per_exec(self) -> float:
        return self.path.stat().st_size / EXECS


class Compact:
    """Compacting an open journal of 10,000 live execs (encode, write, fsync, rename), after as
    many records again of churn (every exec's Output and Exited written twice)."""

    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0

    def setup(self) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-journal-", dir=TMP))
        path = self.dir / "journal"
        write_finished(path)
        self.journal, _ = jr.Journal.open(path, auto_compact=False)
        for i in range(EXECS):
            for record in exec_records(i)[2:]:
                self.journal.append(record)
        self.journal.flush()

    def teardown(self) -> None:
        self.journal.close(fsync=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_compact(self) -> None:
        self.journal.compact()


def write_finished(path: pathlib.Path) -> None:
    journal, _ = jr.Journal.open(path, auto_compact=False)
    with journal:
        for i in range(EXECS):
            for record in exec_records(i):
                journal.append(record)
            if i % 100 == 99:
                journal.flush()
