"""Each configurable limit at its edge, answered with its defined status."""
from __future__ import annotations

import pathlib
from typing import Any

import grpc
import pytest

from router._proto import task_command_router_pb2 as pb
from router.engine.limits import base_environment
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import Raw, retry_after
from tests.helpers.polling import eventually
from tests.helpers.servers import TASK_ID, serving, state_token

WAIT = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="sleeper")


def start(exec_id: str, args: list[str], **fields: Any) -> pb.TaskExecStartRequest:
    return pb.TaskExecStartRequest(task_id=TASK_ID, exec_id=exec_id, command_args=args, **PIPES, **fields)


def test_argument_and_environment_bytes(tmp_path: pathlib.Path) -> None:
    base = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in base_environment().items())
    with serving(tmp_path, max_arg_bytes=1000, max_env_bytes=base + 100) as (_, _, raw):
        # Each argument counts its bytes and a NUL: "echo" (5) + 994 + 1 = 1000.
        assert raw.code("TaskExecStart", start("fits", ["echo", "x" * 994])) == grpc.StatusCode.OK
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", start("args", ["echo", "x" * 995]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "command_args" in info.value.details()
        assert raw.code("TaskExecStart", start("env-fits", ["true"], env={"A": "v" * 97})) == grpc.StatusCode.OK
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", start("env", ["true"], env={"A": "v" * 98}))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-env-bytes" in info.value.details()


def test_request_message_size(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, max_receive_message_size=1 << 20) as (_, client, raw):
        client.start("cat", ["cat"])
        write = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="cat", offset=0, data=b"x" * (2 << 20))
        assert raw.code("TaskExecStdinWrite", write) == grpc.StatusCode.RESOURCE_EXHAUSTED
        write = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="cat", offset=0, data=b"x" * 1000, eof=True)
        assert raw.code("TaskExecStdinWrite", write) == grpc.StatusCode.OK
        client.wait("cat")


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_calls_in_flight_per_token(tmp_path: pathlib.Path, mode: str) -> None:
    with serving(tmp_path, max_calls_per_token=3, server_mode=mode) as (server, client, raw):
        client.start("sleeper", ["sleep", "30"], **PIPES, timeout_secs=5)  # long enough to hold calls on
        held = [raw.stub.TaskExecWait.future(WAIT, timeout=30, metadata=raw.metadata) for _ in range(3)]
        poll = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="sleeper")
        try:
            def busy() -> bool:
                try:
                    raw.call("TaskExecPoll", poll, timeout=5)
                except grpc.RpcError as e:
                    return e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

            assert eventually(busy), "a fourth call of the token was admitted"
            with pytest.raises(grpc.RpcError) as info:
                raw.call("TaskExecPoll", poll, timeout=5)
            assert "--max-calls-per-token 3" in info.value.details() and retry_after(info.value) > 0
            # Another token has its own budget.
            with Raw(server.port, state_token(tmp_path / "state", 600)) as other:
                assert other.code("TaskExecPoll", poll) == grpc.StatusCode.OK
        finally:
            for f in held:
                f.cancel()
        assert eventually(lambda: raw.code("TaskExecPoll", poll) == grpc.StatusCode.OK)
        client.wait("sleeper")


def test_streams_per_connection(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, max_streams_per_connection=2) as (server, client, raw):
        client.start("sleeper", ["sleep", "30"], **PIPES, timeout_secs=5)  # long enough to hold calls on
        held = [raw.stub.TaskExecWait.future(WAIT, timeout=30, metadata=raw.metadata) for _ in range(2)]
        try:
            # Both waits are in the server (holding both streams) before the third call goes out.
            assert eventually(lambda: server.engine.get("sleeper").waiters == 2)
            poll = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="sleeper")
            # The third stream on this connection waits for one of the two to end.
            assert raw.code("TaskExecPoll", poll, timeout=1.0) == grpc.StatusCode.DEADLINE_EXCEEDED
            with Raw(server.port, state_token(tmp_path / "state", 600)) as fresh:
                assert fresh.code("TaskExecPoll", poll) == grpc.StatusCode.OK  # another connection is free
            held[0].cancel()
            assert raw.code("TaskExecPoll", poll, timeout=10) == grpc.StatusCode.OK
        finally:
            for f in held:
                f.cancel()
        client.wait("sleeper")

