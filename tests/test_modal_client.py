"""Modal's own client class against a router in its own process (its stubs and ours cannot share a
process: protobuf refuses two definitions of one message name)."""
from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import socket

import pytest

from router.client import RouterClient, exit_code
from tests.helpers.drivers import driver_result, modal_driver
from tests.helpers.execs import PIPES
from tests.helpers.servers import TASK_ID, router_process, state_token

# Only look for it: importing Modal here would clash with router's protos in this process.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("modal") is None,
                                reason="Modal's client is part of the test extra")


def test_modal_client_start_read_write_wait(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path) as (_, listen):
        token = state_token(tmp_path)
        with modal_driver(f"http://{listen}", token, TASK_ID) as driver:
            outcome = driver_result(driver, 90)
    assert outcome == {
        "stdout": "got:abc:hello\n",
        "stderr": "err\n",
        "wait_code": 4,
        "poll_code": 4,
        "tail": "abc:hello\n",
    }


def test_modal_client_reads_across_a_kill_9_restart(tmp_path: pathlib.Path) -> None:
    """Modal's client reading a finished exec's output while its router is killed (-9) and started
    again on the same address resumes by offset and gets every byte once."""
    with socket.socket() as s:  # a port for both runs: the client reconnects to the same address
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    token = state_token(tmp_path)
    # Well past what the client's 64 MiB HTTP/2 window lets the first server send ahead.
    size = 160 * 1024 * 1024
    with router_process(tmp_path, "--listen", listen) as (server, _):
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("big", ["head", "-c", str(size), "/dev/urandom"], **PIPES)
            assert exit_code(client.wait("big")) == 0
            expected = hashlib.sha256(b"".join(client.read("big"))).hexdigest()
        with modal_driver(f"http://{listen}", token, TASK_ID, "follow", "big") as reader:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "reading"
            server.kill()
            server.wait(10)
            with router_process(tmp_path, "--listen", listen):
                assert driver_result(reader, 90) == {"length": size, "sha256": expected}
