"""`router status` and ExecControl's Status: the server's state in one screen, or JSON."""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import time
from typing import Any

import grpc
import pytest
from cryptography import x509

import router
from router import auth, config
from router._proto import exec_control_pb2 as ec
from router._proto import exec_control_pb2_grpc as ec_grpc
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient
from router.tls import TlsFiles, client_credentials
from tests.helpers.certs import CA, write
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import bearer
from tests.helpers.polling import eventually
from tests.helpers.processes import run_router as router_cmd
from tests.helpers.servers import TASK_ID, router_process, running, serving, state_token


def status_json(state_dir: pathlib.Path, *flags: str) -> dict[str, Any]:
    done = router_cmd("status", "--state-dir", str(state_dir), "--json", *flags)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_status_shows_running_then_retained_execs(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path) as (proc, listen), \
            RouterClient(listen, state_token(tmp_path), TASK_ID, retries=0) as client:
        client.start("sleeper", ["sh", "-c", "echo hello; exec sleep 30"], **PIPES)
        assert eventually(lambda: client.inspect("sleeper").stdout_bytes == len(b"hello\n"))
        first = status_json(tmp_path)
        assert first["execs_running"] == 1 and first["execs_retained"] == 0 and first["retained_bytes"] == 0
        served = config.read_server_info(tmp_path)  # the serving process, started by the keeper (proc)
        assert served is not None and first["pid"] == served.pid and first["keeper_pid"] == proc.pid
        assert first["state"] == "serving" and first["listen"] == listen
        assert first["version"] == router.__version__ and first["task_id"] == TASK_ID
        assert first["server_mode"] == "aio" and first["durability"] == "process"
        assert first["metrics_listen"] is None and first["tls_not_after"] is None
        assert first["mounts_active"] == 0 and first["mount_paths"] == []
        for fs, path in (("log_filesystem", tmp_path / "logs"), ("state_filesystem", tmp_path)):
            space = first[fs]
            assert space["path"] == str(path) and not space["full"]
            assert 0 < space["free_bytes"] <= space["total_bytes"]
            st = os.statvfs(path)
            assert space["total_bytes"] == st.f_blocks * st.f_frsize
        client.kill("sleeper")
        then = status_json(tmp_path)
        assert then["execs_running"] == 0 and then["execs_retained"] == 1 and then["retained_bytes"] >= len(b"hello\n")
        assert then["uptime_secs"] >= first["uptime_secs"] and then["started_at"] == first["started_at"]
        screen = router_cmd("status", "--state-dir", str(tmp_path))
        assert screen.returncode == 0, screen.stderr
        lines = screen.stdout.decode().splitlines()
        matches = [re.fullmatch(r"([a-z ]+): +(\S.*)", line) for line in lines]
        pairs = {m.group(1): m.group(2) for m in matches if m is not None}
        assert len(pairs) == len(lines) == 15
        assert len({line.index(value) for line, value in zip(lines, pairs.values(), strict=True)}) == 1  # aligned
        assert pairs["state"] == "serving" and pairs["execs running"] == "0"
        assert pairs["pid"] == f"{served.pid} (keeper {proc.pid})"
        assert re.fullmatch(r"1 \(\d+ B of output\)", pairs["execs retained"])
        assert re.fullmatch(r"\d+s \(since .* UTC\)", pairs["uptime"]) and pairs["listen"] == listen
        assert re.fullmatch(r"[\d.]+ [KMGTP]iB free of [\d.]+ [KMGTP]iB  " + re.escape(str(tmp_path / "logs")),
                            pairs["log filesystem"])
        assert pairs["mounts"] == "0" and pairs["tls certificate"] == "none (plaintext)" and pairs["metrics"] == "off"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_no_server_is_one_line_and_exit_1(tmp_path: pathlib.Path) -> None:
    began = time.monotonic()
    done = router_cmd("status", "--target", "127.0.0.1:1", "--token", "x", "--task-id", TASK_ID)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("router status: cannot reach the router at 127.0.0.1:1")
    assert done.stderr.count(b"\n") == 1 and b"Traceback" not in done.stderr
    assert time.monotonic() - began < 20
    with router_process(tmp_path) as (_, listen):
        refused = router_cmd("status", "--target", listen, "--token", auth.mint_token(b"k" * 32, TASK_ID))
        assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1
        assert b"refused the token" in refused.stderr


def test_status_says_draining_and_lists_mounts(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "mounted"
    target.mkdir()
    with serving(tmp_path, mount_method="copy") as (server, client, raw):
        assert client.status().serving == "serving"
        raw.call("TaskMountDirectory", pb.TaskMountDirectoryRequest(task_id=TASK_ID, path=bytes(target)))
        try:
            status = client.status()
            assert status.mounts_active == 1 and list(status.mount_paths) == [bytes(target)]
            server.status.unready.add("draining")  # what the drain on SIGTERM holds
            assert client.status().serving == "draining"
        finally:
            raw.call("TaskUnmountDirectory", pb.TaskUnmountDirectoryRequest(task_id=TASK_ID, path=bytes(target)))
        assert client.status().mounts_active == 0


def test_status_gives_the_served_certificates_expiry_and_wants_a_token(tmp_path: pathlib.Path) -> None:
    ca = CA("status CA")
    cert, key = ca.issue("router", server=True)
    pki = tmp_path / "pki"
    pki.mkdir()
    files = TlsFiles(cert=write(pki, "server.pem", cert), key=write(pki, "server.key", key))
    with running(tmp_path, tls=files) as (server, signing_key), \
            grpc.secure_channel(f"127.0.0.1:{server.port}", client_credentials(write(pki, "ca.pem", ca.pem()))) as ch:
        stub = ec_grpc.ExecControlStub(ch)
        status = stub.Status(ec.StatusRequest(task_id=TASK_ID), timeout=10,
                             metadata=bearer(auth.mint_token(signing_key, TASK_ID)))
        assert status.HasField("tls_not_after")
        assert status.tls_not_after == x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Status(ec.StatusRequest(task_id=TASK_ID), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as other_task:
            stub.Status(ec.StatusRequest(task_id="ta-other"), timeout=10,
                        metadata=bearer(auth.mint_token(signing_key, TASK_ID)))
        assert other_task.value.code() == grpc.StatusCode.NOT_FOUND  # as every call for another task
