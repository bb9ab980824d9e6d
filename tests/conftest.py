"""Shared fixtures: a real server on a free loopback port, clients, and leak guards after every test."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import uvloop

from router import _fastio
from router import auth
from . import reference_log
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import CHANNEL_OPTIONS, RouterClient
from router.config import ServerConfig
from router.server.grpc_server import RouterServer

TASK_ID = "ta-test"
# Both output streams piped: what most tests start an exec with.
PIPES = {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_PIPE, "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_PIPE}


def _fds() -> set[str]:
    """This process's open descriptors, as fd -> target, so a reused number with a new file still counts."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


def children() -> list[int]:
    """Live and zombie children of this process (any thread's)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def _settled(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """What `check` finds left over once it finds nothing, or once `timeout` seconds pass."""
    eventually(lambda: not check(), timeout)
    return check()


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def eventually(check: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll `check` until it is true (then True) or `timeout` seconds pass (then False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="session", autouse=True)
def _grpc_warm() -> None:
    """grpc core and libuv open process-wide descriptors on first use; open them before any baseline."""
    uvloop.new_event_loop().close()  # libuv's global signal-lock pipe
    async def aio_server() -> None:  # grpc.aio's process-wide poller thread
        server = grpc.aio.server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await server.stop(0)

    asyncio.run(aio_server())
    channel = grpc.insecure_channel("127.0.0.1:1")
    with contextlib.suppress(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=0.1)
    channel.close()


@pytest.fixture(autouse=True)
def leak_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    fds = _fds()
    threads = set(threading.enumerate())
    kids = set(children())
    logs = _log_counters()
    # Only this session's: other processes (another test run) may mount meanwhile.
    ours = str(tmp_path_factory.getbasetemp())
    mounted = _mounts(ours)
    yield
    gc.collect()  # grpc.aio ends its poller thread when its last object is freed
    leaked_kids = _settled(lambda: set(children()) - kids)
    assert not leaked_kids, f"child processes left behind: {leaked_kids}"
    leaked_threads = _settled(lambda: {t for t in threading.enumerate() if t not in threads and t.is_alive()})
    assert not leaked_threads, f"threads left behind: {leaked_threads}"
    leaked_fds = _settled(lambda: {f for f in _fds() - fds if not _grpc_internal(f)})
    assert not leaked_fds, f"descriptors left open: {leaked_fds}"
    # Stores, logs, slots and drain buffers of the hot path (and its twin), and calls inside a syscall.
    left = _settled(lambda: {k: v for k, v in _log_counters().items() if v != logs[k]})
    assert not left, f"hot-path objects left behind (now, before): {({k: (v, logs[k]) for k, v in left.items()})}"
    stale = _mounts(ours) - mounted
    for point in sorted(stale, key=len, reverse=True):  # so that the next test starts clean
        subprocess.run(["umount", "-l", point], check=False)
    assert not stale, f"mounts left behind: {stale}"


def _mounts(under: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {point for line in f if (point := line.split(" ")[4]).startswith(under + "/")}


def _log_counters() -> dict[str, int]:
    return {**{f"_fastio.{k}": v for k, v in _fastio.counters().items()},
            **{f"reference_log.{k}": v for k, v in reference_log.counters().items()}}


def _grpc_internal(fd: str) -> bool:
    """grpc core may keep a socket, eventfd or epoll of its own for a moment after a channel closes;
    a pidfd (anon_inode:[pidfd]) or anything else left open is a leak."""
    return "socket:" in fd or fd.endswith(("anon_inode:[eventfd]", "anon_inode:[eventpoll]"))


def make_server(tmp_path: pathlib.Path, **overrides: object) -> tuple[RouterServer, bytes]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    key = auth.load_or_create_key(state)
    config = ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="127.0.0.1:0", max_workers=512, **overrides)
    server = RouterServer(config, key)
    server.start()
    return server, key


@contextlib.contextmanager
def serving(tmp_path: pathlib.Path, **overrides: object) -> Iterator[tuple[RouterServer, RouterClient, "Raw"]]:
    """A server with these config overrides, a client and a raw stub on it; all stopped after."""
    server, key = make_server(tmp_path, **overrides)
    token = auth.mint_token(key, TASK_ID)
    client = RouterClient(f"127.0.0.1:{server.port}", token, TASK_ID, retries=0)
    raw = Raw(server.port, token)
    try:
        yield server, client, raw
    finally:
        client.close()
        raw.channel.close()
        server.stop(0.5)


@pytest.fixture(params=["aio", "threads"])
def server_and_key(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[RouterServer, bytes]]:
    """A server in each mode: both serve the same contract."""
    server, key = make_server(tmp_path, server_mode=request.param)
    try:
        yield server, key
    finally:
        server.stop(grace=0.5)


@pytest.fixture
def server(server_and_key: tuple[RouterServer, bytes]) -> RouterServer:
    return server_and_key[0]


@pytest.fixture
def token(server_and_key: tuple[RouterServer, bytes]) -> str:
    return auth.mint_token(server_and_key[1], TASK_ID)


@pytest.fixture
def client(server: RouterServer, token: str) -> Iterator[RouterClient]:
    with RouterClient(f"127.0.0.1:{server.port}", token, TASK_ID, retries=0) as c:
        yield c


class Raw:
    """The generated stub with auth metadata, for tests that look at exact status codes."""

    def __init__(self, port: int, token: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.TaskCommandRouterStub(self.channel)
        self.token = token
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)

    def call(self, name: str, request, timeout: float = 30.0, metadata=None):  # type: ignore[no-untyped-def]
        return getattr(self.stub, name)(request, timeout=timeout,
                                        metadata=self.metadata if metadata is None else metadata)

    def code(self, name: str, request, **kw) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
        """The status code a call ends with (OK included); stream calls are read to the end."""
        try:
            result = self.call(name, request, **kw)
            if name == "TaskExecStdioRead":
                list(result)
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK


@pytest.fixture
def raw(server: RouterServer, token: str) -> Iterator[Raw]:
    r = Raw(server.port, token)
    try:
        yield r
    finally:
        r.channel.close()


def start_request(exec_id: str, args: list[str], **fields: object) -> pb.TaskExecStartRequest:
    fields.setdefault("stdout_config", pb.TASK_EXEC_STDOUT_CONFIG_PIPE)
    fields.setdefault("stderr_config", pb.TASK_EXEC_STDERR_CONFIG_PIPE)
    return pb.TaskExecStartRequest(task_id=TASK_ID, exec_id=exec_id, command_args=args, **fields)


def py(code: str) -> list[str]:
    """A tiny Python child program."""
    return [sys.executable, "-u", "-c", code]


@contextlib.contextmanager
def router_process(state_dir: pathlib.Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`router serve` in its own process on a free port; yields (process, HOST:PORT). Always stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir),
         "--task-id", TASK_ID, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        listen = None
        for line in proc.stdout:
            if line.startswith("router listening on "):
                listen = line.split()[-1]
                break
        assert listen, "server did not start"
        yield proc, listen
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
