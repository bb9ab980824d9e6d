"""Fuzzing every RPC: random and malformed fields through the stubs, garbage metadata, and broken
HTTP/2 and gRPC framing through a raw socket. Every answer must be a defined status (never UNKNOWN
or INTERNAL), the server must stay up, and nothing may leak (the leak guard checks each test).

The image RPCs are fuzzed with paths under this module's own directory only: a fuzzed mount or
snapshot must not touch the host. Commands are drawn from harmless ones."""
from __future__ import annotations

import pathlib
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router._proto import api_pb2
from router._proto import task_command_router_pb2 as pb
from router.server.grpc_server import RouterServer
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import Raw
from tests.helpers.protos import as_enum
from tests.helpers.servers import TASK_ID, serving

SERVICE = "/modal.task_command_router.TaskCommandRouter/"
COUNT = {"requests": 0}
Test = TypeVar("Test", bound=Callable[..., None])


def fuzz(examples: int) -> Callable[[Test], Test]:
    """Hypothesis settings for one fuzz test: derandomized (CI sees the same inputs every run)."""
    def apply(test: Test) -> Test:
        test = settings(max_examples=examples, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])(test)
        return pytest.mark.timeout(600)(test)
    return apply


BAD = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})

texts = st.one_of(st.text(max_size=20), st.sampled_from(["", "\0", "a\0b", "x" * 300, "é", "🙂", TASK_ID]))
exec_ids = st.one_of(st.sampled_from(["done", "running", "absent", ""]), texts)
u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1]))
enums = st.integers(-(2**31), 2**31 - 1)
task_ids = st.one_of(st.just(TASK_ID), st.just(TASK_ID), texts)


@pytest.fixture
def fuzz_server(tmp_path: pathlib.Path) -> Iterator[tuple[RouterServer, Raw, pathlib.Path]]:
    """One server for all the examples of a test (so the leak guard sees what a whole run leaves)."""
    with serving(tmp_path) as (server, _, raw):
        sandbox = tmp_path / "sandbox"
        (sandbox / "tree" / "sub").mkdir(parents=True)
        (sandbox / "tree" / "f").write_bytes(b"data")
        try:
            raw.call("TaskExecStart", pb.TaskExecStartRequest(task_id=TASK_ID, exec_id="done",
                                                              command_args=["echo", "hi"], **PIPES))
            raw.call("TaskExecWait", pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="done"))
            raw.call("TaskExecStart", pb.TaskExecStartRequest(task_id=TASK_ID, exec_id="running",
                                                              command_args=["cat"], timeout_secs=600, **PIPES))
            yield server, raw, sandbox
        finally:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                points = [line.split(" ")[4] for line in f]
            for point in points:
                if point.startswith(str(sandbox)):
                    subprocess.run(["umount", "-l", point], check=False)


def call(raw: Raw, method: str, request: object, metadata: tuple | None = None,
         timeout: float = 2.0) -> grpc.StatusCode:
    COUNT["requests"] += 1
    code = raw.code(method, request, timeout=timeout, metadata=metadata)
    assert code not in BAD, (method, code)
    return code


@st.composite
def start_requests(draw: st.DrawFn) -> pb.TaskExecStartRequest:
    args = [draw(st.sampled_from(["true", "echo", "/bin/true", "", "no-such-command", "\0", "/nonexistent/x"]))]
    args += draw(st.lists(texts, max_size=4))
    request = pb.TaskExecStartRequest(
        task_id=draw(task_ids), exec_id=draw(exec_ids), command_args=args,
        stdout_config=as_enum(pb.TaskExecStdoutConfig, draw(enums)),
        stderr_config=as_enum(pb.TaskExecStderrConfig, draw(enums)),
        env=draw(st.dictionaries(texts, texts, max_size=3)),
        secret_ids=draw(st.lists(texts, max_size=2)), container_id=draw(st.sampled_from(["", "", "co-1"])))
    if draw(st.booleans()):
        request.timeout_secs = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        request.workdir = draw(st.one_of(texts, st.sampled_from(["/", "/tmp", "/nonexistent", "rel"])))
    if draw(st.booleans()):
        request.pty_info.CopyFrom(api_pb2.PTYInfo(enabled=draw(st.booleans()),
                                                  winsz_rows=draw(st.integers(0, 2**32 - 1)),
                                                  winsz_cols=draw(st.integers(0, 2**32 - 1)), env_term=draw(texts)))
    for _ in range(draw(st.integers(0, 2))):
        source = request.secret_sources.add()
        if draw(st.booleans()):
            source.secret_id = draw(texts)
        else:
            source.env.contents.update(draw(st.dictionaries(texts, texts, max_size=2)))
    return request


@fuzz(3000)
@given(request=start_requests())
def test_fuzz_start(fuzz_server: tuple, request: pb.TaskExecStartRequest) -> None:
    call(fuzz_server[1], "TaskExecStart", request)


@fuzz(2500)
@given(method=st.sampled_from(["TaskExecPoll", "TaskExecWait", "TaskExecStdioRead", "TaskExecStdinWrite"]),
       task_id=task_ids, exec_id=exec_ids, offset=u64, fd=enums, data=st.binary(max_size=64), eof=st.booleans())
def test_fuzz_exec_calls(fuzz_server: tuple, method: str, task_id: str, exec_id: str, offset: int, fd: int,
                         data: bytes, eof: bool) -> None:
    request = {
        "TaskExecPoll": lambda: pb.TaskExecPollRequest(task_id=task_id, exec_id=exec_id),
        "TaskExecWait": lambda: pb.TaskExecWaitRequest(task_id=task_id, exec_id=exec_id),
        "TaskExecStdioRead": lambda: pb.TaskExecStdioReadRequest(task_id=task_id, exec_id=exec_id, offset=offset,
                                                                 file_descriptor=as_enum(
                                                                     pb.TaskExecStdioFileDescriptor, fd)),
        "TaskExecStdinWrite": lambda: pb.TaskExecStdinWriteRequest(task_id=task_id, exec_id=exec_id, offset=offset,
                                                                   data=data, eof=eof and exec_id != "running"),
    }[method]()
    call(fuzz_server[1], method, request, timeout=0.1)  # a Wait or read on a running exec ends at its deadline


_component = st.one_of(st.sampled_from([b"tree", b"sub", b"f", b"new", b" ", b"\xff\xfe", b"a\nb", b"x" * 300,
                                        b".", b"\0"]), st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b
                                                                                                and b != b".."))


@fuzz(2000)
@given(method=st.sampled_from(["TaskMountDirectory", "TaskUnmountDirectory", "TaskSnapshotDirectory"]),
       task_id=task_ids, parts=st.lists(_component, max_size=3), absolute=st.sampled_from([True, True, True, False]),
       image_id=st.one_of(st.sampled_from(["", "im-" + "0" * 24]), texts),
       key=st.one_of(st.none(), st.binary(max_size=600)),
       ttl=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), snapshot_id=texts,
       container=st.sampled_from(["", "", "co-1"]))
def test_fuzz_image_calls(fuzz_server: tuple, method: str, task_id: str, parts: list[bytes], absolute: bool,
                          image_id: str, key: bytes | None, ttl: int | None, snapshot_id: str, container: str) -> None:
    sandbox: pathlib.Path = fuzz_server[2]
    path = b"/".join([bytes(sandbox), *parts]) if absolute else b"/".join(parts)  # never outside the sandbox
    request: pb.TaskMountDirectoryRequest | pb.TaskUnmountDirectoryRequest | pb.TaskSnapshotDirectoryRequest
    if method == "TaskMountDirectory":
        request = pb.TaskMountDirectoryRequest(task_id=task_id, path=path, image_id=image_id,
                                                       container_id=container)
        if key is not None:
            request.customer_supplied_encryption_key = key
    elif method == "TaskUnmountDirectory":
        request = pb.TaskUnmountDirectoryRequest(task_id=task_id, path=path, container_id=container)
    else:
        request = pb.TaskSnapshotDirectoryRequest(task_id=task_id, path=path, snapshot_id=snapshot_id,
                                                  container_id=container)
        if key is not None:
            request.customer_supplied_encryption_key = key
        if ttl is not None:
            request.ttl_seconds = ttl
    call(fuzz_server[1], method, request)
    if method == "TaskMountDirectory":
        server: RouterServer = fuzz_server[0]
        while True:  # keep mounts from piling up over the sandbox
            try:
                server.images.unmount(path if absolute else b"/" + path)
            except Exception:
                break


@fuzz(2500)
@given(method=st.sampled_from(["TaskExecPoll", "TaskExecStart", "TaskSnapshotDirectory"]),
       metadata=st.lists(st.tuples(st.sampled_from(["authorization", "x-custom", "grpc-timeout-x",
                                                     "authorization-bin"]),
                                   st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)),
                         max_size=3))
def test_fuzz_metadata(fuzz_server: tuple, method: str, metadata: list[tuple[str, str]]) -> None:
    request = {"TaskExecPoll": pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="done"),
               "TaskExecStart": pb.TaskExecStartRequest(task_id=TASK_ID, exec_id="done", command_args=["echo", "hi"]),
               "TaskSnapshotDirectory": pb.TaskSnapshotDirectoryRequest(task_id=TASK_ID, path=b"/nonexistent")}[method]
    fixed = tuple((k, v.encode() if k.endswith("-bin") else v) for k, v in metadata)
    code = call(fuzz_server[1], method, request, metadata=fixed)
    if not any(k == "authorization" and v.startswith("Bearer ") for k, v in metadata):
        assert code == grpc.StatusCode.UNAUTHENTICATED


# -- a raw HTTP/2 socket ------------------------------------------------------------------------------


def _h2_call(port: int, token: str, method: str, body: bytes, extra: Sequence[tuple[str, str]] = (),
             raw_tail: bytes = b"") -> int | None:
    """One call over a fresh socket: well-formed HTTP/2 (h2), the gRPC body given as is, then any raw
    bytes. Returns the grpc-status the server sent, or None if it closed the connection instead."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", SERVICE + method), (":authority", "localhost"),
               ("content-type", "application/grpc"), ("te", "trailers"), ("authorization", f"Bearer {token}"), *extra]
    conn.send_headers(1, headers)
    conn.send_data(1, body, end_stream=True)
    status = None
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(conn.data_to_send() + raw_tail)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                        status = {_text(k): _text(v) for k, v in event.headers}.get("grpc-status", status)
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset,
                                          h2.events.ConnectionTerminated)):
                        return int(status) if status is not None else None
                s.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
    return int(status) if status is not None else None


def _text(header: bytes | str) -> str:
    """A header name or value as text (h2 gives text here: the connection decodes them as UTF-8)."""
    return header.decode() if isinstance(header, bytes) else header


def _grpc_frame(message: bytes, compressed: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">BI", compressed, len(message) if length is None else length) + message


RAW_METHODS = ["TaskExecPoll", "TaskExecStart", "TaskExecStdioRead", "TaskExecStdinWrite", "TaskExecWait",
               "TaskMountDirectory", "TaskUnmountDirectory", "TaskSnapshotDirectory"]


@fuzz(500)
@given(method=st.sampled_from(RAW_METHODS), payload=st.binary(max_size=200), compressed=st.integers(0, 255),
       length=st.one_of(st.none(), st.integers(0, 2**32 - 1)), cut=st.integers(0, 210),
       tail=st.one_of(st.just(b""), st.binary(max_size=40)))
def test_fuzz_grpc_framing(fuzz_server: tuple, method: str, payload: bytes, compressed: int, length: int | None,
                           cut: int, tail: bytes) -> None:
    """Truncated, oversized and lying length prefixes, compression flags without an encoding, and
    garbage after the stream, over real HTTP/2."""
    server, raw = fuzz_server[0], fuzz_server[1]
    token = raw.token
    COUNT["requests"] += 1
    status = _h2_call(server.port, token, method, _grpc_frame(payload, compressed, length)[:cut + 5], raw_tail=tail)
    if compressed and cut >= 0 and status == 13:
        # The one INTERNAL here is grpc core's, as gRPC's HTTP/2 protocol spec prescribes for a
        # message flagged compressed without a grpc-encoding: it never reaches the router's code.
        assert call(raw, "TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="done")) \
            == grpc.StatusCode.OK
        return
    assert status not in (2, 13), (method, status)


def test_broken_http2_frames_leave_the_server_up(fuzz_server: tuple) -> None:
    server, raw = fuzz_server[0], fuzz_server[1]
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings_frame = struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0)
    cases = [
        b"garbage before any preface",
        preface,  # then silence
        preface + settings_frame + struct.pack(">I", 100)[1:] + b"\x00\x01" + struct.pack(">I", 1) + b"short",
        preface + settings_frame + struct.pack(">I", 20000)[1:] + b"\x00\x00" + struct.pack(">I", 1) + b"x" * 20000,
        preface + settings_frame + struct.pack(">I", 8)[1:] + b"\x01\x05" + struct.pack(">I", 1) + b"\xff" * 8,
        preface + settings_frame + b"\x00\x00\x05\xff\xff\x00\x00\x00\x03hello",
        preface + b"\x00" * 9 * 50,
    ]
    for case in cases:
        COUNT["requests"] += 1
        with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
            try:
                s.sendall(case)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass  # the server closed the connection first: refused, as it should
    assert call(raw, "TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="done")) == grpc.StatusCode.OK
    # A well-formed call through the same raw path works, so the cases above were really refused, not ignored.
    token = raw.token
    assert _h2_call(server.port, token, "TaskExecPoll",
                    _grpc_frame(pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="done").SerializeToString())) == 0


def test_the_fuzzing_made_enough_requests(fuzz_server: tuple) -> None:
    """Runs last in this module: the suite's count, for the record (at least 10,000)."""
    print(f"\nfuzzed requests: {COUNT['requests']}")
    assert COUNT["requests"] >= 10_000, COUNT
    assert call(fuzz_server[1], "TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="done")) \
        == grpc.StatusCode.OK
