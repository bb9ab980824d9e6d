"""release(): the middle of a running log given back (the per-exec output cap)."""
from __future__ import annotations

import random
import tempfile
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.logs import PAGE, SEG, SLOTS, arena_bytes, decode_frame, delta, payload
from tests.helpers.signals import Interrupted, blocking_arena, kicking


def test_release_then_read(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    data = payload(6 * SEG + 10)
    try:
        log.append(data)
        c0 = fio.counters()
        assert (log.released_range, log.held_bytes) == ((0, 0), len(data))
        assert log.release(1, 3) == 2 * SEG
        assert log.segments == [0, -1, -1, 3, 4, 5, 6]
        assert (log.released_range, log.held_bytes) == ((SEG, 3 * SEG), len(data) - 2 * SEG)
        assert delta(fio, c0) == {"slots_in_use": -2}  # nobody inside: back at once
        assert issubclass(fio.OffsetReleased, LookupError)
        # Inside the gap: OffsetReleased naming the first offset still held, whatever the length.
        for off in (SEG, SEG + 1, 2 * SEG, 3 * SEG - 1):
            for call in (log.read, log.read_frame):
                for n in (0, 1, 10 * SEG):
                    with pytest.raises(fio.OffsetReleased) as exc:
                        call(off, n)
                    assert exc.value.first_held == 3 * SEG and exc.value.offset == off
                    assert str(3 * SEG) in str(exc.value)
        # Before it: stops at the gap, never bytes across it.
        assert log.read(0, 10 * SEG) == data[:SEG]
        assert log.read(SEG - 5, 100) == data[SEG - 5:SEG]
        assert decode_frame(log.read_frame(SEG - 5, 100)) == data[SEG - 5:SEG]
        assert log.read(SEG - 5, 3) == data[SEG - 5:SEG - 2]
        # After it: as before.
        assert log.read(3 * SEG, 10 * SEG) == data[3 * SEG:]
        assert log.read(4 * SEG - 3, 6) == data[4 * SEG - 3:4 * SEG + 3]
        assert decode_frame(log.read_frame(3 * SEG, SEG)) == data[3 * SEG:4 * SEG]
        assert log.read(len(data), 5) == b""
        # Extended at its end only; an empty range does nothing.
        assert log.release(1, 3) == 0 and log.release(2, 3) == 0 and log.release(4, 4) == 0
        assert log.release(3, 4) == SEG and log.release(1, 5) == SEG
        assert log.segments == [0, -1, -1, -1, -1, 5, 6] and log.released_range == (SEG, 5 * SEG)
        assert delta(fio, c0) == {"slots_in_use": -4}
        with pytest.raises(fio.OffsetReleased) as exc:
            log.read(3 * SEG, 1)
        assert exc.value.first_held == 5 * SEG
        for start, stop, why in [(0, 6, "extended at its end"), (0, 1, "extended at its end"),
                                 (6, 6 + 1, "tail"), (5, 7, "tail"), (2, 1, "bad"), (-1, 2, "bad"),
                                 (1, 7, "tail")]:
            with pytest.raises(ValueError, match=why):
                log.release(start, stop)
        assert log.released_range == (SEG, 5 * SEG)
        # The tail moves on: what was the tail segment can go now.
        log.append(data[:SEG])
        assert log.release(5, 7) == 2 * SEG and log.read(0, 10 * SEG) == data[:SEG]
        assert log.read(7 * SEG, 2 * SEG) == (data + data[:SEG])[7 * SEG:]
    finally:
        log.close()
        store.close()
    assert log.segments == [] and log.released_range == (SEG, 7 * SEG)
    with pytest.raises(ValueError):
        log.release(1, 2)


def test_release_needs_a_contiguous_range(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    try:
        log.append(payload(8 * SEG))
        assert log.release(2, 3) == SEG
        with pytest.raises(ValueError):
            log.release(4, 6)  # a second range
        with pytest.raises(ValueError):
            log.release(1, 3)  # growing at the start
        assert log.release(3, 5) == 2 * SEG and log.released_range == (2 * SEG, 5 * SEG)
        assert log.read(0, 8 * SEG) == payload(8 * SEG)[:2 * SEG]
        other = fio.SegmentedLog(store)
        with pytest.raises(ValueError):
            other.release(0, 1)  # empty log: segment 0 is the tail
        assert other.release(0, 0) == 0 and other.released_range == (0, 0)
        other.close()
    finally:
        log.close()
        store.close()


def test_released_slots_reused_by_other_logs(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    data = payload(5 * SEG + 1, seed=1)
    try:
        log.append(data)
        log.release(1, 4)
        other = fio.SegmentedLog(store)
        other.append(b"o" * (4 * SEG))
        assert other.segments == [1, 2, 3, 6]  # the released ones first, lowest first
        assert store.slots_used == 7
        assert arena_bytes(logdir, other, 0, 4 * SEG) == b"o" * (4 * SEG)
        assert log.read(0, 10 * SEG) == data[:SEG] and log.read(4 * SEG, 10 * SEG) == data[4 * SEG:]
        c0 = fio.counters()
        log.close()  # gives back what it still holds, the released ones not again
        assert delta(fio, c0) == {"open_logs": -1, "slots_in_use": -3}
        third = fio.SegmentedLog(store)
        third.append(b"t" * (3 * SEG))
        assert sorted(third.segments) == [0, 4, 5] and other.read(0, 4 * SEG) == b"o" * (4 * SEG)
        third.close()
        other.close()
    finally:
        log.close()
        store.close()


def test_release_with_reader_inside_defers_slot_return(fio, logdir):
    """Deterministic: the reader sleeps in pread() on segment 0 (see blocking_arena) and the signal
    handler, running inside read(), releases segments 1-2 and has another log take slots: it must
    not get 1 or 2 while the reader is inside; once it has left, they are handed out."""
    store = fio.SegmentStore(logdir, SEG, 1)  # one slot an arena: only slot 0 reads from kmsg
    log = fio.SegmentedLog(store)
    data = payload(4 * SEG + 1)
    log.append(data)
    seen: dict[str, Any] = {}

    def handler(signum, frame):
        if log.readers != 1 or seen:
            return  # not inside read() yet
        before = fio.counters()
        seen["released"] = log.release(1, 3)
        seen["state"] = (log.segments, log.released_range, delta(fio, before))
        other = fio.SegmentedLog(store)
        other.append(b"o" * (2 * SEG))  # must not get slot 1 or 2: the reader is still inside
        seen["other"] = other
        seen["in_use"] = fio.counters()["slots_in_use"]
        raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: bool(seen), unblock) as timed_out:
            with pytest.raises(Interrupted):
                log.read(0, 4 * SEG)
        assert not timed_out
        assert seen["released"] == 2 * SEG
        assert seen["state"] == ([0, -1, -1, 3, 4], (SEG, 3 * SEG), {}), "slots went back with a reader inside"
        assert seen["other"].segments == [5, 6], "released slots were handed out with a reader inside"
        # The reader has left: slots 1 and 2 are back, and the next ones handed out.
        assert log.readers == 0 and fio.counters()["slots_in_use"] == seen["in_use"] - 2
        third = fio.SegmentedLog(store)
        third.append(b"t" * (2 * SEG))
        assert third.segments == [1, 2] and store.slots_used == 7
        assert log.read(3 * SEG, 2 * SEG) == data[3 * SEG:]
        third.close()
        seen["other"].close()
    finally:
        seen.clear()
        log.close()
        store.close()


release_op = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3 * SEG)),
    st.tuples(st.just("release"), st.integers(0, 3), st.integers(0, 12)),
    st.tuples(st.just("read"), st.floats(0, 1), st.integers(0, 4 * SEG)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(release_op, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_model_release(fio, ops, seed):
    """release() and reads at random offsets against a model: bytes plus one released range."""
    rng = random.Random(seed)
    model = bytearray()
    rel: tuple[int, int] | None = None  # released segments [a, b)
    with tempfile.TemporaryDirectory() as d:
        store = fio.SegmentStore(d, SEG, SLOTS)
        c0 = fio.counters()
        log = fio.SegmentedLog(store)
        try:
            for o in ops:
                if o[0] == "append":
                    chunk = rng.randbytes(o[1])
                    log.append(chunk)
                    model += chunk
                elif o[0] == "release":
                    start, stop = o[1], o[1] + o[2]
                    tail = len(model) // SEG
                    if start == stop:
                        assert log.release(start, stop) == 0
                    elif stop > tail or (rel is not None and not rel[0] <= start <= rel[1]):
                        with pytest.raises(ValueError):
                            log.release(start, stop)
                    else:
                        first = start if rel is None else max(start, rel[1])
                        assert log.release(start, stop) == max(stop - first, 0) * SEG
                        rel = (start, stop) if rel is None else (rel[0], max(rel[1], stop))
                else:
                    off = int(o[1] * len(model))
                    lo, hi = (rel[0] * SEG, rel[1] * SEG) if rel else (len(model) + 1, len(model) + 1)
                    if lo <= off < hi:
                        for call in (log.read, log.read_frame):
                            with pytest.raises(fio.OffsetReleased) as exc:
                                call(off, o[2])
                            assert exc.value.first_held == hi
                    else:
                        expect = bytes(model[off:min(off + o[2], lo if off < lo else len(model))])
                        assert log.read(off, o[2]) == expect
                        frame = log.read_frame(off, o[2])
                        assert (decode_frame(frame) if frame else b"") == expect
                segs = log.segments
                assert len(segs) == -(-len(model) // SEG)
                assert [i for i, s in enumerate(segs) if s == -1] == (list(range(*rel)) if rel else [])
                assert log.released_range == ((rel[0] * SEG, rel[1] * SEG) if rel else (0, 0))
                assert log.held_bytes == len(model) - ((rel[1] - rel[0]) * SEG if rel else 0)
                assert delta(fio, c0).get("slots_in_use", 0) == sum(s >= 0 for s in segs)
        finally:
            log.close()
            store.close()


def test_release_while_readers_read(fio, logdir):
    """Stress: readers at random offsets of a log whose released range keeps growing while other
    logs write into the slots it gives back: every read gives the log's own bytes or
    OffsetReleased, never another log's bytes."""
    store = fio.SegmentStore(logdir, PAGE, 8)
    nseg = 200
    data = payload(nseg * PAGE + 1, seed=42)
    log = fio.SegmentedLog(store)
    log.append(data)
    stop = threading.Event()
    bad: list[tuple[object, ...]] = []
    reads, refused = [0], [0]

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            off = rng.randrange(len(data))
            try:
                got = log.read(off, rng.randrange(1, 16 * PAGE))
            except fio.OffsetReleased as e:
                refused[0] += 1
                if not (e.first_held > off and e.first_held % PAGE == 0):
                    bad.append(("first_held", off, e.first_held))
                continue
            reads[0] += 1
            if got != data[off:off + len(got)]:
                bad.append((off, len(got)))
            time.sleep(0.0002)  # now and then no reader is inside: the slots go back

    others = []
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for end in range(2, nseg):
            log.release(1, end)
            other = fio.SegmentedLog(store)
            other.append(b"\xff" * PAGE)  # lands in a released slot once it is back
            others.append(other)
            if end % 20 == 0:
                time.sleep(0.002)
        stop.set()
        for t in threads:
            t.join(10)
        assert not bad, f"a reader saw wrong bytes: {bad[:5]}"
        assert reads[0] > 0 and refused[0] > 0
        assert store.slots_used < nseg + 1 + len(others)  # released slots were reused
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for other in others:
            other.close()
        log.close()
        store.close()
