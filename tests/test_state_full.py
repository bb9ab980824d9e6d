"""A full state filesystem: the journal keeps room for the exits of running execs, so they go on
and their exits are answered; new execs are refused with RESOURCE_EXHAUSTED saying why; the router
recovers by itself once space returns; and the journal is never left torn (a kill -9 while full
restarts cleanly). On a real tmpfs of a few MiB under a real router."""
from __future__ import annotations

import os
import pathlib

import grpc
import pytest
from grpc_health.v1 import health_pb2

from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import Raw
from tests.helpers.health import health
from tests.helpers.polling import eventually
from tests.helpers.servers import TASK_ID, router_process, state_token
from tests.helpers.tmpfs import fill, tmpfs

MiB = 1 << 20


def _ready(listen: str) -> bool:
    return health(listen, "") == health_pb2.HealthCheckResponse.SERVING


def _start_code(client: RouterClient, exec_id: str) -> grpc.StatusCode:
    try:
        client.start(exec_id, ["true"], **PIPES)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        assert "state filesystem is full" in (e.details() or ""), e.details()
        return e.code()
    return grpc.StatusCode.OK


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_running_execs_end_and_are_answered_on_a_full_state_filesystem(tmp_path: pathlib.Path, mode: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(MiB))
    with tmpfs(tmp_path / "state", 4 * MiB) as state:
        token = state_token(state)
        with router_process(state, "--log-dir", str(logs), "--server-mode", mode) as (proc, listen), \
                RouterClient(listen, token, TASK_ID, retries=0) as client:
            for i in range(3):
                client.start(f"cat{i}", ["cat"], **PIPES)
                client.write_stdin(f"cat{i}", 0, b"before\n")
            filler = fill(state)
            # New execs fill what the journal keeps beyond its reserve, then are refused.
            n = 0
            while _start_code(client, f"new{n}") == grpc.StatusCode.OK:
                n += 1
                assert n < 5000, "new execs were never refused"
            assert n > 0  # the reserve held back only what running execs need
            # Not ready for new execs, and alive: an orchestrator should wait, not restart it.
            assert not _ready(listen)
            assert health(listen, "router.liveness") == health_pb2.HealthCheckResponse.SERVING
            status = client.status()  # and `router status` says why
            assert status.serving == "full" and status.state_filesystem.full and not status.log_filesystem.full
            # An image has no room either: RESOURCE_EXHAUSTED, saying why.
            raw = Raw(int(listen.rsplit(":", 1)[1]), token)
            snapshot = pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=bytes(tree))
            try:
                with pytest.raises(grpc.RpcError) as refused:
                    raw.call("TaskSnapshotDirectory", snapshot)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
                assert "No space left" in (refused.value.details() or "")
            finally:
                raw.channel.close()
            # Running execs go on: stdin, output, exit, all answered.
            for i in range(3):
                client.write_stdin(f"cat{i}", 7, b"after\n", eof=True)
                assert exit_code(client.wait(f"cat{i}")) == 0
                assert b"".join(client.read(f"cat{i}")) == b"before\nafter\n"
            proc.kill()  # a crash while full: the restart replays a whole journal
            proc.wait(10)
        with router_process(state, "--log-dir", str(logs), "--server-mode", mode) as (_, listen), \
                RouterClient(listen, token, TASK_ID, retries=0) as client:
            assert eventually(lambda: not _ready(listen)), "restarted on a full filesystem, it said it was ready"
            for i in range(3):
                assert exit_code(client.poll(f"cat{i}")) == 0
                assert b"".join(client.read(f"cat{i}")) == b"before\nafter\n"
            filler.unlink()  # space returns: new execs are accepted again, without a restart
            assert eventually(lambda: _ready(listen), timeout=10)
            assert client.status().serving == "serving" and not client.status().state_filesystem.full
            assert eventually(lambda: _start_code(client, "after-room") == grpc.StatusCode.OK, timeout=10)
            assert exit_code(client.wait("after-room")) == 0
