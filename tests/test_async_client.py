"""AsyncRouterClient against a real server: each method, read and watch resuming after a cut
connection, wait giving up on a dead router, and from_env finding the usual places."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pathlib
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router import auth, config
from router._proto import api_pb2
from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, AsyncRouterClient, RouterClient, exit_code
from router.client.connection import unverified_claims
from tests.helpers.execs import PIPES, py
from tests.helpers.proxies import CuttableProxy
from tests.helpers.servers import TASK_ID, router_process, serving, state_token

Body = Callable[[AsyncRouterClient], Awaitable[None]]


def run_with(target: str, token: str, body: Body, retries: int = 0) -> None:
    """`body` with a client on its own event loop, closed after."""
    async def main() -> None:
        async with AsyncRouterClient(target, token, TASK_ID, retries=retries) as client:
            await body(client)

    asyncio.run(main())


async def first_line(client: AsyncRouterClient, exec_id: str) -> bytes:
    out = b""
    # read() gives an async generator (its signature says AsyncIterator): closing it cancels the call now.
    async with contextlib.aclosing(cast(AsyncGenerator[bytes, None], client.read(exec_id))) as stream:
        async for data in stream:
            out += data
            if b"\n" in out:
                break
    return out.split(b"\n")[0].strip()


async def read_all(client: AsyncRouterClient, exec_id: str, fd: pb.TaskExecStdioFileDescriptor = STDOUT) -> bytes:
    return b"".join([data async for data in client.read(exec_id, fd)])


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_every_method(tmp_path: pathlib.Path, mode: str) -> None:
    async def body(client: AsyncRouterClient) -> None:
        await client.start("cat", ["sh", "-c", "cat; echo err >&2; exit 3"], **PIPES)
        await client.write_stdin("cat", 0, b"hi\n")
        await client.write_stdin("cat", 3, b"", eof=True)
        assert await read_all(client, "cat") == b"hi\n"
        assert await read_all(client, "cat", STDERR) == b"err\n"
        assert exit_code(await client.wait("cat")) == 3
        assert exit_code(await client.poll("cat")) == 3
        info = await client.inspect("cat")
        assert info.exec_id == "cat" and info.exit.code == 3 and info.stdin_bytes == 3

        await client.start("sleeps", ["sleep", "60"], **PIPES)
        await client.signal("sleeps", signal.SIGTERM)
        assert exit_code(await client.wait("sleeps")) == 128 + signal.SIGTERM
        await client.start("killed", ["sleep", "60"], **PIPES)
        assert (await client.kill("killed")).signal == signal.SIGKILL
        assert [i.exec_id async for i in client.execs(ec.EXEC_STATE_EXITED)] == ["cat", "sleeps", "killed"]

        await client.start("tty", ["sh", "-c", "echo ready; read x; stty size"], **PIPES,
                           pty_info=api_pb2.PTYInfo(enabled=True))
        assert await first_line(client, "tty") == b"ready"
        await client.resize("tty", 33, 101)
        await client.write_stdin("tty", 0, b"\n")
        assert b"33 101" in await read_all(client, "tty")

        items = [pb.TaskExecStartRequest(exec_id="b0", command_args=["true"], **PIPES),
                 pb.TaskExecStartRequest(exec_id="b1", command_args=[], **PIPES),
                 pb.TaskExecStartRequest(exec_id="b2", command_args=["sh", "-c", "exit 2"], **PIPES)]
        results = await client.batch_start(items)
        assert [r.code for r in results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
        events = {e.exec_id: e.exit.code async for e in client.watch(["b0", "b2"])}
        assert events == {"b0": 0, "b2": 2}
        with pytest.raises(grpc.RpcError) as info_error:
            await client.inspect("nope")
        assert info_error.value.code() == grpc.StatusCode.NOT_FOUND

    with serving(tmp_path, server_mode=mode) as (server, _, raw):
        run_with(f"127.0.0.1:{server.port}", raw.token, body)


def test_read_and_watch_resume_after_a_cut(tmp_path: pathlib.Path) -> None:
    """The sync test's cut (test_client.py), through the async client: read picks up at its offset;
    watch over 100 execs asks again for those not yet seen, and sees each exit once."""
    program = ("import sys, time\n"
               "for i in range(40):\n"
               "    sys.stdout.buffer.write(bytes([i]) * 100_000); sys.stdout.flush(); time.sleep(0.02)\n")
    expected = b"".join(bytes([i]) * 100_000 for i in range(40))
    ids = [f"w{i}" for i in range(100)]

    async def body(client: AsyncRouterClient) -> None:
        await client.start("cut", py(program), **PIPES)
        received = bytearray()
        async for data in client.read("cut"):
            received += data
            if len(received) > 1_000_000 and proxy.accepted == 1:
                proxy.cut()
        assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
        assert proxy.accepted >= 2, "the stream was never cut"
        assert exit_code(await client.wait("cut")) == 0

        cuts = proxy.accepted
        # Half now, half while the watch runs, so that some exits come after the cut.
        items = [pb.TaskExecStartRequest(exec_id=i, command_args=["sh", "-c", f"sleep {n // 50 * 0.5}; exit {n % 7}"],
                                         **PIPES) for n, i in enumerate(ids)]
        assert all(r.code == 0 for r in await client.batch_start(items))
        seen: list[str] = []
        async for event in client.watch(ids):
            assert event.exit.code == int(event.exec_id[1:]) % 7
            seen.append(event.exec_id)
            if len(seen) == 30:
                proxy.cut()
        assert sorted(seen) == sorted(ids) and proxy.accepted > cuts

    with serving(tmp_path) as (server, _, raw):
        proxy = CuttableProxy(server.port)
        try:
            run_with(f"127.0.0.1:{proxy.port}", raw.token, body, retries=20)
        finally:
            proxy.close()


def test_wait_gives_up_on_a_dead_router(tmp_path: pathlib.Path) -> None:
    token = state_token(tmp_path)
    with router_process(tmp_path) as (server, listen):
        async def body(client: AsyncRouterClient) -> None:
            await client.start("sleeps", ["sleep", "30"], **PIPES)
            server.kill()
            server.wait(10)
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                await client.wait("sleeps", call_timeout=1, unreachable_secs=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - began < 15

        run_with(listen, token, body, retries=3)


def test_from_env_finds_the_usual_places(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target from the state directory's server record, the token from $ROUTER_TOKEN, the task
    from the token; without a token, one minted with the state directory's key."""
    with serving(tmp_path) as (server, _, raw):
        state = tmp_path / "state"  # serving's, with its key
        config.write_server_info(state, config.ServerInfo(listen=f"127.0.0.1:{server.port}", task_id=TASK_ID,
                                                          pid=0, tls=False))
        monkeypatch.delenv("ROUTER_TOKEN", raising=False)
        with RouterClient.from_env(state_dir=state) as client:
            client.start("minted", ["true"], **PIPES)
            assert exit_code(client.wait("minted")) == 0
        monkeypatch.setenv("ROUTER_TOKEN", raw.token)

        async def main() -> None:
            async with AsyncRouterClient.from_env(state_dir=tmp_path / "elsewhere",
                                                  target=f"127.0.0.1:{server.port}") as client:
                assert client.task_id == TASK_ID  # the token's claim
                assert exit_code(await client.poll("minted")) == 0

        asyncio.run(main())
        assert not (tmp_path / "elsewhere").exists()  # the token and task came from elsewhere


def test_a_tokens_claims_are_read_without_its_key() -> None:
    token = auth.mint_token(b"k" * 32, "ta-claimed", 60)
    assert unverified_claims(token)["task_id"] == "ta-claimed"


@given(st.text(max_size=200))
def test_a_malformed_token_has_no_claims_and_raises_nothing(token: str) -> None:
    claims = unverified_claims(token)
    assert isinstance(claims, dict)
    assert unverified_claims(token.replace(".", "")) == {}  # no payload part
