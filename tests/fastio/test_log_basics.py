"""Stores and logs: construction and arena files, append and read, and a bytearray model."""
from __future__ import annotations

import os
import random
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.fds import Pipe
from tests.helpers.logs import PAGE, SEG, SLOTS, arena_bytes, decode_frame, payload

# -- construction, files ------------------------------------------------------


@pytest.mark.parametrize("size", [0, -PAGE, 1, PAGE + 1, PAGE // 2])
def test_segment_size_must_be_page_multiple(Log, logdir, size):
    with pytest.raises(ValueError):
        Log(logdir, size)


def test_missing_directory(Log, tmp_path):
    with pytest.raises(FileNotFoundError):
        Log(str(tmp_path / "nope"), SEG)


def test_defaults_and_properties(Log, logdir):
    log = Log(logdir)
    try:
        assert log.segment_size == 32 * 1024 * 1024
        assert (log.committed, log.eof, log.closed) == (0, False, False)
        log.mark_eof()
        assert log.eof
    finally:
        log.close()
    assert log.closed


def test_files_created_lazily(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"")
        assert log.read(0, 10) == b""
        assert os.listdir(logdir) == [] and log.segments == []
        data = payload(SLOTS * SEG + 1)
        log.append(data[:SEG])
        # Exactly full: the next segment has no byte yet, so it has no slot.
        assert os.listdir(logdir) == ["arena-00000000"] and log.segments == [0]
        log.append(data[SEG:])
        assert sorted(os.listdir(logdir)) == ["arena-00000000", "arena-00000001"]
        assert log.segments == list(range(SLOTS + 1)) and log.store.slots_used == SLOTS + 1
        for name in os.listdir(logdir):
            assert os.stat(os.path.join(logdir, name)).st_mode & 0o777 == 0o600
        # Arena files hold the bytes at slot * segment_size + position, sparse past the end.
        assert os.stat(os.path.join(logdir, "arena-00000001")).st_size == 1
        assert arena_bytes(logdir, log, 0, len(data)) == data
    finally:
        log.close()
    assert sorted(os.listdir(logdir)) == ["arena-00000000", "arena-00000001"]  # close keeps files


def test_one_fd_per_arena_none_per_segment(Log, logdir):
    before = sorted(os.listdir("/proc/self/fd"))
    log = Log(logdir, SEG)
    try:
        log.append(payload(5 * SEG))
        assert log.read(SEG - 3, 2 * SEG + 6) == payload(5 * SEG)[SEG - 3:3 * SEG + 3]
        assert len(os.listdir("/proc/self/fd")) == len(before) + 2  # 5 segments, 3 slots an arena
    finally:
        log.close()
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_logs_share_a_store(Log, logdir):
    a = Log(logdir, SEG)
    try:
        b = type(a)(a.store)
        a.append(b"a" * SEG)
        b.append(b"b" * (SEG + 1))
        a.append(b"A")
        assert (a.segments, b.segments) == ([0, 3], [1, 2])
        assert a.read(SEG - 1, 2) == b"aA" and b.read(0, SEG + 1) == b"b" * (SEG + 1)
        assert arena_bytes(logdir, b, 0, SEG + 1) == b"b" * (SEG + 1)
        with pytest.raises(TypeError):
            type(a)(logdir)
    finally:
        a.close()


# -- append / read ------------------------------------------------------------


@pytest.mark.parametrize("seg", [PAGE, 2 * PAGE])
def test_round_trip_across_segments(Log, logdir, seg):
    data = payload(5 * seg + 123, seed=seg)
    log = Log(logdir, seg)
    try:
        for chunk in (data[:10], data[10:seg - 1], data[seg - 1:seg + 1], data[seg + 1:4 * seg], data[4 * seg:]):
            log.append(chunk)
        assert log.committed == len(data)
        assert log.read(0, len(data) + 1000) == data
        for off, ln in [(0, 0), (seg - 3, 6), (seg, seg), (1, 3 * seg), (len(data), 5), (len(data) - 1, 5)]:
            expect = data[off:off + ln]
            assert log.read(off, ln) == expect
            frame = log.read_frame(off, ln)
            assert (decode_frame(frame) if expect else frame) == expect
        assert log.read(0, sys.maxsize) == data
        # bytes-likes
        log.append(bytearray(b"ab"))
        log.append(memoryview(b"xcdx")[1:3])
        assert log.read(len(data), 10) == b"abcd"
    finally:
        log.close()


def test_read_returns_bytes(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"hello")
        assert type(log.read(0, 5)) is bytes
        assert type(log.read_frame(0, 5)) is bytes
        assert type(log.read(5, 5)) is bytes
    finally:
        log.close()


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16383, 16384, 3 * PAGE + 5])
def test_read_frame_encoding(Log, logdir, n):
    data = payload(n, seed=n)
    log = Log(logdir, SEG)
    try:
        log.append(data)
        frame = log.read_frame(0, n)
        varint = bytearray()
        m = n
        while m >= 0x80:
            varint.append(m & 0x7F | 0x80)
            m >>= 7
        varint.append(m)
        assert frame == b"\x0a" + bytes(varint) + data
        assert log.read_frame(n, 10) == b""
        assert log.read_frame(0, 0) == b""
    finally:
        log.close()


def test_read_frame_parses_as_protobuf(Log, logdir):
    try:
        from router._proto.task_command_router_pb2 import TaskExecStdioReadResponse
    except Exception:  # generated code is someone else's; don't fail on it here
        pytest.skip("generated protobuf module not importable")
    data = payload(3 * SEG)
    log = Log(logdir, SEG)
    try:
        log.append(data)
        assert TaskExecStdioReadResponse.FromString(log.read_frame(5, 2 * SEG)).data == data[5:5 + 2 * SEG]
        assert TaskExecStdioReadResponse(data=data).SerializeToString() == log.read_frame(0, len(data))
    finally:
        log.close()


def test_read_errors(Log, logdir):
    log = Log(logdir, SEG)
    log.append(b"abc")
    assert log.read(3, 10) == b""
    for off, ln in [(4, 1), (-1, 1), (0, -1), (10**6, 0)]:
        with pytest.raises(ValueError):
            log.read(off, ln)
        with pytest.raises(ValueError):
            log.read_frame(off, ln)
    with pytest.raises(TypeError):
        log.read(0.0, 1)
    log.close()
    log.close()  # idempotent
    for call in (lambda: log.read(0, 1), lambda: log.read_frame(0, 1), lambda: log.append(b"x")):
        with pytest.raises(ValueError):
            call()
    with Pipe(blocking=True) as p, pytest.raises(ValueError):
        log.drain(p.r)
    assert log.committed == 3


def test_append_after_eof(Log, logdir):
    log = Log(logdir, SEG)
    try:
        log.append(b"abc")
        log.mark_eof()
        with pytest.raises(ValueError):
            log.append(b"d")
        assert log.read(0, 10) == b"abc"
    finally:
        log.close()


def test_append_rejects_non_buffers(Log, logdir):
    log = Log(logdir, SEG)
    try:
        with pytest.raises(TypeError):
            log.append("text")
        with pytest.raises(BufferError):
            log.append(memoryview(b"abcd")[::2])
        assert log.committed == 0
    finally:
        log.close()


# -- property test against a bytearray model -----------------------------------

op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3 * SEG)),
    st.tuples(st.just("read"), st.floats(0, 1), st.integers(0, 4 * SEG)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_model(Log, ops, seed):
    rng = random.Random(seed)
    model = bytearray()
    with tempfile.TemporaryDirectory() as d:
        log = Log(d, SEG)
        try:
            for o in ops:
                if o[0] == "append":
                    chunk = rng.randbytes(o[1])
                    log.append(chunk)
                    model += chunk
                    assert log.committed == len(model)
                else:
                    off = int(o[1] * len(model))
                    expect = bytes(model[off:off + o[2]])
                    assert log.read(off, o[2]) == expect
                    frame = log.read_frame(off, o[2])
                    assert (decode_frame(frame) if frame else b"") == expect
            assert log.read(0, len(model)) == model
            assert len(os.listdir(d)) == -(-len(log.segments) // SLOTS)
            assert arena_bytes(d, log, 0, len(model)) == model
        finally:
            log.close()


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * SEG), max_size=12), budget=st.integers(1, 3 * SEG))
def test_model_drain(Log, sizes, budget):
    """Drain in random budgets from a pipe fed in random writes."""
    data = payload(sum(sizes), seed=len(sizes))
    with tempfile.TemporaryDirectory() as d, Pipe() as p:
        log = Log(d, SEG)
        try:
            pos = 0
            for s in sizes:
                p.write(data[pos:pos + s])  # < pipe capacity since we drain after each
                pos += s
                while True:
                    n, eof = log.drain(p.r, budget)
                    assert not eof and n <= budget
                    if n == 0:
                        break
                assert log.committed == pos
            p.close_write()
            assert log.drain(p.r, budget) == (0, True)
            assert log.read(0, len(data)) == data
        finally:
            log.close()
