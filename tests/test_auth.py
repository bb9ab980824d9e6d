"""Bearer tokens on every call: UNAUTHENTICATED, PERMISSION_DENIED and NOT_FOUND as the README's contract says."""
from __future__ import annotations

import pathlib
import time

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.config import TokenPolicy
from router.errors import RouterError
from router.server.grpc_server import RouterServer
from tests.helpers.execs import start_request
from tests.helpers.grpc_raw import Raw
from tests.helpers.servers import TASK_ID

POLL = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="x")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Basic dXNlcjpwYXNz"),),
    bearer("not-a-jwt"),
    bearer(jwt.encode({"task_id": TASK_ID, "exp": int(time.time()) + 60}, "wrong-key-of-enough-length-32-bytes!",
                      algorithm="HS256")),
    bearer(jwt.encode({"task_id": TASK_ID}, "x" * 32, algorithm="HS256")),
])
def test_bad_tokens_are_unauthenticated(raw: Raw, metadata: tuple) -> None:
    assert raw.code("TaskExecPoll", POLL, metadata=metadata) == grpc.StatusCode.UNAUTHENTICATED
    assert raw.code("TaskExecStart", start_request("u", ["true"]), metadata=metadata) \
        == grpc.StatusCode.UNAUTHENTICATED


def test_expired_token_is_unauthenticated(server_and_key: tuple[RouterServer, bytes], raw: Raw) -> None:
    key = server_and_key[1]
    expired = jwt.encode({"task_id": TASK_ID, "exp": int(time.time()) - 10}, key, algorithm="HS256")
    with pytest.raises(grpc.RpcError) as info:
        raw.call("TaskExecPoll", POLL, metadata=bearer(expired))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in info.value.details()


def test_unsigned_token_is_refused(raw: Raw) -> None:
    # alg "none" takes no key: PyJWT counts an empty one as none.
    unsigned = jwt.encode({"task_id": TASK_ID, "exp": int(time.time()) + 60}, "", algorithm="none")
    assert raw.code("TaskExecPoll", POLL, metadata=bearer(unsigned)) == grpc.StatusCode.UNAUTHENTICATED


def test_other_tasks(server_and_key: tuple[RouterServer, bytes], raw: Raw) -> None:
    key = server_and_key[1]
    other = auth.mint_token(key, "ta-other")
    # A valid token for another task, used on ours.
    assert raw.code("TaskExecPoll", POLL, metadata=bearer(other)) == grpc.StatusCode.PERMISSION_DENIED
    # A task this server does not serve, with any valid token.
    elsewhere = pb.TaskExecPollRequest(task_id="ta-other", exec_id="x")
    assert raw.code("TaskExecPoll", elsewhere, metadata=bearer(other)) == grpc.StatusCode.NOT_FOUND
    assert raw.code("TaskExecPoll", elsewhere) == grpc.StatusCode.NOT_FOUND


def test_key_is_private_and_stable(tmp_path: pathlib.Path) -> None:
    key = auth.load_or_create_key(tmp_path)
    assert (tmp_path / "jwt.key").stat().st_mode & 0o777 == 0o600
    assert auth.load_or_create_key(tmp_path) == key and len(key) >= 32


def test_health_and_reflection_need_no_token(server: RouterServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "modal.task_command_router.TaskCommandRouter"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "modal.task_command_router.TaskCommandRouter" in names


def test_a_remembered_token_still_expires(tmp_path: pathlib.Path) -> None:
    key = auth.load_or_create_key(tmp_path)
    checker = auth.Authenticator(key, TASK_ID, TokenPolicy(leeway_secs=0))
    short = jwt.encode({"task_id": TASK_ID, "exp": int(time.time()) + 2}, key, algorithm="HS256")
    assert checker.token_task(bearer(short)) == TASK_ID
    assert checker.token_task(bearer(short)) == TASK_ID  # remembered
    time.sleep(2.1)
    with pytest.raises(RouterError) as info:
        checker.token_task(bearer(short))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
