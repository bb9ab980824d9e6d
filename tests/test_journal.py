"""The exec journal: records round-trip, any crash leaves a replayable prefix, compaction keeps state."""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.engine import journal, journal_format
from router.engine.journal import Journal
from router.engine.journal_format import (
    HEADER,
    Begun,
    Exited,
    Forgotten,
    JournalError,
    Output,
    Record,
    RecordTooLarge,
    Spawned,
    Stdin,
    frame,
    parse,
    replay,
)
from router.engine.records import ExitCause, ExitStatus, PtySpec
from tests.helpers.journal_records import SECRET, WRITER, begun, expected, lifecycle, same
from tests.helpers.polling import eventually

EVERY_KIND: list[Record] = [*lifecycle("every"), Exited("every", ExitStatus(signal=9), 2.0, ExitCause.TIMED_OUT),
                            Forgotten("every")]


def write_journal(path: pathlib.Path, records: list[Record]) -> list[int]:
    """Write `records` through a Journal; return each record's start offset (and the end)."""
    j, _ = Journal.open(path, auto_compact=False)
    with j:
        offsets = [j.size]
        for record in records:
            j.append(record)
            j.flush()
            offsets.append(j.size)
    return offsets


# -- records ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", EVERY_KIND, ids=lambda r: type(r).__name__)
def test_every_kind_round_trips(record: Record) -> None:
    assert journal_format.decode_record(journal_format.encode_record(record)) == record
    (length, crc), payload = struct.unpack_from("<II", frame(record)), frame(record)[8:]
    assert length == len(payload) and crc == zlib.crc32(payload)


def test_records_round_trip_through_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    write_journal(path, EVERY_KIND[:-1])
    state = replay(path)
    assert state.stopped == "end" and state.valid_length == path.stat().st_size
    ex = state.execs["every"]
    assert ex.begun == begun("every") and ex.pid == 4242 and ex.fingerprint == bytes(32)
    assert ex.outputs == {"stdout": EVERY_KIND[2], "stderr": EVERY_KIND[3]}
    assert ex.stdin == Stdin("every", 5, True)
    assert ex.status == ExitStatus(signal=9) and ex.exited is not None and ex.exited.cause is ExitCause.TIMED_OUT
    assert list(ex.records()) == [*lifecycle("every")[:-1], EVERY_KIND[-2]]


def test_records_are_frozen_and_strict() -> None:
    with pytest.raises(AttributeError):
        Spawned("x", 1, False).pid = 2  # type: ignore[misc]  # the assignment the test expects refused
    payload = msgspec.msgpack.encode(["spawned", "x", 1, False, "extra"])
    with pytest.raises(msgspec.ValidationError):
        journal_format.decode_record(payload)
    with pytest.raises(msgspec.ValidationError):
        journal_format.decode_record(msgspec.msgpack.encode(["output", "x", "stdin", [], 0, False]))


def test_forgotten_removes_and_begun_restarts(tmp_path: pathlib.Path) -> None:
    records: list[Record] = [*lifecycle("a"), *lifecycle("b"), Forgotten("a"), Output("a", "stdout", [1], 1, False),
                             begun("b", args=["true"]), Spawned("zz", 1, True)]
    path = tmp_path / "journal"
    write_journal(path, records)
    state = replay(path)
    assert list(state.execs) == ["b"]
    assert state.execs["b"].begun.args == ["true"] and state.execs["b"].spawned is None
    assert (state.orphans, state.replaced, state.replayed) == (2, 1, len(records))


def test_execs_are_in_age_order() -> None:
    """A Begun for a live id starts it afresh as the newest, so retention releases it last."""
    state = expected([begun("a"), begun("b"), begun("c"), Spawned("a", 1, False), begun("b"), Forgotten("c"),
                      begun("c")])
    assert list(state.execs) == ["a", "b", "c"]
    assert expected([begun("a"), begun("b"), begun("a")]).execs.keys() == {"a", "b"}
    assert list(expected([begun("a"), begun("b"), begun("a")]).execs) == ["b", "a"]


# -- secrets ---------------------------------------------------------------------------------------


def test_secret_env_values_never_reach_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path, compact_min=0)
    with j:
        record = begun("sec")
        assert record.env_names == ["PATH", "TOKEN"]
        j.append(record)
        j.flush()
        assert SECRET.encode() not in path.read_bytes() and b"TOKEN" in path.read_bytes()
        j.compact()
    data = path.read_bytes()
    assert SECRET.encode() not in data and b"/bin" not in data and b"TOKEN" in data
    assert replay(path).execs["sec"].begun.env_names == ["PATH", "TOKEN"]


# -- crashes at any byte ---------------------------------------------------------------------------


@pytest.fixture
def three_execs(tmp_path: pathlib.Path) -> tuple[list[Record], list[int], bytes]:
    records = [*lifecycle("a"), *lifecycle("b"), *lifecycle("c")]
    path = tmp_path / "whole"
    offsets = write_journal(path, records)
    return records, offsets, path.read_bytes()


@pytest.mark.parametrize("which", ["header", "middle", "last"])
def test_a_cut_at_every_byte_replays_the_whole_records_before_it(
        tmp_path: pathlib.Path, three_execs: tuple[list[Record], list[int], bytes], which: str) -> None:
    records, offsets, data = three_execs
    index = {"header": -1, "middle": len(records) // 2, "last": len(records) - 1}[which]
    start, end = (0, len(HEADER)) if index < 0 else (offsets[index], offsets[index + 1])
    kept = records[:max(index, 0)]
    want = expected(kept)
    extra = Output("a", "stdout", [1, 2, 3], 99, False)
    path = tmp_path / "journal"
    for cut in range(start, end):
        path.write_bytes(data[:cut])
        state = replay(path)
        assert same(state, want), cut
        assert state.valid_length == (start if index >= 0 else 0), cut
        assert state.stopped == ("end" if cut == start or cut == 0 else "short"), cut
        # Reopening cuts the torn tail and appends after the last whole record.
        j, reopened = Journal.open(path, auto_compact=False)
        with j:
            assert same(reopened, want)
            assert path.stat().st_size == max(start, len(HEADER))
            j.append(extra)
        after = replay(path)
        assert after.stopped == "end"
        assert same(after, expected([*kept, extra])), cut
        assert after.replayed == len(kept) + 1


def test_a_flipped_byte_stops_replay_at_its_record(
        tmp_path: pathlib.Path, three_execs: tuple[list[Record], list[int], bytes]) -> None:
    records, offsets, data = three_execs
    index = len(records) // 2
    want = expected(records[:index])
    path = tmp_path / "journal"
    for pos in range(offsets[index], offsets[index + 1]):  # length, checksum and payload bytes
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= flip
            state = parse(bytes(bad))
            assert state.valid_length == offsets[index], pos
            assert state.stopped in ("checksum", "short", "oversized", "empty"), pos
            assert same(state, want), pos
    # The writer cuts there too: what followed the bad record is lost, what precedes it is kept.
    bad = bytearray(data)
    bad[offsets[index + 1] - 1] ^= 0xFF
    path.write_bytes(bytes(bad))
    j, state = Journal.open(path)
    j.close()
    assert same(state, want) and state.stopped == "checksum" and path.stat().st_size == offsets[index]


@pytest.mark.parametrize("tail", [b"\x00" * 4096, b"\xff" * 9, os.urandom(1000),
                                  struct.pack("<II", 5, 0) + b"hello", struct.pack("<II", 1 << 30, 0)],
                         ids=["zeros", "ones", "random", "badcrc", "huge"])
def test_a_garbage_tail_is_ignored_then_cut(
        tmp_path: pathlib.Path, three_execs: tuple[list[Record], list[int], bytes], tail: bytes) -> None:
    records, offsets, data = three_execs
    path = tmp_path / "journal"
    path.write_bytes(data + tail)
    state = replay(path)
    assert same(state, expected(records)) and state.valid_length == len(data) and state.file_length == len(data + tail)
    j, _ = Journal.open(path)
    with j:
        j.append(Forgotten("a"))
    assert path.stat().st_size == len(data) + len(frame(Forgotten("a")))
    assert list(replay(path).execs) == ["b", "c"]


def test_a_whole_record_that_does_not_decode_is_skipped(tmp_path: pathlib.Path) -> None:
    junk = msgspec.msgpack.encode(["from-a-later-version", 1, 2])
    path = tmp_path / "journal"
    path.write_bytes(HEADER + frame(begun("a")) + struct.pack("<II", len(junk), zlib.crc32(junk)) + junk
                     + frame(Spawned("a", 7, False)))
    state = replay(path)
    assert state.undecodable == 1 and state.stopped == "end" and state.execs["a"].pid == 7


def test_not_a_journal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    path.write_bytes(b"hello world, not a journal")
    with pytest.raises(JournalError, match="magic"):
        Journal.open(path)
    assert path.read_bytes() == b"hello world, not a journal"  # left alone
    path.write_bytes(journal_format.MAGIC + struct.pack("<I", 99))
    with pytest.raises(JournalError, match="version 99"):
        replay(path)
    path.write_bytes(b"TC")  # a torn header is an empty journal
    assert replay(path).stopped == "short"
    assert replay(tmp_path / "missing").stopped == "missing"


# -- the writer ------------------------------------------------------------------------------------


def test_open_creates_a_private_file_and_removes_a_stale_tmp(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    (tmp_path / "journal.tmp").write_bytes(b"half a compaction")
    j, state = Journal.open(path)
    with j:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == HEADER and not state.execs
        assert not (tmp_path / "journal.tmp").exists()


def counting_pwrite(monkeypatch: pytest.MonkeyPatch, limit: int | None = None,
                    fail: Callable[[int], OSError | None] = lambda n: None) -> list[int]:
    """Patch os.pwrite: record each call's size, write at most `limit` bytes, raise fail(call#)."""
    calls: list[int] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        error = fail(len(calls))
        if error is not None:
            raise error
        return real(fd, memoryview(data)[:limit] if limit else data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return calls


def test_append_buffers_and_flush_writes_once(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path)
    with j:
        calls = counting_pwrite(monkeypatch)
        records = [r for i in range(100) for r in lifecycle(f"e{i}")]
        for record in records:
            j.append(record)
        assert calls == [] and path.stat().st_size == len(HEADER) and j.pending == len(records)
        written = j.flush()
        assert len(calls) == 1 and written == calls[0] == path.stat().st_size - len(HEADER) == j.size - len(HEADER)
        assert j.pending == 0 and j.flush() == 0 and len(calls) == 1
        assert j.flush(fsync=True) == 0 and len(calls) == 1
    assert same(replay(path), expected(records))


def test_short_writes_are_completed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path)
    with j:
        calls = counting_pwrite(monkeypatch, limit=7)
        records = lifecycle("a")
        for record in records:
            j.append(record)
        j.flush()
        assert len(calls) > 10
    assert same(replay(path), expected(records))


def test_a_failed_write_keeps_the_records_and_the_file_whole(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path)
    with j:
        j.append(begun("a"))
        j.flush()
        size = path.stat().st_size
        # The first write goes halfway, the second finds the disk full.
        calls = counting_pwrite(monkeypatch, limit=20,
                                fail=lambda n: OSError(errno.ENOSPC, "No space left on device") if n == 2 else None)
        j.append(Spawned("a", 1, False))
        j.append(Exited("a", ExitStatus(code=3), 5.0, ExitCause.EXITED))
        with pytest.raises(OSError) as info:
            j.flush()
        assert info.value.errno == errno.ENOSPC and len(calls) == 2
        assert path.stat().st_size == size == j.size and j.pending == 2  # cut back to whole records
        j.append(Stdin("a", 0, True))
        monkeypatch.undo()
        j.flush()
    state = replay(path)
    assert state.stopped == "end" and state.execs["a"].pid == 1 and state.execs["a"].status == ExitStatus(code=3)
    assert state.execs["a"].stdin == Stdin("a", 0, True)


def test_a_too_large_record_is_refused_and_the_rest_kept(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "MAX_RECORD", 200)
    path = tmp_path / "journal"
    j, _ = Journal.open(path)
    with j:
        j.append(Spawned("a", 1, False))
        j.append(begun("a", args=["x" * 300]))
        j.append(begun("b"))
        with pytest.raises(RecordTooLarge):
            j.flush()
        assert j.pending == 2 and j.size == len(HEADER)
        j.flush()
    assert list(replay(path).execs) == ["b"]


def test_appends_from_many_threads(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path)
    with j:
        def work(n: int) -> None:
            for i in range(200):
                j.append(begun(f"t{n}-{i}"))
                if i % 50 == 0:
                    j.flush()
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(replay(path).execs) == 800


def test_closed_journal_refuses_appends(tmp_path: pathlib.Path) -> None:
    j, _ = Journal.open(tmp_path / "journal")
    j.close()
    j.close()
    with pytest.raises(ValueError):
        j.append(Forgotten("a"))
    with pytest.raises(ValueError):
        j.flush()


def test_open_returns_a_state_the_journal_does_not_change(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    write_journal(path, lifecycle("a"))
    j, state = Journal.open(path, compact_min=0)
    with j:
        j.append(Forgotten("a"))
        j.append(Output("a", "stdout", [], 0, False))
        j.flush()
        j.compact()
    assert list(state.execs) == ["a"] and state.execs["a"].outputs["stdout"].slots == [3, -1, 7]
    assert not replay(path).execs


# -- compaction ------------------------------------------------------------------------------------


IDS = st.sampled_from(["a", "b", "c", "d", "e"])
FLOATS = st.floats(allow_nan=False)
STATUS = st.builds(ExitStatus, st.none() | st.integers(0, 255), st.none() | st.integers(1, 64))
RECORDS: st.SearchStrategy[Record] = st.one_of(
    st.builds(Begun, IDS, st.binary(max_size=32), st.lists(st.text(max_size=5), max_size=3),
              st.none() | st.text(max_size=5), st.sampled_from(["devnull", "pipe"]),
              st.sampled_from(["devnull", "pipe", "stdout"]), st.none() | st.integers(0, 10**6),
              st.none() | st.builds(PtySpec, st.integers(0, 500), st.integers(0, 500)),
              st.lists(st.text(max_size=5), max_size=3), FLOATS),
    st.builds(Spawned, IDS, st.integers(1, 2**22), st.booleans()),
    st.builds(Output, IDS, st.sampled_from(["stdout", "stderr"]), st.lists(st.integers(-1, 1000), max_size=5),
              st.integers(0, 2**40), st.booleans()),
    st.builds(Stdin, IDS, st.integers(0, 2**40), st.booleans()),
    st.builds(Exited, IDS, STATUS, FLOATS, st.sampled_from(list(ExitCause))),
    st.builds(Forgotten, IDS),
)


@contextlib.contextmanager
def scratch() -> Iterator[pathlib.Path]:
    """A fresh directory per hypothesis example (tmp_path is one per test)."""
    with tempfile.TemporaryDirectory() as d:
        yield pathlib.Path(d)


@settings(max_examples=150, deadline=None)
@given(st.lists(RECORDS, max_size=60), st.integers(1, 10))
def test_compaction_preserves_state(records: list[Record], flush_every: int) -> None:
    with scratch() as d:
        path = d / "journal"
        j, _ = Journal.open(path, auto_compact=False)
        with j:
            for i, record in enumerate(records):
                j.append(record)
                if i % flush_every == 0:
                    j.flush()
            j.flush()
            before = replay(path)
            assert same(before, expected(records))
            size = j.compact()
            assert size == path.stat().st_size <= len(path.read_bytes())
            after = replay(path)
            assert same(after, before) and after.orphans == after.replaced == 0
            assert size == len(HEADER) + sum(len(frame(r)) for r in before.records())
            # Appending after a compaction goes on from the compacted file.
            j.append(Forgotten("a"))
        before.apply(Forgotten("a"))
        assert same(replay(path), before)
        # The caller's own view of the live state compacts to the same file.
        j2, reopened = Journal.open(path, auto_compact=False)
        with j2:
            j2.compact(list(reopened.records()))
        assert same(replay(path), before)


def test_automatic_compaction_bounds_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path, compact_min=64 << 10)
    with j:
        live: list[Record] = []
        for i in range(3000):
            records = lifecycle(f"e{i}")
            for record in records:
                j.append(record)
            j.flush()
            if i >= 20:  # retention keeps the 20 newest
                j.append(Forgotten(f"e{i - 20}"))
            live = [r for n in range(max(0, i - 19), i + 1) for r in lifecycle(f"e{n}")]
            assert eventually(lambda: not j.compacting)  # it runs in the background: bounded once done
            assert j.size == path.stat().st_size
            assert j.size <= 64 << 10 or j.size <= 4 * (len(HEADER) + sum(len(frame(r)) for r in live)) + 4096
        j.flush()
        assert j.compactions > 5 and j.compaction_error is None
    assert same(replay(path), expected(live))


# -- scale -----------------------------------------------------------------------------------------


def test_ten_thousand_execs_replay(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal"
    j, _ = Journal.open(path, auto_compact=False)
    with j:
        for i in range(10_000):
            for record in lifecycle(f"exec-{i:05d}"):
                j.append(record)
            if i % 100 == 99:
                j.flush()
    state = replay(path)
    assert state.stopped == "end" and state.replayed == 60_000 and len(state.execs) == 10_000
    assert list(state.execs)[0] == "exec-00000" and list(state.execs)[-1] == "exec-09999"
    for i in (0, 4321, 9999):
        assert list(state.execs[f"exec-{i:05d}"].records()) == lifecycle(f"exec-{i:05d}")




@pytest.mark.parametrize("mode", ["grow", "churn"])
def test_kill_9_leaves_a_replayable_prefix(tmp_path: pathlib.Path, mode: str) -> None:
    """A writer killed at a random moment (with churn: compacting now and then): whole execs up to
    some point, then a prefix of the next."""
    path = tmp_path / "journal"
    for _ in range(3):
        path.unlink(missing_ok=True)
        keep = 50 if mode == "churn" else 0  # churn: compacting every 64 KiB or so
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(keep), "100"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            started = time.monotonic()
            while time.monotonic() < deadline and not (
                    path.exists()
                    and (path.stat().st_size > 200_000 if mode == "grow" else time.monotonic() - started > 0.5)):
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        state = replay(path)
        assert state.stopped in ("end", "short") and state.execs
        ids = list(state.execs)
        first = int(ids[0][1:])
        assert ids == [f"e{i}" for i in range(first, first + len(ids))]
        assert mode == "grow" and first == 0 or mode == "churn" and len(ids) <= 51
        for ex in list(state.execs.values())[:-1]:
            # Its stderr had nothing: an empty stream's Output leaves none in the state.
            assert ex.exited is not None and set(ex.outputs) == {"stdout"}
        j, reopened = Journal.open(path)
        with j:
            j.append(Forgotten(ids[0]))
        assert same(reopened, state) and list(replay(path).execs) == ids[1:]
        assert not (tmp_path / "journal.tmp").exists()
