"""Retention: finished execs released oldest first by count, bytes and age; their slots recycled."""
from __future__ import annotations

import contextlib
import os
import pathlib

import grpc
import pytest

from router import _fastio
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from router.errors import RouterError
from router.server import RouterServer
from router.service import ReadCursor

from .conftest import PIPES, TASK_ID, Raw, eventually, serving

KiB = 1024
SEGMENT = 64 * KiB


def small(tmp_path: pathlib.Path, **overrides: object) -> contextlib.AbstractContextManager[tuple[RouterServer, RouterClient, Raw]]:
    """A server with small segments, so a few KiB of output spans several."""
    return serving(tmp_path, log_segment_size=SEGMENT, **overrides)


def run(client: RouterClient, exec_id: str, nbytes: int) -> bytes:
    client.start(exec_id, ["head", "-c", str(nbytes), "/dev/zero"], **PIPES)
    assert exit_code(client.wait(exec_id)) == 0
    return b"".join(client.read(exec_id))


def known(raw: Raw, exec_id: str) -> bool:
    code = raw.code("TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id=exec_id))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
    return code == grpc.StatusCode.OK


def test_count_releases_the_oldest_finished(tmp_path: pathlib.Path) -> None:
    with small(tmp_path, retain_execs=3) as (server, client, raw):
        for i in range(5):
            assert run(client, f"e{i}", 10) == b"\0" * 10
        assert [known(raw, f"e{i}") for i in range(5)] == [False, False, True, True, True]
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="e0")
        assert raw.code("TaskExecStdioRead", read) == grpc.StatusCode.NOT_FOUND


def test_bytes_release_the_oldest_until_within_budget(tmp_path: pathlib.Path) -> None:
    with small(tmp_path, retain_bytes=300 * KiB) as (server, client, raw):
        for i in range(5):
            assert len(run(client, f"b{i}", 100 * KiB)) == 100 * KiB
        assert [known(raw, f"b{i}") for i in range(5)] == [False, False, True, True, True]


def test_age_releases_after_exit_and_never_a_running_exec(tmp_path: pathlib.Path) -> None:
    with small(tmp_path, retain_secs=0.2) as (server, client, raw):
        client.start("slow", ["sh", "-c", "read x; echo done"], **PIPES)
        assert run(client, "quick", 5) == b"\0" * 5
        assert eventually(lambda: not known(raw, "quick")), "a finished exec outlived its age limit"
        assert known(raw, "slow")  # running, however old
        client.write_stdin("slow", 0, b"go\n", eof=True)
        assert exit_code(client.wait("slow")) == 0
        assert eventually(lambda: not known(raw, "slow"))


def test_released_slots_are_recycled_so_arenas_stay_within_budget(tmp_path: pathlib.Path) -> None:
    budget = 256 * KiB
    with small(tmp_path, retain_bytes=budget) as (server, client, raw):
        for i in range(40):  # 20x the budget streams through
            assert len(run(client, f"r{i}", 128 * KiB)) == 128 * KiB
        arenas = list((tmp_path / "state" / "logs").glob("arena-*"))
        on_disk = sum(os.stat(p).st_blocks * 512 for p in arenas)
        # The kept execs, plus the one finishing while the oldest is released.
        assert on_disk <= budget + 2 * 128 * KiB, f"arenas hold {on_disk} bytes for a {budget}-byte budget"
        assert known(raw, "r39") and not known(raw, "r0")


def test_a_log_released_under_a_reader_is_not_found(tmp_path: pathlib.Path) -> None:
    """A reader whose exec is released mid-stream ends NOT_FOUND, never INTERNAL."""
    logs = tmp_path / "logs"
    logs.mkdir()
    store = _fastio.SegmentStore(str(logs), SEGMENT)
    log = _fastio.SegmentedLog(store)
    try:
        log.append(b"x" * 100)
        log.mark_eof()
        cursor = ReadCursor(pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="gone"), "stdout", log, 10)
        assert cursor.next_frame() is not None
        log.close()
        with pytest.raises(RouterError) as caught:
            cursor.next_frame()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND and "released" in caught.value.message
    finally:
        log.close()
        store.close()
