"""Signals during a blocking call: EINTR runs the handlers, then the call is retried."""
from __future__ import annotations

import threading

import pytest

from tests.helpers.logs import SEG, SLOTS, payload
from tests.helpers.signals import Interrupted, blocking_arena, kicking, raised_in


def test_drain_eintr_retried_after_handlers_ran(fio, logdir, blocking_pipe):
    """readv() on a blocking pipe, interrupted twice: each time the handler runs, then the read is retried."""
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    data = payload(1000)
    armed, hits = False, []

    def handler(signum, frame):
        if armed:
            hits.append(signum)
            if len(hits) == 2:
                blocking_pipe.write(data)  # the retried readv gets them

    try:
        with kicking(handler, lambda: len(hits) >= 2, lambda: blocking_pipe.write(data)) as timed_out:
            armed = True
            got = log.drain(blocking_pipe.r, len(data))
            armed = False
        assert not timed_out, "no signal handler ran while readv() slept"
        assert got == (len(data), False) and log.read(0, len(data)) == data
    finally:
        log.close()
        store.close()


def test_drain_signal_handler_exception_propagates(fio, logdir, blocking_pipe):
    store = fio.SegmentStore(logdir, SEG, SLOTS)
    log = fio.SegmentedLog(store)
    armed, done = False, threading.Event()

    def handler(signum, frame):
        if armed:
            raise Interrupted

    try:
        # A budget of 4: should the handler never run, the 4 bytes written after 5 s end the call.
        with kicking(handler, done.is_set, lambda: blocking_pipe.write(b"late")) as timed_out:
            armed = True
            try:
                with pytest.raises(Interrupted) as exc:
                    log.drain(blocking_pipe.r, 4)
            finally:
                armed = False
                done.set()
        assert not timed_out and raised_in(exc.value, "drain"), "the handler did not run inside drain()"
        assert log.committed == 0 and not log.eof
        # Nothing was taken from the pipe, and the log still works.
        blocking_pipe.write(b"abc")
        blocking_pipe.close_write()
        assert log.drain(blocking_pipe.r) == (3, True)
        assert log.read(0, 10) == b"abc"
    finally:
        log.close()
        store.close()


def test_pread_eintr_runs_signal_handlers(fio, logdir):
    """A reader asleep in pread() lets signal handlers run (retrying EINTR in C alone would not)."""
    store = fio.SegmentStore(logdir, SEG, 1)
    log = fio.SegmentedLog(store)
    log.append(payload(SEG))
    armed, hits = False, []

    def handler(signum, frame):
        if armed:
            hits.append(signum)
            if len(hits) == 2:  # the first one returned: pread was retried
                raise Interrupted

    try:
        with blocking_arena(logdir, 0) as unblock, kicking(handler, lambda: len(hits) >= 2, unblock) as timed_out:
            armed = True
            try:
                with pytest.raises(Interrupted) as exc:
                    log.read(0, SEG)
            finally:
                armed = False
        assert not timed_out and raised_in(exc.value, "read"), "no signal handler ran while pread() slept"
        assert len(hits) == 2
    finally:
        log.close()
        store.close()
