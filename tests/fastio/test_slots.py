"""Closed logs give their slots back, once no reader is inside; the store hands them out again."""
from __future__ import annotations

import random
import tempfile
import threading
import time
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.helpers.logs import PAGE, SEG, SLOTS, AnyLog, arena_bytes, delta, payload
from tests.helpers.signals import Interrupted, blocking_arena, kicking


def test_closed_log_slots_reused(fio, logdir):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    try:
        a = fio.SegmentedLog(store)
        a.append(b"a" * (2 * SEG + 1))
        assert a.segments == [0, 1, 2] and a.readers == 0
        a.close()
        assert a.segments == [] and a.committed == 2 * SEG + 1  # nobody was inside: back at once
        with pytest.raises(ValueError):
            a.read(0, 1)
        b = fio.SegmentedLog(store)
        b.append(b"b" * 5)
        c = fio.SegmentedLog(store)
        c.append(b"c" * (2 * SEG))
        assert (b.segments, c.segments, store.slots_used) == ([0], [1, 2], 3)  # reused, in order
        # A reused slot still holds the old bytes; a log shows only its own committed ones.
        assert b.read(0, 10 * SEG) == b"b" * 5 and c.read(0, 10 * SEG) == b"c" * (2 * SEG)
        assert arena_bytes(logdir, b, 0, 6) == b"bbbbba"
        # A log dropped without close() gives its slots back too.
        del c
        d = fio.SegmentedLog(store)
        d.append(b"d" * (SEG + 1))
        assert d.segments == [1, 2] and store.slots_used == 3
        # close() during the write: the writer's slots go back when it leaves, none taken after.
        e = fio.SegmentedLog(store)
        e.close()
        e.close()
        with pytest.raises(ValueError):
            e.append(b"x")
        assert e.segments == [] and store.slots_used == 3
    finally:
        store.close()


def test_close_with_reader_inside_defers_slot_release(fio, logdir):
    """Deterministic: the reader sleeps in pread() (see blocking_arena) and the signal handler,
    running inside read(), closes the log and has another log take slots."""
    store = fio.SegmentStore(logdir, SEG, 1)  # one slot an arena: only slot 0 reads from kmsg
    log = fio.SegmentedLog(store)
    log.append(payload(SEG))
    seen: dict[str, Any] = {}

    def handler(signum, frame):
        if log.readers != 1 or seen:
            return  # not inside read() yet
        before = fio.counters()
        log.close()
        seen["closed"] = (log.closed, log.readers, log.segments)
        seen["counts"] = (before["syscalls_in_flight"], delta(fio, before))
        other = fio.SegmentedLog(store)
        try:
            other.append(b"o" * (2 * SEG))  # must not get slot 0: its reader is still inside
        except OSError as e:  # slot 0 is /dev/kmsg, read-only, now
            seen["append"] = e
        seen["other"] = other
        raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: bool(seen), unblock) as timed_out:
            with pytest.raises(Interrupted):
                log.read(0, SEG)
        assert not timed_out
        assert seen["closed"] == (True, 1, [0]), "slots went back while a reader was inside"
        assert seen["counts"] == (1, {"open_logs": -1})  # the reader was in pread; slot 0 still held
        assert "append" not in seen and seen["other"].segments == [1, 2]
        # The reader has left: slot 0 is back and is the next one handed out.
        assert log.readers == 0 and log.segments == []
        assert fio.counters()["syscalls_in_flight"] == seen["counts"][0] - 1
        third = fio.SegmentedLog(store)
        third.append(b"t")
        assert third.segments == [0] and store.slots_used == 3
    finally:
        seen.clear()
        log.close()
        store.close()


def test_close_while_reading_big_range_then_reuse(fio, logdir):
    """A reader inside a 16 MiB read while the log is closed and another log writes new bytes,
    which would land in the same slots if they went back at close(): intact bytes or ValueError."""
    seg = 64 * PAGE
    size = 64 * seg
    store = fio.SegmentStore(logdir, seg, 16)

    def reader(log, data, got, inside):
        try:
            while True:
                inside.set()
                got.append(log.read(0, size) == data)
        except ValueError:
            got.append("closed")

    try:
        for rnd in range(3):
            data = payload(size, seed=rnd)
            log = fio.SegmentedLog(store)
            log.append(data)
            got: list[bool | str] = []
            inside = threading.Event()
            t = threading.Thread(target=reader, args=(log, data, got, inside))
            t.start()
            inside.wait()
            deadline = time.monotonic() + 5
            while log.readers == 0 and time.monotonic() < deadline:
                pass
            log.close()
            other = fio.SegmentedLog(store)
            other.append(b"\x00" * size)
            t.join(20)
            assert got and all(g is True or g == "closed" for g in got), got
            assert other.read(0, size) == b"\x00" * size
            other.close()
    finally:
        store.close()


def test_readers_only_see_their_own_log(fio, logdir):
    """Stress: readers on many logs while the main thread keeps closing logs and writing new ones
    into the slots they give back; every read gives the log's own bytes or ValueError."""
    store = fio.SegmentStore(logdir, PAGE, 8)
    size = 24 * PAGE
    serial = iter(range(10**6))
    logs: list = []

    def new_log():
        k = next(serial)
        log = fio.SegmentedLog(store)
        data = payload(size, seed=k)
        log.append(data)
        return log, data

    stop = threading.Event()
    bad, reads, refused = [], [0], [0]

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            log, data = rng.choice(logs)  # a list swap from the main thread is atomic
            off = rng.randrange(size)
            try:
                got = log.read(off, rng.randrange(1, size))
            except ValueError:
                refused[0] += 1
                continue
            reads[0] += 1
            if got != data[off:off + len(got)]:
                bad.append((off, len(got)))

    try:
        logs.extend(new_log() for _ in range(4))
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        created = 4
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not bad:
            i = random.randrange(len(logs))
            old, _ = logs[i]
            old.close()
            logs[i] = new_log()
            created += 1
        stop.set()
        for t in threads:
            t.join(10)
        assert not bad, f"a reader saw another log's bytes: {bad[:5]}"
        assert reads[0] > 0
        # Slots were reused: far fewer exist than the logs ever written needed.
        assert store.slots_used < created * 24
    finally:
        stop.set()
        for log, _ in logs:
            log.close()
        store.close()


class SlotMachine(RuleBasedStateMachine):
    """Logs created, appended to, read, closed and dropped in any order on one store."""

    mod: ModuleType  # _fastio or reference_log: set by a subclass

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = self.mod.SegmentStore(self.tmp.name, SEG, SLOTS)
        self.live: list[tuple[AnyLog, bytearray, random.Random]] = []
        self.serial = 0
        self.peak = 0

    def _pick(self, i):
        return self.live[i % len(self.live)]

    def _in_use(self):
        return sum(len(log.segments) for log, _, _ in self.live)

    @rule()
    def new_log(self):
        self.serial += 1
        self.live.append((self.mod.SegmentedLog(self.store), bytearray(), random.Random(self.serial)))

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), n=st.integers(0, 3 * SEG))
    def append(self, i, n):
        log, model, rng = self._pick(i)
        chunk = rng.randbytes(n)  # each log draws from its own seed: others' bytes would show
        log.append(chunk)
        model += chunk
        self.peak = max(self.peak, self._in_use())

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99), frac=st.floats(0, 1), n=st.integers(0, 4 * SEG))
    def read(self, i, frac, n):
        log, model, _ = self._pick(i)
        off = int(frac * len(model))
        assert log.read(off, n) == model[off:off + n]

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def close(self, i):
        entry = self._pick(i)
        self.live.remove(entry)
        log = entry[0]
        log.close()
        assert log.segments == []
        with pytest.raises(ValueError):
            log.read(0, 0)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 99))
    def drop(self, i):
        self.live.remove(self._pick(i))  # the last reference: dealloc gives the slots back

    @invariant()
    def slots_disjoint_and_reused_first(self):
        slots = [s for log, _, _ in self.live for s in log.segments]
        assert len(slots) == len(set(slots))
        # A fresh slot is made only when none is free: the store never grew past the peak.
        assert self.store.slots_used == self.peak

    @invariant()
    def every_log_holds_its_own_bytes(self):
        for log, model, _ in self.live:
            assert log.committed == len(model) and log.read(0, len(model)) == model

    def teardown(self):
        for log, _, _ in self.live:
            log.close()
        self.live.clear()
        self.store.close()
        self.tmp.cleanup()


def test_slot_reuse_state_machine(fio):
    class Machine(SlotMachine):
        mod = fio

    run_state_machine_as_test(Machine,
                              settings=settings(max_examples=60, stateful_step_count=30, deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow]))


def test_held_slots_wait_for_recycle_held(logdir):
    """With hold_freed(), a slot given back is handed out again only after recycle_held() lets it
    go, oldest first (the engine does once the journal says who gave it up)."""
    from router import _fastio
    store = _fastio.SegmentStore(logdir, SEG, SLOTS)
    try:
        store.hold_freed()
        logs = [_fastio.SegmentedLog(store) for _ in range(3)]
        for i, log in enumerate(logs):
            log.append(bytes([65 + i]) * 10)
        assert [log.segments for log in logs] == [[0], [1], [2]]
        logs[0].close()
        logs[1].close()
        assert store.held_slots == 2
        fresh = _fastio.SegmentedLog(store)
        fresh.append(b"x")
        assert fresh.segments == [3]  # not a held one
        mark = store.held_slots
        logs[2].close()  # given back after the mark: still held after recycling up to it
        store.recycle_held(mark)
        assert store.held_slots == 1
        again = [_fastio.SegmentedLog(store) for _ in range(3)]
        for log in again:
            log.append(b"y")
        assert sorted(log.segments[0] for log in again) == [0, 1, 4]
        store.recycle_held(1)
        last = _fastio.SegmentedLog(store)
        last.append(b"z")
        assert last.segments == [2] and store.held_slots == 0
        with pytest.raises(ValueError):
            store.recycle_held(-1)
        for log in [fresh, *again, last]:
            log.close()
    finally:
        store.close()
