"""A full log filesystem never stops the server: on a real tmpfs of a few MiB under real routers,
finished execs are released first, then the largest running output is trimmed (or, with
--on-log-full block, its writer held back), and small outputs always find room."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router import _fastio
from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from router.engine.log_space import SEGMENT_SIZE_FILE, segment_size_for
from tests.helpers.execs import PIPES, py
from tests.helpers.grpc_raw import Raw
from tests.helpers.polling import eventually
from tests.helpers.processes import run_router
from tests.helpers.servers import TASK_ID, router_process, state_token
from tests.helpers.tmpfs import fill, tmpfs

KiB, MiB = 1024, 1024 * 1024
FS_SIZE = 8 * MiB
SEGMENT = 128 * KiB  # what an 8 MiB filesystem gets (64 segments fit)
BLOCK = 4096  # the writer's pattern: block i is i as 8 bytes, 512 times
# Writes `total` bytes of the pattern, 256 KiB at a time `pause` seconds apart, then sleeps until killed.
WRITER = """
import sys, time
total, pause = {total}, {pause}
w = sys.stdout.buffer
for first in range(0, total // 4096, 64):
    w.write(b"".join(i.to_bytes(8, "big") * 512 for i in range(first, first + 64)))
    w.flush()
    time.sleep(pause)
time.sleep(3600)
"""


def pattern(offset: int, n: int) -> bytes:
    blocks = range(offset // BLOCK, (offset + n + BLOCK - 1) // BLOCK)
    data = b"".join(i.to_bytes(8, "big") * (BLOCK // 8) for i in blocks)
    start = offset % BLOCK
    return data[start:start + n]


def writer(total: int, pause: float = 0.0) -> list[str]:
    return py(WRITER.format(total=total, pause=pause))


@pytest.fixture
def log_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A tmpfs of FS_SIZE for the router's logs, unmounted after the test."""
    with tmpfs(tmp_path / "logs", FS_SIZE) as mount:
        yield mount


class Router:
    """`router serve` on the tmpfs, a client and a raw stub on it."""

    def __init__(self, proc: subprocess.Popen[str], listen: str, state: pathlib.Path) -> None:
        self.proc, self.listen, self.state = proc, listen, state
        self.client = RouterClient(listen, state_token(state), TASK_ID, retries=0)
        self.raw = Raw(int(listen.rsplit(":", 1)[1]), state_token(state))

    def read_some(self, exec_id: str, offset: int, n: int) -> bytes:
        """n bytes of stdout from `offset` (which must be held), read while the exec runs."""
        got = b""
        responses = self.raw.call("TaskExecStdioRead",
                                  pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id=exec_id, offset=offset))
        try:
            for response in responses:
                got += response.data
                if len(got) >= n:
                    break
        finally:
            responses.cancel()
        return got[:n]

    def stop(self) -> str:
        """Stop the router: everything it logged."""
        self.proc.terminate()
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


@contextlib.contextmanager
def router_on(tmp_path: pathlib.Path, log_fs: pathlib.Path, *flags: str) -> Iterator[Router]:
    state = tmp_path / "state"
    # No cap of their own: only the filesystem bounds what a running exec holds.
    with router_process(state, "--log-dir", str(log_fs), "--max-exec-output", "1G", *flags) as (proc, listen):
        router = Router(proc, listen, state)
        try:
            yield router
        finally:
            router.client.close()
            router.raw.channel.close()


def inspect(router: Router, exec_id: str) -> ec.ExecInfo:
    return router.client.inspect(exec_id)


def still_alive(router: Router) -> None:
    """`router exec -- echo still-alive` completes, and an exec's output is readable once it exits."""
    done = run_router("exec", "--state-dir", str(router.state), "-n", "--", "echo", "still-alive", timeout=20)
    assert (done.returncode, done.stdout) == (0, b"still-alive\n"), done.stderr
    router.client.start("small", ["echo", "still-alive"], **PIPES)
    assert exit_code(router.client.wait("small")) == 0
    assert b"".join(router.client.read("small")) == b"still-alive\n"


def ready(router: Router) -> bool:
    with grpc.insecure_channel(router.listen) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(check.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["trim", "block"])
def test_small_outputs_find_room_while_a_big_writer_fills_it(tmp_path: pathlib.Path, log_fs: pathlib.Path,
                                                             policy: str) -> None:
    with router_on(tmp_path, log_fs, "--on-log-full", policy) as router:
        router.client.start("big", writer(1 << 40, pause=0.005), **PIPES)  # nobody reads it
        assert eventually(lambda: inspect(router, "big").log_filesystem_full, timeout=30)
        still_alive(router)
        assert ready(router)
        big = inspect(router, "big")
        assert big.running and big.log_filesystem_full
        if policy == "block":
            assert big.output_held_back and not big.HasField("stdout_released")
            assert os.statvfs(log_fs).f_bavail * os.statvfs(log_fs).f_frsize < FS_SIZE // 4  # full indeed
        else:
            assert not big.output_held_back and big.stdout_released.end > big.stdout_released.start == SEGMENT
        router.client.kill("big")
        log = router.stop()
    assert log.count("is full") == 1 and "writing output failed" not in log


@pytest.mark.timeout(90)
def test_trim_keeps_head_and_tail_unchanged_and_names_the_first_held_offset(tmp_path: pathlib.Path,
                                                                           log_fs: pathlib.Path) -> None:
    total = 40 * MiB  # five times the filesystem
    with router_on(tmp_path, log_fs) as router:
        router.client.start("big", writer(total, pause=0.002), **PIPES)
        head = router.read_some("big", 0, SEGMENT)
        assert head == pattern(0, SEGMENT)
        assert eventually(lambda: inspect(router, "big").stdout_bytes == total, timeout=60)
        big = inspect(router, "big")
        assert big.running and big.stdout_released.start == SEGMENT and big.stdout_released.end < total
        first_held = big.stdout_released.end
        assert router.read_some("big", 0, SEGMENT) == head  # read before the trim and after it
        assert router.read_some("big", first_held, total - first_held) == pattern(first_held, total - first_held)
        released = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="big", offset=SEGMENT)
        with pytest.raises(grpc.RpcError) as caught:
            list(router.raw.call("TaskExecStdioRead", released))
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert caught.value.details().endswith(f"the first offset still held is {first_held}")
        shown = run_router("inspect", "big", "--state-dir", str(router.state), timeout=20)
        assert json.loads(shown.stdout)["stdout_released"] == [SEGMENT, first_held]
        # The writer stopped writing: the condition ends, once, and is said to.
        assert eventually(lambda: not inspect(router, "big").log_filesystem_full, timeout=10)
        router.client.kill("big")
        log = router.stop()
    assert log.count("is full") == 1 and log.count("has room again") == 1, log


@pytest.mark.timeout(90)
def test_finished_execs_are_released_before_a_running_one_is_trimmed(tmp_path: pathlib.Path,
                                                                      log_fs: pathlib.Path) -> None:
    size = 3 * MiB // 2
    with router_on(tmp_path, log_fs, "--retain-bytes", "1G") as router:
        for i in range(8):  # 12 MiB of output on 8 MiB
            router.client.start(f"ex-{i}", ["head", "-c", str(size), "/dev/zero"], **PIPES)
            assert exit_code(router.client.wait(f"ex-{i}")) == 0
            assert len(b"".join(router.client.read(f"ex-{i}"))) == size  # whole: never trimmed
            assert not inspect(router, f"ex-{i}").HasField("stdout_released")
        with pytest.raises(grpc.RpcError) as caught:
            inspect(router, "ex-0")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # the oldest went to make room
        router.stop()


@pytest.mark.timeout(90)
def test_a_held_back_writer_goes_on_once_room_returns(tmp_path: pathlib.Path, log_fs: pathlib.Path) -> None:
    filler = log_fs / "filler"
    with router_on(tmp_path, log_fs, "--on-log-full", "block") as router:
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=4", "status=none"], check=True)
        router.client.start("big", writer(64 * MiB), **PIPES)
        assert eventually(lambda: inspect(router, "big").output_held_back, timeout=30)
        held = inspect(router, "big").stdout_bytes
        assert held < FS_SIZE - 4 * MiB
        filler.unlink()  # room returns
        assert eventually(lambda: inspect(router, "big").stdout_bytes > held + 2 * MiB, timeout=30)
        router.client.kill("big")
        log = router.stop()
    assert log.count("is full") == 1 and "writing output failed" not in log


@pytest.mark.timeout(60)
def test_output_waits_quietly_while_something_else_fills_it(tmp_path: pathlib.Path, log_fs: pathlib.Path) -> None:
    with router_on(tmp_path, log_fs) as router:
        filler = fill(log_fs)  # to ENOSPC
        router.client.start("small", ["echo", "still-alive"], **PIPES)
        assert eventually(lambda: inspect(router, "small").output_held_back, timeout=10)
        time.sleep(1)  # retries, each of which used to log a line
        assert inspect(router, "small").log_filesystem_full
        filler.unlink()
        assert exit_code(router.client.wait("small")) == 0
        assert b"".join(router.client.read("small")) == b"still-alive\n"
        log = router.stop()
    assert log.count("is full") == 1 and "writing output failed" not in log


def test_punch_free_gives_pages_back_and_keeps_what_logs_hold(log_fs: pathlib.Path) -> None:
    store = _fastio.SegmentStore(str(log_fs), SEGMENT)
    gone, kept = _fastio.SegmentedLog(store), _fastio.SegmentedLog(store)
    try:
        gone.append(pattern(0, 2 * MiB))
        kept.append(pattern(0, MiB + 5))

        def free() -> int:
            fs = os.statvfs(log_fs)
            return fs.f_bavail * fs.f_frsize

        before = free()
        gone.close()
        assert free() == before  # a given-back slot keeps its pages for the next log...
        assert store.punch_free() == 2 * MiB // SEGMENT
        assert free() == before + 2 * MiB  # ...unless they are punched out
        assert store.punch_free() == 0  # only slots given back since
        assert kept.read(0, MiB + 5) == pattern(0, MiB + 5)
    finally:
        kept.close()
        store.close()


def test_segments_fit_a_small_filesystem_and_keep_their_size(log_fs: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert segment_size_for(log_fs, 32 * MiB) == SEGMENT  # 64 fit in 8 MiB
    assert (log_fs / SEGMENT_SIZE_FILE).read_text() == f"{SEGMENT}\n"
    assert segment_size_for(log_fs, 16 * MiB) == SEGMENT  # the arenas there were laid out with it
    big = tmp_path / "disk"
    big.mkdir()
    fs = os.statvfs(big)
    configured = 64 * KiB if fs.f_blocks * fs.f_frsize < 64 * 32 * MiB else 32 * MiB
    assert segment_size_for(big, configured) == configured
