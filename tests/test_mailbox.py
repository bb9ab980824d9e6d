"""A loop's Mailbox: calls posted from any thread run on the loop, each once, in the order each
thread posted them; posting to a closed loop raises; a post from under its own lock (a finalizer
run by a collection) does not deadlock; a dropped loop's mailbox goes with it."""
from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
import uvloop

from router.engine.loop import _MAILBOXES, LoopThread, mailbox


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("test-mailbox")
    thread.start()
    try:
        yield thread
    finally:
        thread.stop(10)


def test_posts_from_many_threads_run_once_in_order(loop: LoopThread) -> None:
    ran: list[tuple[int, int]] = []
    on_loop: set[bool] = set()

    def record(thread: int, i: int) -> None:
        on_loop.add(threading.current_thread().name == "test-mailbox")
        ran.append((thread, i))

    def poster(thread: int) -> None:
        for i in range(5000):
            loop.call_soon(record, thread, i)

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.run(lambda: None, timeout=10)  # after every post above
    assert len(ran) == 8 * 5000 and on_loop == {True}
    for thread in range(8):
        assert [i for t, i in ran if t == thread] == list(range(5000))


def test_a_failing_call_does_not_stop_the_rest(loop: LoopThread) -> None:
    ran: list[int] = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(ran.append, 1)
    loop.run(lambda: None, timeout=10)
    assert ran == [1]


def test_a_post_from_under_its_own_lock_runs(loop: LoopThread) -> None:
    ran: list[int] = []
    box = mailbox(loop.loop)
    with box._lock:  # as a finalizer a collection runs while post() or _run() holds it
        box.post(ran.append, 1)
    loop.run(lambda: None, timeout=10)
    assert ran == [1]


def test_posting_to_a_closed_loop_raises_and_a_dropped_loop_is_forgotten() -> None:
    closed = uvloop.new_event_loop()
    box = mailbox(closed)
    box.post(print, "never run")  # queued: the loop never runs
    closed.close()
    with pytest.raises(RuntimeError):
        box.post(print, "refused")
    before = len(_MAILBOXES)
    del closed
    gc.collect()
    assert len(_MAILBOXES) == before - 1
