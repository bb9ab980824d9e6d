"""restore() after a restart: logs rebuilt from what a journal recorded, over the same arena files."""
from __future__ import annotations

import gc
import os
import random

import pytest

from tests.helpers.logs import SEG, SLOTS, arena_bytes, delta, open_arenas, payload


def _crashed_run(fio, logdir):
    """A run that writes logs and 'crashes': the journal says what each live log held, then the
    objects are just dropped (nothing closed on purpose; the arena files stay). Arena 1 (slots 3-5)
    belonged to a log closed before the crash: no journal entry holds a slot of it."""
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    a, b, c, gone = (fio.SegmentedLog(store) for _ in range(4))
    datas = {"a": payload(3 * SEG, seed=1), "b": payload(2 * SEG + 100, seed=2),
             "c": payload(6 * SEG + 7, seed=3), "empty": b""}
    a.append(datas["a"])                  # slots 0 1 2, exactly full: no tail slot
    gone.append(payload(3 * SEG, seed=4))  # slots 3 4 5
    b.append(datas["b"])                  # 6 7 8
    c.append(datas["c"])                  # 9 .. 15
    b.mark_eof()
    c.release(1, 4)                       # 10 11 12 back to the store
    gone.close()
    empty = fio.SegmentedLog(store)
    assert (a.segments, b.segments, c.segments, empty.segments) == (
        [0, 1, 2], [6, 7, 8], [9, -1, -1, -1, 13, 14, 15], [])
    journal = {name: (log.segments, log.committed, log.eof)
               for name, log in [("a", a), ("b", b), ("c", c), ("empty", empty)]}
    return store, [a, b, c, empty], journal, datas


def test_restore_round_trip(fio, logdir):
    old = _crashed_run(fio, logdir)
    journal, datas = old[2], old[3]
    sizes = {name: os.stat(os.path.join(logdir, name)).st_size for name in os.listdir(logdir)}
    del old  # the crash: nothing closed, the objects just go
    gc.collect()
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    logs = {}
    try:
        assert store.slots_used == 0 and open_arenas(logdir) == []
        for name, (slots, committed, eof) in journal.items():
            logs[name] = fio.SegmentedLog.restore(store, slots, committed, eof)
        assert {n: os.stat(os.path.join(logdir, n)).st_size for n in os.listdir(logdir)} == sizes  # never truncated
        assert store.slots_used == 16
        assert delta(fio, c0) == {"open_stores": 1, "open_logs": 4, "slots_in_use": 3 + 3 + 4}
        assert open_arenas(logdir) == ["arena-00000000", "arena-00000002", "arena-00000003",
                                        "arena-00000004", "arena-00000005"]  # not arena 1: nobody's
        for name, log in logs.items():
            slots, committed, eof = journal[name]
            assert (log.segments, log.committed, log.eof, log.store) == (slots, committed, eof, store)
        c = logs["c"]
        assert (c.released_range, c.held_bytes) == ((SEG, 4 * SEG), 6 * SEG + 7 - 3 * SEG)
        with pytest.raises(fio.OffsetReleased) as exc:
            c.read(2 * SEG, 1)
        assert exc.value.first_held == 4 * SEG

        def check_bytes(rng):
            for name, log in logs.items():
                data = datas[name]
                lo, hi = log.released_range
                assert log.read(0, len(data)) == data[:lo if hi else len(data)]
                assert log.read(hi, len(data)) == data[hi:]
                for _ in range(20):
                    off = rng.randrange(len(data) + 1)
                    n = rng.randrange(3 * SEG)
                    if lo <= off < hi:
                        continue
                    assert log.read(off, n) == data[off:min(off + n, lo if off < lo else len(data))]

        check_bytes(random.Random(0))
        # finish_restore: the slots nobody claimed (3-5: the closed log's; 10-12: c's released
        # ones) are handed out, lowest first, before new ones.
        store.finish_restore()
        assert delta(fio, c0)["slots_in_use"] == 10
        new = fio.SegmentedLog(store)
        new.append(b"n" * (7 * SEG))
        assert new.segments == [3, 4, 5, 10, 11, 12, 16] and store.slots_used == 17
        assert arena_bytes(logdir, new, 0, 7 * SEG) == b"n" * (7 * SEG)
        assert "arena-00000001" in open_arenas(logdir)
        # The restored logs go on: c's tail segment is continued in place; a's next byte gets a slot.
        logs["c"].append(b"C" * SEG)
        logs["a"].append(b"A")
        datas["c"] += b"C" * SEG
        datas["a"] += b"A"
        assert logs["c"].segments == [9, -1, -1, -1, 13, 14, 15, 17] and logs["a"].segments == [0, 1, 2, 18]
        with pytest.raises(ValueError):
            logs["b"].append(b"x")  # restored at EOF
        assert logs["c"].release(1, 7) == 3 * SEG
        # The restored bytes were never overwritten.
        check_bytes(random.Random(1))
        new.close()
    finally:
        for log in logs.values():
            log.close()
        store.close()


def test_restore_validation(fio, logdir):
    old = _crashed_run(fio, logdir)
    journal = old[2]
    del old
    gc.collect()
    c0 = fio.counters()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    logs = []
    try:
        logs.append(fio.SegmentedLog.restore(store, *journal["a"]))  # slots 0 1 2
        c1 = fio.counters()
        bad = [
            ([6, 7, 6], 2 * SEG + 100, "twice"),
            ([6, 1, 8], 2 * SEG + 100, "already held"),
            ([6, -2, 8], 2 * SEG + 100, "out of range"),
            ([6, 7, 10**6], 2 * SEG + 100, "out of range"),  # no such arena file
            ([6, 7, 8], 3 * SEG + 100, "does not fit"),       # too few slots
            ([6, 7, 8, 9], 2 * SEG + 100, "does not fit"),    # too many
            ([6, 7, 8], 2 * SEG - 1, "does not fit"),         # an extra slot, and the tail not empty
            ([6, 7, 8, 9], 3 * SEG + 1, "short"),             # slot 9 holds a full segment, slot 8 not
            ([9, -1, 11, -1, 13], 5 * SEG, "contiguous"),
            ([9, 10, -1], 2 * SEG + 1, "below the tail"),
            ([9, -1], 2 * SEG - 1, "below the tail"),
            ([], -1, "committed"),
        ]
        for slots, committed, why in bad:
            with pytest.raises(ValueError, match=why):
                fio.SegmentedLog.restore(store, slots, committed, False)
            assert fio.counters() == c1 and store.slots_used == 3, f"{why}: something was claimed"
        with pytest.raises(TypeError):
            fio.SegmentedLog.restore(store, [6, "7"], SEG + 1, False)
        with pytest.raises(TypeError):
            fio.SegmentedLog.restore(logdir, [6], 1, False)
        assert fio.counters() == c1
        # Valid ones still go: an empty tail slot, a released run at the start.
        logs.append(fio.SegmentedLog.restore(store, [6, 7, 8], 2 * SEG, False))
        logs.append(fio.SegmentedLog.restore(store, [-1, -1, 15], 2 * SEG + 7, True))
        assert logs[-1].released_range == (0, 2 * SEG)
        assert logs[-1].read(2 * SEG, 10) == payload(6 * SEG + 7, seed=3)[6 * SEG:]
        assert delta(fio, c0) == {"open_stores": 1, "open_logs": 3, "slots_in_use": 7}
        # A restored log closed before finish_restore gives its slots back exactly once.
        logs.pop(1).close()
        store.finish_restore()
        with pytest.raises(RuntimeError):
            store.finish_restore()
        with pytest.raises(RuntimeError):
            fio.SegmentedLog.restore(store, [9], SEG, False)
        others = [fio.SegmentedLog(store) for _ in range(3)]
        for o in others:
            o.append(b"x" * (5 * SEG))
        handed = [s for o in others for s in o.segments]
        assert len(handed) == len(set(handed)) == 15 and not set(handed) & {0, 1, 2, 15}
        assert sorted(handed)[:13] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]
        logs.extend(others)
    finally:
        for log in logs:
            log.close()
        store.close()
    # The first allocation ends the restore phase too; a closed store refuses.
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    try:
        log.append(b"x")
        assert log.segments == [0]
        with pytest.raises(RuntimeError):
            fio.SegmentedLog.restore(store, [1], 1, False)
        with pytest.raises(RuntimeError):
            store.finish_restore()
    finally:
        log.close()
        store.close()
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    store.close()
    with pytest.raises(ValueError):
        fio.SegmentedLog.restore(store, [0], 1, False)
    with pytest.raises(ValueError):
        store.finish_restore()
