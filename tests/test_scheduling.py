"""`router serve --sched-batch`: the serving process's threads run under SCHED_BATCH; the execs it
starts, as the router was started. Without it, nothing changes."""
from __future__ import annotations

import os
import pathlib

import pytest

from router._proto import api_pb2
from router.client import RouterClient
from tests.helpers.execs import PIPES, py
from tests.helpers.servers import TASK_ID, router_process, serving_pid, state_token

pytestmark = pytest.mark.timeout(60)

# Each exec prints the scheduling policy of its own process, as the kernel reports it.
POLICY = py("import os; print(os.sched_getscheduler(0))")


def exec_policies(state_dir: pathlib.Path, listen: str) -> list[int]:
    """The policy of a piped exec and of a terminal exec of the router serving `state_dir`."""
    with RouterClient(listen, state_token(state_dir), TASK_ID, retries=0) as client:
        client.start("piped", POLICY, **PIPES)
        client.start("tty", POLICY, **PIPES, pty_info=api_pb2.PTYInfo(enabled=True))
        out = []
        for exec_id in ("piped", "tty"):
            assert client.wait(exec_id).code == 0
            out.append(int(b"".join(client.read(exec_id)).decode().split()[0]))
        return out


def thread_policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_by_default_nothing_changes(tmp_path: pathlib.Path) -> None:
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    with router_process(tmp_path) as (_, listen):
        assert exec_policies(tmp_path, listen) == [os.SCHED_OTHER, os.SCHED_OTHER]
        assert thread_policies(serving_pid(tmp_path)) == {os.SCHED_OTHER}


def test_router_threads_batch_and_its_execs_as_started(tmp_path: pathlib.Path) -> None:
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    with router_process(tmp_path, "--sched-batch") as (proc, listen):
        assert exec_policies(tmp_path, listen) == [os.SCHED_OTHER, os.SCHED_OTHER]
        pid = serving_pid(tmp_path)
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH  # its main thread: gRPC's and the engine's followed it
        assert {os.SCHED_BATCH, os.SCHED_OTHER} <= thread_policies(pid)  # the spawners under SCHED_OTHER
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER  # the keeper is not the serving process


def test_router_started_under_another_policy_keeps_it(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path, "--sched-batch", prefix=["chrt", "--idle", "0"]) as (_, listen):
        assert exec_policies(tmp_path, listen) == [os.SCHED_IDLE, os.SCHED_IDLE]
        assert thread_policies(serving_pid(tmp_path)) == {os.SCHED_IDLE}
