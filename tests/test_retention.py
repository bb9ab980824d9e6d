"""Retention: finished execs released oldest first by count, bytes and age; their slots recycled."""
from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import _fastio
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from router.errors import RouterError
from router.server.grpc_server import RouterServer
from router.server.service import ReadCursor, _frame_data_length
from tests.helpers.execs import PIPES, py
from tests.helpers.grpc_raw import Raw
from tests.helpers.polling import eventually
from tests.helpers.servers import TASK_ID, serving

KiB = 1024
SEGMENT = 64 * KiB


def small(tmp_path: pathlib.Path,
          **overrides: Any) -> contextlib.AbstractContextManager[tuple[RouterServer, RouterClient, Raw]]:
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


PATTERN = bytes(i % 251 for i in range(2 * 1024 * KiB))


def test_a_running_exec_past_its_cap_keeps_head_and_tail(tmp_path: pathlib.Path) -> None:
    cap = 256 * KiB
    size = 1024 * KiB
    program = (f"import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range({size}))); "
               "sys.stdout.flush(); sys.stdin.read()")
    with small(tmp_path, max_exec_output=cap) as (server, client, raw):
        client.start("cap", py(program), **PIPES)
        def all_committed() -> bool:
            stdout = server.engine.get("cap").stdout
            assert stdout is not None  # piped
            return stdout.committed == size

        assert eventually(all_committed)
        got = b""
        with pytest.raises(grpc.RpcError) as caught:
            for message in raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="cap")):
                got += message.data
        assert got == PATTERN[:SEGMENT], "the head segment is kept"
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        first_held = int(caught.value.details().rsplit(" ", 1)[1])
        assert first_held % SEGMENT == 0 and 0 < size - first_held <= cap - SEGMENT
        client.write_stdin("cap", 0, b"", eof=True)
        assert exit_code(client.wait("cap")) == 0
        assert b"".join(client.read("cap", offset=first_held)) == PATTERN[first_held:size]
        middle = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="cap", offset=first_held - 1)
        assert raw.code("TaskExecStdioRead", middle) == grpc.StatusCode.OUT_OF_RANGE


def test_a_reader_that_keeps_up_is_never_cut(tmp_path: pathlib.Path) -> None:
    program = ("import sys, time\n"
               f"data = bytes(i % 251 for i in range({len(PATTERN)}))\n"
               "for i in range(0, len(data), 32768):\n"
               "    sys.stdout.buffer.write(data[i:i + 32768]); sys.stdout.flush(); time.sleep(0.002)\n")
    with small(tmp_path, max_exec_output=256 * KiB) as (server, client, raw):
        client.start("follow", py(program), **PIPES)
        assert b"".join(client.read("follow")) == PATTERN
        assert exit_code(client.wait("follow")) == 0
        held = server.engine.get("follow").stdout
        assert held is not None and held.released_range != (0, 0), "the cap never released anything"


@given(st.integers(min_value=1, max_value=3 * 1024 * 1024))
@settings(max_examples=60, deadline=None)
def test_a_frames_data_length_is_read_back(n: int) -> None:
    frame = pb.TaskExecStdioReadResponse(data=b"x" * n).SerializeToString()
    assert _frame_data_length(frame) == n


def test_retention_counts_what_a_capped_exec_still_holds(tmp_path: pathlib.Path) -> None:
    """1 MiB went through an exec capped at 256 KiB: it holds 256 KiB, within a 512 KiB budget."""
    with small(tmp_path, max_exec_output=256 * KiB, retain_bytes=512 * KiB) as (server, client, raw):
        client.start("capped", ["head", "-c", str(1024 * KiB), "/dev/zero"], **PIPES)
        assert exit_code(client.wait("capped")) == 0
        assert run(client, "next", 10) == b"\0" * 10
        assert known(raw, "capped"), "released for bytes the cap had already given back"
