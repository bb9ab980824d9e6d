"""The journal's automatic compaction, on a thread of its own: records flushed while it runs end up
in the new file in order, compact() and close() cancel it, a full disk leaves the old journal in
use, and `kill -9` at any moment of it leaves the old journal or the new one, whole."""
from __future__ import annotations

import errno
import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest

from router.engine import journal
from router.engine.journal import Journal
from router.engine.journal_format import HEADER, Forgotten, Output, Record, Stdin, frame, replay
from router.engine.loop import LoopThread
from tests.helpers.journal_records import WRITER, begun, expected, lifecycle, same
from tests.helpers.polling import eventually
from tests.helpers.tmpfs import tmpfs

THREAD = "journal-compaction"


def compaction_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


def churned(execs: int) -> list[Record]:
    """`execs` finished execs, each stream first journaled mid-way: a third of the file is stale."""
    stale: list[Record] = [Output(f"e{i}", "stdout", [1, 2], 10, False) for i in range(execs)]
    stale += [Output(f"e{i}", "stderr", [3], 10, False) for i in range(execs)]
    return [*stale, *(r for i in range(execs) for r in lifecycle(f"e{i}"))]


@pytest.fixture
def slow_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """One exec a slice: a compaction of a few thousand execs takes a while, so a test can act during it."""
    monkeypatch.setattr(journal, "COMPACT_SLICE", 1)


def start_compaction(path: pathlib.Path, records: list[Record]) -> Journal:
    """The journal at `path` holding `records`, with an automatic compaction of it just started."""
    j, _ = Journal.open(path, auto_compact=False)
    with j:
        for record in records:
            j.append(record)
    j, _ = Journal.open(path, compact_min=0, compact_ratio=1.2)
    j.flush()
    assert j.compacting
    return j


@pytest.mark.usefixtures("slow_compaction")
def test_records_flushed_during_a_compaction_are_merged_into_the_new_file(tmp_path: pathlib.Path) -> None:
    """Records for execs the compaction has written already, for those it has not reached, and for
    new ones; execs begun afresh and forgotten: the new file replays to the merge of them all."""
    path, tmp = tmp_path / "journal", tmp_path / "journal.tmp"
    records = churned(2000)
    j = start_compaction(path, records)
    with j:
        size = j.size
        assert eventually(lambda: tmp.exists() and tmp.stat().st_size > 20_000)  # the first execs are written
        during: list[Record] = [
            Output("e0", "stdout", [5], 99, True), Output("e1999", "stderr", [6], 98, True),  # written, not yet
            Forgotten("e1"), Forgotten("e1998"), begun("e2", args=["again"]), begun("e1997", args=["again"]),
            *lifecycle("new"), Forgotten("e3"), *lifecycle("e3"), Stdin("e4", 77, True), Forgotten("nobody"),
        ]
        for record in during:
            j.append(record)
            j.flush()
        assert j.compacting  # all of them were flushed while it ran
        assert eventually(lambda: not j.compacting, timeout=30)
        assert j.compactions == 1 and j.compaction_error is None and not tmp.exists()
        assert j.size == path.stat().st_size < size
        j.append(Forgotten("e5"))  # appending goes on in the new file
    want = expected([*records, *during, Forgotten("e5")])
    assert same(replay(path), want)
    assert list(want.execs)[-2:] == ["new", "e3"] and "e2" not in list(want.execs)[:100]


@pytest.mark.usefixtures("slow_compaction")
@pytest.mark.parametrize("how", ["compact", "close"])
def test_compact_and_close_cancel_a_compaction_in_flight(tmp_path: pathlib.Path, how: str) -> None:
    path, tmp = tmp_path / "journal", tmp_path / "journal.tmp"
    records = churned(2000)
    want = expected([*records, Forgotten("e0")])
    j = start_compaction(path, records)
    try:
        j.append(Forgotten("e0"))
        if how == "compact":
            size = j.compact()  # flushes, cancels, and compacts as it always did: at once, fsynced
            assert size == path.stat().st_size == len(HEADER) + sum(len(frame(r)) for r in want.records())
        else:
            j.close()
        assert not j.compacting and not compaction_threads() and not tmp.exists()
    finally:
        j.close()
    state = replay(path)
    assert same(state, want)
    assert how == "close" or state.orphans == state.replaced == 0


@pytest.mark.usefixtures("slow_compaction")
def test_the_new_file_keeps_the_room_reserved_in_the_old(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    j = start_compaction(path, churned(2000))
    with j:
        assert j.reserve(1 << 20)  # 2 MiB allocated past the end, while it runs
        assert eventually(lambda: not j.compacting, timeout=30)
        assert j.compactions == 1 and j.size < 1 << 20
        assert path.stat().st_blocks * 512 >= j.size + (2 << 20)


@pytest.mark.timeout(60)
def test_compaction_in_the_background_while_the_loop_and_threads_append(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop thread appends and flushes every millisecond, as the engine does, and three threads
    append (and now and then flush) execs that begin, move on, begin afresh and are forgotten,
    while the journal compacts itself again and again: it replays to every record, in order."""
    monkeypatch.setattr(journal, "COMPACT_SLICE", 5)
    path = tmp_path / "journal"
    j, _ = Journal.open(path, compact_min=32 << 10)
    order: list[Record] = []  # what was appended, in the journal's order
    order_lock = threading.Lock()
    latest = ["none"]

    def append(record: Record) -> None:
        with order_lock:
            j.append(record)
            order.append(record)

    flushes = {"all": 0, "compacting": 0}
    stop = threading.Event()
    loop = LoopThread("journal-test-loop")

    def tick() -> None:
        append(Stdin(latest[0], flushes["all"], False))
        j.flush()
        flushes["all"] += 1
        flushes["compacting"] += j.compacting
        if not stop.is_set():
            loop.loop.call_later(0.001, tick)

    def work(n: int) -> None:
        rng = random.Random(n)
        live: deque[str] = deque()
        for i in range(2000):
            exec_id = f"t{n}-{i}"
            for record in lifecycle(exec_id):
                append(record)
            latest[0] = exec_id
            live.append(exec_id)
            if len(live) > 30:
                append(Forgotten(live.popleft()))
            older = rng.choice(live)
            append(Output(older, "stdout", [i], i, rng.random() < 0.5))
            if rng.random() < 0.03:
                append(begun(older, args=[str(i)]))
            if i % 100 == 0:
                j.flush()
            time.sleep(0.0002)  # a pace the loop's flushes keep up with

    loop.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    try:
        loop.call_soon(tick)
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        stop.set()
        loop.run(lambda: None)
        loop.stop(5)
        j.close()
    assert j.compactions >= 3 and j.compaction_error is None
    assert flushes["compacting"] > 0  # the loop flushed while compactions ran
    assert same(replay(path), expected(order))


# -- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    with tmpfs(tmp_path / "fs", 1 << 20) as mount:
        yield mount


def free_bytes(directory: pathlib.Path) -> int:
    fs = os.statvfs(directory)
    return fs.f_bavail * fs.f_frsize


def test_a_compaction_that_meets_a_full_disk_leaves_the_journal_in_use(small_fs: pathlib.Path) -> None:
    """On a 1 MiB tmpfs: the new file finds no room (ENOSPC); the old journal stays, whole, and
    takes appends; once there is room and the file has grown further, the compaction is retried."""
    path, tmp, filler = small_fs / "journal", small_fs / "journal.tmp", small_fs / "filler"
    j, _ = Journal.open(path, compact_min=200 << 10, compact_ratio=1.5)
    with j:
        records = [r for i in range(300) for r in lifecycle(f"e{i}")]  # about 90 KiB live
        for record in records:
            j.append(record)
        j.flush()
        n = 0

        def churn(until: int) -> None:  # stale records: the file grows, the live state does not
            nonlocal n
            while j.size < until:
                record = Output(f"e{n % 300}", "stdout", [n], n, True)
                records.append(record)
                j.append(record)
                j.flush()
                n += 1

        churn((200 << 10) - 1024)
        assert j.compactions == 0 and not j.compacting
        filler.write_bytes(bytes(free_bytes(small_fs) - (24 << 10)))  # room for appends, not for a copy
        churn((200 << 10) + 1)  # past the threshold: a compaction starts, and fails
        assert eventually(lambda: not j.compacting)
        assert isinstance(j.compaction_error, OSError) and j.compaction_error.errno == errno.ENOSPC
        assert j.compactions == 0 and not tmp.exists()
        assert j.size == path.stat().st_size and same(replay(path), expected(records))
        churn(j.size + 4096)  # still in use, and not retried at once
        assert j.compactions == 0 and not j.compacting and same(replay(path), expected(records))
        filler.unlink()
        churn(j.size + (200 << 10))  # retried after the file grew by compact_min
        assert eventually(lambda: not j.compacting)
        assert j.compactions == 1 and j.compaction_error is None
        assert j.size == path.stat().st_size < 200 << 10
    assert same(replay(path), expected(records))


# -- kill -9 ---------------------------------------------------------------------------------------


KEEP = 500  # the writer keeps the 500 newest execs



@pytest.mark.timeout(120)
def test_kill_9_during_a_compaction_leaves_one_whole_journal(tmp_path: pathlib.Path) -> None:
    """A writer compacting now and then is killed at a random moment soon after it says a
    compaction runs: the journal replays every exec it had flushed, and `open` drops the
    half-written `.tmp`. Repeated until three kills found one."""
    path, tmp = tmp_path / "journal", tmp_path / "journal.tmp"
    rng = random.Random(9)
    interrupted = 0
    for _ in range(30):
        path.unlink(missing_ok=True)
        # A slice of 2 execs: long compactions, so most kills land in one.
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(KEEP), "2"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        try:
            lines = []
            for line in proc.stdout:  # until a compaction runs (or the writer dies)
                lines.append(line)
                if line.split()[1] == "1" and int(line.split()[0]) > 2 * KEEP:
                    break
            time.sleep(rng.uniform(0, 0.03))
        finally:
            proc.send_signal(signal.SIGKILL)
            lines += proc.stdout.readlines()
            proc.stdout.close()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        flushed = int(lines[-1 if lines[-1].endswith("\n") else -2].split()[0])
        interrupted += tmp.exists()
        state = replay(path)
        ids = list(state.execs)
        first = int(ids[0][1:])
        assert ids == [f"e{i}" for i in range(first, first + len(ids))]
        # Exec `flushed` is whole; the next one's records (and its Forgotten) may be too, or a part.
        assert first in (flushed - KEEP + 1, flushed - KEEP + 2)
        assert first + len(ids) - 1 in (flushed, flushed + 1)
        for ex in list(state.execs.values())[:flushed + 1 - first]:
            assert ex.exited is not None and ex.outputs["stdout"].eof
            assert ex.outputs["stdout"].committed == int(ex.exec_id[1:]) + 1
        j, reopened = Journal.open(path)
        j.close()
        assert same(reopened, state) and not tmp.exists()
        if interrupted == 3:
            break
    assert interrupted == 3
