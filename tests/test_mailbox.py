"""A loop's Mailbox: calls posted from any thread run on the loop, each once, in the order each
thread posted them; posting to a closed loop raises; a post from under its own lock (a finalizer
run by a collection) does not deadlock; a dropped loop's mailbox goes with it."""
from __future__ import annotations

import gc
import threading

import pytest
import uvloop

from router.engine.loop import _MAILBOXES, LoopThread, mailbox


def test_posts_from_many_threads_run_once_in_order() -> None:
    loop = LoopThread("test-mailbox")
    loop.start()
    ran: list[tuple[int, int]] = []
    on_loop: set[bool] = set()

    def record(thread: int, i: int) -> None:
        on_loop.add(threading.current_thread().name == "test-mailbox")
        ran.append((thread, i))

    def poster(thread: int) -> None:
        for i in range(5000):
            loop.call_soon(record, thread, i)

    try:
        threads = [threading.Thread(target=poster, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loop.run(lambda: None, timeout=10)  # after every post above
        assert len(ran) == 8 * 5000 and on_loop == {True}
        for thread in range(8):
            assert [i for t, i in ran if t == thread] == list(range(5000))
    finally:
        loop.stop(10)


def test_a_failing_call_does_not_stop_the_rest() -> None:
    loop = LoopThread("test-mailbox")
    loop.start()
    ran: list[int] = []
    try:
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(ran.append, 1)
        loop.run(lambda: None, timeout=10)
        assert ran == [1]
    finally:
        loop.stop(10)


def test_a_post_from_under_its_own_lock_runs() -> None:
    loop = LoopThread("test-mailbox")
    loop.start()
    ran: list[int] = []
    box = mailbox(loop.loop)
    try:
        with box._lock:  # as a finalizer a collection runs while post() or _run() holds it
            box.post(ran.append, 1)
        loop.run(lambda: None, timeout=10)
        assert ran == [1]
    finally:
        loop.stop(10)


def test_posting_to_a_closed_loop_raises_and_a_dropped_loop_is_forgotten() -> None:
    loop = uvloop.new_event_loop()
    box = mailbox(loop)
    box.post(print, "never run")  # queued: the loop never runs
    loop.close()
    with pytest.raises(RuntimeError):
        box.post(print, "refused")
    before = len(_MAILBOXES)
    del loop
    gc.collect()
    assert len(_MAILBOXES) == before - 1
