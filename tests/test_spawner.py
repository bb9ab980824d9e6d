"""The spawner's threads: every item submitted is started once and delivered once on the loop
thread, or handed back by stop(); nothing is lost or doubled, also when stop() comes mid-way."""
from __future__ import annotations

import threading
import time

import pytest

from router.engine.loop import LoopThread
from router.engine.spawn_threads import Spawner


@pytest.mark.parametrize("stop_after", [None, 0.02])
def test_each_item_is_delivered_once_or_handed_back(stop_after: float | None) -> None:
    loop = LoopThread("test-loop")
    loop.start()
    delivered: list[tuple[int, object]] = []
    threads_seen: set[str] = set()

    def start(i: int) -> int:
        time.sleep(0.001)
        if i % 7 == 0:
            raise OSError(i, "refused")
        return i * 2

    def done(batch: list[tuple[int, int | Exception]]) -> None:
        threads_seen.add(threading.current_thread().name)
        delivered.extend(batch)

    spawner: Spawner[int, int] = Spawner(loop, 4, start, done, name="test-spawn")
    spawner.start()
    try:
        for i in range(500):
            assert spawner.submit(i)
        if stop_after is None:
            deadline = time.monotonic() + 10
            while len(delivered) < 500 and time.monotonic() < deadline:
                time.sleep(0.01)
            never = spawner.stop()
        else:
            time.sleep(stop_after)
            never = spawner.stop()
        assert not spawner.submit(999)  # refused once stopping
        loop.run(lambda: None, timeout=5)  # deliveries queued before stop() returned have run
        got = [i for i, _ in delivered]
        assert sorted(got + never) == list(range(500))  # each once, none lost
        assert never == sorted(never)
        if stop_after is None:
            assert never == []
        for i, outcome in delivered:
            if i % 7 == 0:
                assert isinstance(outcome, OSError) and outcome.errno == i
            else:
                assert outcome == i * 2
        assert threads_seen <= {"test-loop"}  # results come to the loop thread
    finally:
        spawner.stop()
        loop.stop(5)
