"""Writes journal-c0e0ab1.bin: a journal in the format main wrote at commit c0e0ab1, with one
finished exec per exit cause that commit recorded ("timed out", "failed to start" and "out of
memory" were then spelled with spaces). Run against that commit's `router.journal`:

    git show c0e0ab1:src/router/journal.py > OLD/router/journal.py   # and records.py, an empty __init__.py
    PYTHONPATH=OLD python tests/data/make_journal_c0e0ab1.py tests/data/journal-c0e0ab1.bin

A test replays the file with today's code (tests must never run this script).
"""
import sys

from router import journal  # the old tree's flat module: this script only runs against c0e0ab1
from router.records import ExitStatus

CAUSES = [  # (exec id, cause string as c0e0ab1 wrote it, status)
    ("ex-exited", "exited", ExitStatus(code=3)),
    ("ex-signalled", "signalled", ExitStatus(signal=15)),
    ("ex-timed-out", "timed out", ExitStatus(signal=9)),
    ("ex-lost", "lost", ExitStatus(signal=9)),
    ("ex-killed", "killed", ExitStatus(signal=15)),
    ("ex-failed", "failed to start", ExitStatus(code=127)),
    ("ex-shutdown", "shutdown", ExitStatus(signal=9)),
    ("ex-oom", "out of memory", ExitStatus(signal=9)),
]


def main(path: str) -> None:
    j, _ = journal.Journal.open(path, auto_compact=False)
    for n, (exec_id, cause, status) in enumerate(CAUSES):
        started = 1_700_000_000.0 + n
        j.append(journal.Begun(exec_id, bytes(32), ["sh", "-c", f"exit {n}"], None, "pipe", "pipe", None, None,
                               ["PATH"], started))
        if cause != "failed to start":
            j.append(journal.Spawned(exec_id, 4_000_000 + n, False, started, "00000000-0000-0000-0000-000000000000"))
        for stream in ("stdout", "stderr"):
            j.append(journal.Output(exec_id, stream, [], 0, True))
        j.append(journal.Stdin(exec_id, 0, True))
        j.append(journal.Exited(exec_id, status, started + 1, cause))
    j.append(journal.Begun("ex-forgotten", bytes(32), ["true"], None, "pipe", "pipe", None, None, [], 1.0))
    j.append(journal.Forgotten("ex-forgotten"))
    j.close()


if __name__ == "__main__":
    main(sys.argv[1])
