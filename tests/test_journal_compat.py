"""A journal written by an earlier router replays unchanged: its exit causes included.

`data/journal-c0e0ab1.bin` was written by the journal code of commit c0e0ab1, which spelled three
causes with spaces ("timed out", "failed to start", "out of memory"); `data/make_journal_c0e0ab1.py`
says how it was made.
"""
from __future__ import annotations

import pathlib
import shutil

from router._proto import exec_control_pb2 as ec
from router.engine import journal
from router.engine.records import ExitCause, ExitStatus
from tests.helpers.servers import serving

DATA = pathlib.Path(__file__).parent / "data"
CAUSES = {
    "ex-exited": (ExitCause.EXITED, ExitStatus(code=3), ec.EXIT_CAUSE_EXITED),
    "ex-signalled": (ExitCause.SIGNALLED, ExitStatus(signal=15), ec.EXIT_CAUSE_SIGNALLED),
    "ex-timed-out": (ExitCause.TIMED_OUT, ExitStatus(signal=9), ec.EXIT_CAUSE_TIMED_OUT),
    "ex-lost": (ExitCause.LOST, ExitStatus(signal=9), ec.EXIT_CAUSE_LOST),
    "ex-killed": (ExitCause.KILLED, ExitStatus(signal=15), ec.EXIT_CAUSE_KILLED),
    "ex-failed": (ExitCause.FAILED_TO_START, ExitStatus(code=127), ec.EXIT_CAUSE_FAILED_TO_START),
    "ex-shutdown": (ExitCause.SHUTDOWN, ExitStatus(signal=9), ec.EXIT_CAUSE_SHUTDOWN),
    "ex-oom": (ExitCause.OOM, ExitStatus(signal=9), ec.EXIT_CAUSE_OUT_OF_MEMORY),
}


def test_every_cause_replays(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    shutil.copyfile(DATA / "journal-c0e0ab1.bin", path)
    j, state = journal.Journal.open(path)
    with j:
        assert state.stopped == "end" and state.undecodable == 0
        assert list(state.execs) == list(CAUSES)  # the forgotten one is gone
        for exec_id, (cause, status, _) in CAUSES.items():
            exited = state.execs[exec_id].exited
            assert exited is not None and exited.cause is cause and exited.status == status
        j.compact()  # rewritten with today's names, it replays to the same causes
    j, again = journal.Journal.open(path)
    j.close()
    assert {i: e.exited.cause for i, e in again.execs.items() if e.exited} == {i: c[0] for i, c in CAUSES.items()}
    assert b"timed out" not in path.read_bytes() and b"timed_out" in path.read_bytes()


def test_a_router_serves_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "state").mkdir()
    shutil.copyfile(DATA / "journal-c0e0ab1.bin", tmp_path / "state" / "journal")
    # Its execs ended in 2023: kept only with a retention as long as that.
    with serving(tmp_path, retain_secs=float(2**40)) as (_, client, _raw):
        for exec_id, (_, status, proto_cause) in CAUSES.items():
            info = client.inspect(exec_id)
            assert not info.running and info.exit.cause == proto_cause
            poll = client.poll(exec_id)
            assert (poll.code if poll.HasField("code") else None) == status.code
            assert b"".join(client.read(exec_id)) == b""
