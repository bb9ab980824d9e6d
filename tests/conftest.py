"""Shared fixtures: a real server on a free loopback port, clients, and leak guards after every test.

Helpers (servers, raw stubs, processes...) live in tests/helpers/."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import subprocess
import threading
from collections.abc import Iterator

import grpc
import pytest
import uvloop

from router import auth
from router.client import RouterClient
from router.server.grpc_server import RouterServer
from tests.helpers.grpc_raw import Raw
from tests.helpers.leaks import grpc_internal, log_counters, mounts_under, open_descriptors
from tests.helpers.polling import settled
from tests.helpers.processes import children
from tests.helpers.servers import TASK_ID, running


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
    """After every test: no child process, thread, descriptor, hot-path object or mount it left behind."""
    fds = open_descriptors()
    threads = set(threading.enumerate())
    kids = set(children())
    logs = log_counters()
    # Only this session's: other processes (another test run) may mount meanwhile.
    ours = str(tmp_path_factory.getbasetemp())
    mounted = mounts_under(ours)
    yield
    gc.collect()  # grpc.aio ends its poller thread when its last object is freed
    leaked_kids = settled(lambda: set(children()) - kids)
    assert not leaked_kids, f"child processes left behind: {leaked_kids}"
    leaked_threads = settled(lambda: {t for t in threading.enumerate() if t not in threads and t.is_alive()})
    assert not leaked_threads, f"threads left behind: {leaked_threads}"
    leaked_fds = settled(lambda: {f for f in open_descriptors() - fds if not grpc_internal(f)})
    assert not leaked_fds, f"descriptors left open: {leaked_fds}"
    # Stores, logs, slots and drain buffers of the hot path (and its twin), and calls inside a syscall.
    left = settled(lambda: {k: v for k, v in log_counters().items() if v != logs[k]})
    assert not left, f"hot-path objects left behind (now, before): {({k: (v, logs[k]) for k, v in left.items()})}"
    stale = mounts_under(ours) - mounted
    for point in sorted(stale, key=len, reverse=True):  # so that the next test starts clean
        subprocess.run(["umount", "-l", point], check=False)
    assert not stale, f"mounts left behind: {stale}"


@pytest.fixture(params=["aio", "threads"])
def server_and_key(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[RouterServer, bytes]]:
    """A server in each mode: both serve the same contract."""
    with running(tmp_path, server_mode=request.param) as (server, key):
        yield server, key


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


@pytest.fixture
def raw(server: RouterServer, token: str) -> Iterator[Raw]:
    r = Raw(server.port, token)
    try:
        yield r
    finally:
        r.channel.close()
