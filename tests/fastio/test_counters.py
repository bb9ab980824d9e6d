"""counters(), exact for leak checks; the drain buffer, which belongs to the store."""
from __future__ import annotations

import gc
import os
import threading
import time
from types import ModuleType

import pytest

from router import _fastio
from tests.helpers import reference_log
from tests.helpers.fds import Pipe
from tests.helpers.logs import SEG, SLOTS, delta, payload


class _TaggedCython(_fastio.SegmentedLog):
    """Its instances take attributes (a cdef class's do not)."""

    me: object


class _TaggedPython(reference_log.SegmentedLog):
    """Its instances take attributes (a class with __slots__'s do not)."""

    me: object


# A subclass of each module's SegmentedLog, so that a test can put a log in a reference cycle.
TAGGED: dict[ModuleType, type[_TaggedCython] | type[_TaggedPython]] = {
    _fastio: _TaggedCython, reference_log: _TaggedPython}


def test_counters_exact(fio, logdir):
    c0 = fio.counters()
    assert set(c0) >= {"open_stores", "open_logs", "syscalls_in_flight", "slots_in_use"}
    assert all(type(v) is int and v >= 0 for v in c0.values())
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    assert delta(fio, c0) == {"open_stores": 1}
    a, b = fio.SegmentedLog(store), fio.SegmentedLog(store)
    a.append(b"a" * (2 * SEG + 1))
    b.append(b"b")
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 2, "slots_in_use": 4}
    assert a.read(0, 3 * SEG) and delta(fio, c0)["open_logs"] == 2  # reads leave nothing behind
    a.close()
    a.close()
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 1, "slots_in_use": 1}
    del b  # never closed: dealloc counts it down
    assert delta(fio, c0) == {"open_stores": 1}
    c = fio.SegmentedLog(store)
    c.append(b"c")  # reuses a slot: still counted
    store.close()
    store.close()
    assert delta(fio, c0) == {"open_logs": 1, "slots_in_use": 1}
    c.close()  # after its store: counts down all the same
    d = fio.SegmentedLog(store)  # a log on a closed store is a log
    assert delta(fio, c0) == {"open_logs": 1}
    del d
    with pytest.raises(ValueError):
        fio.SegmentStore(logdir, SEG + 1)  # __init__ failed: nothing counted
    with pytest.raises(TypeError):
        fio.SegmentedLog(logdir)
    fio.SegmentedLog.__new__(fio.SegmentedLog).close()  # never initialised: never counted
    del store
    assert delta(fio, c0) == {}


def test_counters_dealloc(fio, logdir):
    """A store and a log dropped unclosed, the log in a reference cycle: counted down once each."""
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = TAGGED[fio](store)
    log.append(b"x" * (SEG + 1))
    log.me = log  # only the collector can free it
    assert delta(fio, c0) == {"open_stores": 1, "open_logs": 1, "slots_in_use": 2}
    del log, store
    gc.collect()
    assert delta(fio, c0) == {}
    assert not [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}").startswith(logdir)]


def test_scratch_made_on_first_drain_freed_by_store_close(fio, logdir, tmp_path):
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    a, b = fio.SegmentedLog(store), fio.SegmentedLog(store)
    stream = Pipe.sockets()  # no pipe: drained through the buffer (pipes are spliced, no buffer)
    try:
        a.append(b"x")
        assert "scratch_buffers" not in delta(fio, c0)  # made on first use
        stream.write(b"abc")
        assert a.drain(stream.r) == (3, False) and b.drain(stream.r) == (0, False)
        assert a.read(0, 10) == b"xabc"
        assert delta(fio, c0)["scratch_buffers"] == 1  # one per store, kept between drains
        other = fio.SegmentStore(tmp_path, SEG)
        c = fio.SegmentedLog(other)
        c.drain(stream.r)
        assert delta(fio, c0)["scratch_buffers"] == 2
        other.close()
        c.close()
        assert delta(fio, c0)["scratch_buffers"] == 1
        store.close()
        assert "scratch_buffers" not in delta(fio, c0)
        # Its logs can't drain any more, and take nothing from the pipe trying.
        stream.write(b"def")
        for log in (a, b):
            with pytest.raises(ValueError):
                log.drain(stream.r)
        assert os.read(stream.r, 10) == b"def" and "scratch_buffers" not in delta(fio, c0)
        a.mark_eof()
        assert a.drain(stream.r) == (0, True)  # EOF already seen: as before, no store needed
    finally:
        a.close()
        b.close()
        store.close()
        stream.close()
    assert delta(fio, c0) == {}


def test_scratch_not_freed_under_a_drain(fio, logdir, blocking_pipe, pipe):
    """A drain asleep in readv() holds the store's buffer: a second drain gets a temporary one, and
    store.close() leaves it to the sleeping drain, which frees it on its way out."""
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    slow, quick = fio.SegmentedLog(store), fio.SegmentedLog(store)
    outcome = []

    def sleeper():
        try:
            outcome.append(slow.drain(blocking_pipe.r))
        except Exception as e:
            outcome.append(e)

    t = threading.Thread(target=sleeper)
    try:
        t.start()
        deadline = time.monotonic() + 10
        while delta(fio, c0).get("scratch_buffers") != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert delta(fio, c0)["scratch_buffers"] == 1  # the sleeper took the store's
        data = payload(3 * SEG + 5)
        pipe.write(data)
        assert quick.drain(pipe.r) == (len(data), False)  # through a temporary buffer, gone again
        assert quick.read(0, len(data)) == data and delta(fio, c0)["scratch_buffers"] == 1
        store.close()
        assert delta(fio, c0) == {"open_logs": 2, "slots_in_use": 4, "scratch_buffers": 1}
        blocking_pipe.write(b"late")  # wakes the sleeper: its store is closed, so its write fails
        t.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], ValueError)
        assert delta(fio, c0) == {"open_logs": 2, "slots_in_use": 4}
    finally:
        blocking_pipe.close_write()  # wakes the sleeper, should it still sleep
        t.join(10)
        slow.close()
        quick.close()
        store.close()
    assert delta(fio, c0) == {}
