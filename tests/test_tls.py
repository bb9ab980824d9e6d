"""TLS and mTLS with certificates made on the spot; reload on SIGHUP; plaintext beyond loopback."""
from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
import pytest

from router import auth
from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import CHANNEL_OPTIONS
from router.config import ServerConfig
from router.server.grpc_server import RouterServer
from router.tls import TlsFiles, client_credentials, is_loopback
from tests.helpers.certs import CA, write
from tests.helpers.grpc_raw import bearer
from tests.helpers.servers import TASK_ID, router_process, running

POLL = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="absent")


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> dict[str, str]:
    ca, other = CA("router test CA"), CA("another CA")
    d = tmp_path / "pki"
    d.mkdir()
    server_cert, server_key = ca.issue("router", server=True)
    client_cert, client_key = ca.issue("client", server=False)
    rogue_cert, rogue_key = other.issue("rogue", server=False)
    return {
        "ca": write(d, "ca.pem", ca.pem()), "other_ca": write(d, "other.pem", other.pem()),
        "cert": write(d, "server.pem", server_cert), "key": write(d, "server.key", server_key),
        "client_cert": write(d, "client.pem", client_cert), "client_key": write(d, "client.key", client_key),
        "rogue_cert": write(d, "rogue.pem", rogue_cert), "rogue_key": write(d, "rogue.key", rogue_key),
    }


def poll_code(port: int, key: bytes, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """NOT_FOUND means the call got through TLS and auth to the service."""
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS) if credentials \
        else grpc.insecure_channel(target)
    with channel:
        try:
            pb_grpc.TaskCommandRouterStub(channel).TaskExecPoll(
                POLL, timeout=5, metadata=bearer(auth.mint_token(key, TASK_ID)))
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_tls_serves_a_client_that_trusts_it_and_refuses_plaintext(tmp_path: pathlib.Path, pki: dict[str, str]) -> None:
    with running(tmp_path, tls=TlsFiles(cert=pki["cert"], key=pki["key"])) as (server, key):
        assert poll_code(server.port, key, client_credentials(pki["ca"])) == grpc.StatusCode.NOT_FOUND
        assert poll_code(server.port, key, None) == grpc.StatusCode.UNAVAILABLE
        assert poll_code(server.port, key, client_credentials(pki["other_ca"])) == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_its_ca(tmp_path: pathlib.Path, pki: dict[str, str]) -> None:
    with running(tmp_path, tls=TlsFiles(cert=pki["cert"], key=pki["key"], client_ca=pki["ca"])) as (server, key):
        assert poll_code(server.port, key, client_credentials(pki["ca"])) == grpc.StatusCode.UNAVAILABLE
        assert poll_code(server.port, key, client_credentials(pki["ca"], pki["rogue_cert"], pki["rogue_key"])) \
            == grpc.StatusCode.UNAVAILABLE
        assert poll_code(server.port, key, client_credentials(pki["ca"], pki["client_cert"], pki["client_key"])) \
            == grpc.StatusCode.NOT_FOUND
        assert poll_code(server.port, key, None) == grpc.StatusCode.UNAVAILABLE


def test_reload_serves_a_rotated_certificate_and_keeps_connections(tmp_path: pathlib.Path, pki: dict[str, str],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with running(tmp_path, tls=TlsFiles(cert=pki["cert"], key=pki["key"])) as (server, key):
        metadata = bearer(auth.mint_token(key, TASK_ID))

        def poll(stub: pb_grpc.TaskCommandRouterStub) -> grpc.StatusCode:
            try:
                stub.TaskExecPoll(POLL, timeout=5, metadata=metadata)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        assert server.tls is not None
        with grpc.secure_channel(f"127.0.0.1:{server.port}", client_credentials(pki["ca"])) as channel:
            old = pb_grpc.TaskCommandRouterStub(channel)
            assert poll(old) == grpc.StatusCode.NOT_FOUND  # connected under the old certificate
            rotated = CA("rotated CA")
            cert, private = rotated.issue("router", server=True)
            new_ca = write(tmp_path / "pki", "rotated-ca.pem", rotated.pem())
            assert poll_code(server.port, key, client_credentials(new_ca)) == grpc.StatusCode.UNAVAILABLE
            # A broken pair is refused and the old certificate stays.
            write(tmp_path / "pki", "server.key", CA("x").issue("x", server=True)[1])
            assert not server.tls.reload() and "does not belong" in caplog.text
            assert poll_code(server.port, key, client_credentials(pki["ca"])) == grpc.StatusCode.NOT_FOUND
            write(tmp_path / "pki", "server.pem", cert)
            write(tmp_path / "pki", "server.key", private)
            assert server.tls.reload()
            assert poll_code(server.port, key, client_credentials(new_ca)) == grpc.StatusCode.NOT_FOUND
            assert poll(old) == grpc.StatusCode.NOT_FOUND  # the old connection still works


def test_plaintext_beyond_loopback_needs_insecure(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = auth.load_or_create_key(state)
    config = ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="0.0.0.0:0")
    with pytest.raises(ValueError, match="--insecure"):
        RouterServer(config, key)
    caplog.set_level(logging.WARNING)
    server = RouterServer(ServerConfig(state_dir=str(state), task_id=TASK_ID, listen="0.0.0.0:0", insecure=True), key)
    try:
        server.start()
        assert "WITHOUT TLS" in caplog.text
    finally:
        server.stop(0.5)
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:1") and not is_loopback("[::]:1") and not is_loopback(":1")


def test_router_exec_over_tls_and_sighup_reload(tmp_path: pathlib.Path, pki: dict[str, str]) -> None:
    with router_process(tmp_path, "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                        "--tls-client-ca", pki["ca"]) as (server, listen):
        def run(*flags: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "router.cli", "exec", "--state-dir", str(tmp_path),
                                   "--target", listen, *flags, "-n", "--", "echo", "over tls"],
                                  capture_output=True, text=True, timeout=60)

        mutual = ("--tls-ca", pki["ca"], "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"])
        done = run(*mutual)
        assert done.returncode == 0 and done.stdout == "over tls\n", done.stderr
        began = time.monotonic()
        refused = run("--tls-ca", pki["ca"], "--give-up", "3")  # no client certificate: the handshake fails
        assert refused.returncode == 255 and time.monotonic() - began < 3 + 1.5
        # One line of ours; none of grpc's own log.
        assert refused.stderr.startswith("router exec: cannot reach"), refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        os.kill(server.pid, signal.SIGHUP)  # a reload of unchanged files: still serving
        time.sleep(0.3)
        assert server.poll() is None and run(*mutual).returncode == 0
