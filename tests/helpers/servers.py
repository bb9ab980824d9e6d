"""Routers for the tests: in this process (make_server, serving) or in their own (router_process)."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from typing import IO, Any

from router import auth
from router.client import RouterClient
from router.config import ServerConfig, read_server_info
from router.server.grpc_server import RouterServer

from .grpc_raw import Raw
from .polling import eventually
from .processes import ROUTER, alive, terminate

# The task every router of the suite serves.
TASK_ID = "ta-test"


def make_server(tmp_path: pathlib.Path, **overrides: Any) -> tuple[RouterServer, bytes]:
    """A started server (state in tmp_path/state) with these ServerConfig overrides, and its key.
    The caller stops it."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    key = auth.load_or_create_key(state)
    config = ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="127.0.0.1:0", max_workers=512, **overrides)
    server = RouterServer(config, key)
    server.start()
    return server, key


@contextlib.contextmanager
def running(tmp_path: pathlib.Path, **overrides: Any) -> Iterator[tuple[RouterServer, bytes]]:
    """make_server's server and key, the server stopped after the block."""
    server, key = make_server(tmp_path, **overrides)
    try:
        yield server, key
    finally:
        server.stop(0.5)


@contextlib.contextmanager
def serving(tmp_path: pathlib.Path, **overrides: Any) -> Iterator[tuple[RouterServer, RouterClient, Raw]]:
    """A server with these config overrides, a client and a raw stub on it; all stopped after."""
    with running(tmp_path, **overrides) as (server, key):
        token = auth.mint_token(key, TASK_ID)
        client = RouterClient(f"127.0.0.1:{server.port}", token, TASK_ID, retries=0)
        raw = Raw(server.port, token)
        try:
            yield server, client, raw
        finally:
            client.close()
            raw.channel.close()


def free_port() -> int:
    """A loopback port nothing listens on now: for a router that must keep its port across a restart
    or a handover (port 0 would pick a new one each time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_token(state_dir: pathlib.Path, ttl_secs: int | None = None) -> str:
    """A token for the router whose state directory is `state_dir`, signed with the key kept there
    (made there first if there is none yet)."""
    key = auth.load_or_create_key(state_dir)
    return auth.mint_token(key, TASK_ID) if ttl_secs is None else auth.mint_token(key, TASK_ID, ttl_secs)


def serving_pid(state_dir: pathlib.Path) -> int:
    """The pid of the process serving `state_dir` (`router serve` itself is its keeper)."""
    info = read_server_info(state_dir)
    assert info is not None, f"no server.json in {state_dir}"
    return info.pid


def hand_over(keeper: subprocess.Popen[str], state: pathlib.Path) -> int:
    """SIGUSR2 to the keeper; the new serving process's pid, once the old one has exited."""
    old = serving_pid(state)
    keeper.send_signal(signal.SIGUSR2)
    assert eventually(lambda: serving_pid(state) != old, 60), "no new process took over"
    assert eventually(lambda: not alive(old), 30), "the old serving process did not exit"
    assert keeper.poll() is None
    return serving_pid(state)


@contextlib.contextmanager
def router_process(state_dir: pathlib.Path, *extra: str, prefix: Sequence[str] = (),
                   stderr: IO[bytes] | int = subprocess.STDOUT,
                   drain_secs: float | None = 0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`router serve` in its own process on a free port (run through `prefix`, a command that execs
    its arguments, if given); yields (process, HOST:PORT), its stdout (and stderr) still open for the
    lines after the address, in text or JSON (--log-format json); its stderr goes there too unless
    `stderr` says where. Always stopped (SIGTERM). `drain_secs`: its --drain-secs, None for the
    default; 0 unless a test is about draining, so that the stop kills what still runs at once."""
    drain = () if drain_secs is None else ("--drain-secs", str(drain_secs))
    proc = subprocess.Popen(
        [*prefix, *ROUTER, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir),
         "--task-id", TASK_ID, *drain, *extra],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
    )
    try:
        assert proc.stdout is not None
        listen = None
        before: list[str] = []
        for line in proc.stdout:
            if line.startswith("router listening on "):
                listen = line.split()[-1]
                break
            if line.startswith('{"time":') and json.loads(line)["event"] == "listening":  # --log-format json
                listen = json.loads(line)["listen"]
                break
            before.append(line)
        assert listen, "server did not start:\n" + "".join(before)
        yield proc, listen
    finally:
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()


_logs: dict[int, list[str]] = {}


def open_log(proc: subprocess.Popen[str]) -> str:
    """What a router_process printed so far (read without blocking: its stdout is a pipe)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    lines = _logs.setdefault(proc.pid, [])
    try:
        chunk = os.read(fd, 1 << 20)
        if chunk:
            lines.append(chunk.decode(errors="replace"))
    except BlockingIOError:
        pass
    return "".join(lines)
