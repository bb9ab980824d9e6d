"""Readers in other threads while the log is closed or drained."""
from __future__ import annotations

import random
import threading
import time

import pytest

from tests.helpers.logs import PAGE, drain_until_eof, payload


def test_close_while_reading(Log, logdir):
    seg = 64 * PAGE
    size = 64 * seg  # 16 MiB with 4 KiB pages
    data = payload(size)
    log = Log(logdir, seg)
    log.append(data)
    results, errors = [], []
    started = threading.Barrier(3)

    def reader(k):
        started.wait()
        try:
            while True:
                off = (k * 12345) % seg
                got = log.read(off, size)
                results.append(got == data[off:])
        except ValueError:
            pass
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:  # a fixed sleep is too short on a busy machine
        time.sleep(0.005)
    log.close()
    log.close()
    for t in threads:
        t.join(10)
    assert not errors
    assert results and all(results)
    assert log.closed
    with pytest.raises(ValueError):
        log.read(0, 1)


def test_readers_while_draining(Log, logdir, pipe):
    """Readers only ever see committed bytes, and those are final."""
    data = payload(400_000, seed=9)
    log = Log(logdir, PAGE)
    stop = threading.Event()
    bad = []

    def reader():
        rng = random.Random(1)
        while not stop.is_set():
            c = log.committed
            off = rng.randrange(c + 1)
            got = log.read(off, rng.randrange(3 * PAGE))
            if got != data[off:off + len(got)] or off + len(got) > log.committed:
                bad.append(off)

    t = threading.Thread(target=reader)
    try:
        t.start()
        pipe.feed(data, 5000)
        drain_until_eof(log, pipe.r, budget=20_000)
    finally:
        stop.set()
        t.join()
        pipe.close()
        log.close()
    assert not bad
