"""Request validation, as properties: every request is either a clean spec or a named INVALID_ARGUMENT /
NOT_FOUND; and over the wire, no request of any shape makes a handler fail with UNKNOWN or INTERNAL."""
from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router._proto import api_pb2
from router._proto import task_command_router_pb2 as pb
from router.errors import RouterError
from router.images.args import MountArgs, SnapshotArgs
from router.server import validate
from tests.helpers.grpc_raw import Raw
from tests.helpers.protos import as_enum
from tests.helpers.servers import TASK_ID

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
names = st.one_of(st.sampled_from(["PATH", "HOME", "TERM"]), st.text(min_size=0, max_size=8))  # some override the base
values = st.text(max_size=8)
env_maps = st.dictionaries(names, values, max_size=4)


@st.composite
def start_requests(draw: st.DrawFn) -> pb.TaskExecStartRequest:
    request = pb.TaskExecStartRequest(
        task_id=TASK_ID,
        exec_id=draw(st.text(max_size=300)),
        command_args=draw(st.lists(st.text(max_size=10), max_size=4)),
        stdout_config=as_enum(pb.TaskExecStdoutConfig, draw(st.integers(0, 3))),
        stderr_config=as_enum(pb.TaskExecStderrConfig, draw(st.integers(0, 4))),
        env=draw(env_maps),
        container_id=draw(st.sampled_from(["", "", "co-x"])),
    )
    if draw(st.booleans()):
        request.timeout_secs = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        request.workdir = draw(st.sampled_from(["/tmp", "tmp", "", "/a\0b", "/no/such"]))
    # Each source: inline variables, a secret id, or neither.
    for source in draw(st.lists(st.one_of(env_maps, st.text(max_size=5), st.none()), max_size=3)):
        entry = request.secret_sources.add()
        if isinstance(source, dict):
            entry.env.contents.update(source)
        elif isinstance(source, str):
            entry.secret_id = source
    if draw(st.booleans()):
        request.pty_info.enabled = draw(st.booleans())
        request.pty_info.winsz_rows = draw(st.integers(0, 2**32 - 1))
        request.pty_info.env_term = draw(st.text(max_size=5))
    return request


@settings(max_examples=400, deadline=None)
@given(start_requests())
def test_start_request_is_a_spec_or_a_named_error(request: pb.TaskExecStartRequest) -> None:
    try:
        spec = validate.exec_spec(request, BASE)
    except RouterError as e:
        assert e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert e.message
        if e.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert e.message.split(":")[0] in {
                "exec_id", "command_args", "command_args[0]", "stdout_config", "stderr_config", "workdir",
                "timeout_secs", "env", "pty_info.winsz_rows", "pty_info.env_term",
            } | {f"command_args[{i}]" for i in range(4)} | {f"secret_sources[{i}]" for i in range(3)} \
              | {f"secret_sources[{i}].env" for i in range(3)}
        return
    assert spec.args and spec.args[0] and all("\0" not in a for a in spec.args)
    assert spec.workdir is None or spec.workdir.startswith("/")
    assert spec.timeout_secs is None or spec.timeout_secs > 0
    assert all(k and "=" not in k and "\0" not in k and "\0" not in v for k, v in spec.env.items())
    # Later layers win: the last inline map that names a key decides it, else `env`, else the base.
    for key in set(BASE) | set(request.env):
        expected = request.env.get(key, BASE.get(key))
        for source in request.secret_sources:
            expected = source.env.contents.get(key, expected)
        if spec.pty is not None and key == "TERM":
            continue
        assert spec.env[key] == expected
    # The size limit counts the final environment exactly, overridden base variables included.
    size = validate.env_bytes(spec.env)
    for base_size in (None, validate.env_bytes(BASE)):
        assert validate.exec_spec(request, BASE, max_env_bytes=size, base_env_bytes=base_size).env == spec.env
        with pytest.raises(RouterError) as refused:
            validate.exec_spec(request, BASE, max_env_bytes=size - 1, base_env_bytes=base_size)
        assert refused.value.message.startswith("env:")


def test_secret_sources_apply_in_order() -> None:
    request = pb.TaskExecStartRequest(exec_id="e", command_args=["true"], env={"A": "env"}, secret_sources=[
        api_pb2.SecretSource(env=api_pb2.StringMap(contents={"A": "first", "B": "first"})),
        api_pb2.SecretSource(env=api_pb2.StringMap(contents={"A": "second"})),
    ])
    env = validate.exec_spec(request, {"A": "base", "C": "base"}).env
    assert (env["A"], env["B"], env["C"]) == ("second", "first", "base")


raw_bytes = st.binary(max_size=200)


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["TaskExecStart", "TaskExecPoll", "TaskExecWait", "TaskExecStdinWrite",
                               "TaskExecStdioRead", "TaskMountDirectory", "TaskUnmountDirectory",
                               "TaskSnapshotDirectory"]),
       payload=raw_bytes)
def test_no_request_bytes_make_a_handler_fail(raw: Raw, method: str, payload: bytes) -> None:
    """Arbitrary bytes as any request: a definite status, never UNKNOWN or INTERNAL, and the server stays up."""
    call = raw.channel.unary_stream if method == "TaskExecStdioRead" else raw.channel.unary_unary
    rpc = call(f"/modal.task_command_router.TaskCommandRouter/{method}")
    try:
        result = rpc(payload, timeout=2, metadata=raw.metadata)
        if method == "TaskExecStdioRead":
            list(result)
    except grpc.RpcError as e:
        assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (e.code(), e.details())
    assert raw.code("TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="absent")) \
        == grpc.StatusCode.NOT_FOUND


def test_unparseable_request_is_invalid_argument(raw: Raw) -> None:
    rpc = raw.channel.unary_unary("/modal.task_command_router.TaskCommandRouter/TaskExecPoll")
    with pytest.raises(grpc.RpcError) as info:
        rpc(b"\xff\xff\xff", timeout=5, metadata=raw.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request" in info.value.details()
    # The token is still checked first.
    with pytest.raises(grpc.RpcError) as info:
        rpc(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


_path_bytes = st.lists(st.sampled_from([b"/", b"a", b"..", b".", b"//", b"\0", b" ", b"\xff", b"b/c"]),
                       max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(path=_path_bytes, image_id=st.text(max_size=300), key=st.one_of(st.none(), st.binary(max_size=600)),
       ttl=st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)), container=st.sampled_from(["", "co-x"]))
def test_image_requests_are_clean_args_or_a_named_error(path: bytes, image_id: str, key: bytes | None,
                                                        ttl: int | None, container: str) -> None:
    """Every image request gives an absolute, normalised path (no `.`, `..` or empty component), a key
    of 16-512 bytes, a positive ttl or none, or INVALID_ARGUMENT / NOT_FOUND naming the field."""
    mount = pb.TaskMountDirectoryRequest(task_id=TASK_ID, path=path, image_id=image_id, container_id=container)
    snapshot = pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=path, snapshot_id=image_id, container_id=container)
    if key is not None:
        mount.customer_supplied_encryption_key = key
        snapshot.customer_supplied_encryption_key = key
    if ttl is not None:
        snapshot.ttl_seconds = ttl
    unmount = pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=path, container_id=container)
    parsers: list[Callable[[], MountArgs | SnapshotArgs | bytes]] = [
        lambda: validate.mount_args(mount), lambda: validate.snapshot_args(snapshot),
        lambda: validate.unmount_path(unmount)]
    for parse in parsers:
        try:
            args = parse()
        except RouterError as e:
            assert e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            field = e.message.split(":")[0]
            assert field in ("path", "customer_supplied_encryption_key", "ttl_seconds", "image_id", "snapshot_id") \
                or "container" in e.message, e.message
            continue
        assert not container
        clean = args if isinstance(args, bytes) else args.path
        assert clean.startswith(b"/") and b"\0" not in clean
        assert clean == b"/" or all(part not in (b"", b".", b"..") for part in clean[1:].split(b"/")), clean
        if not isinstance(args, bytes):
            assert args.key is None or 16 <= len(args.key) <= 512
        if isinstance(args, SnapshotArgs):
            assert args.ttl_secs is None or args.ttl_secs > 0
        if isinstance(args, MountArgs) or isinstance(args, bytes):
            assert clean != b"/"
