"""--health-listen: the health service alone, in plaintext, on a port of its own, for Kubernetes'
gRPC probes (which speak no TLS) beside a TLS (or mTLS) --listen: the same statuses as the main
port's, through a drain and a live handover, and nothing but health there."""
from __future__ import annotations

import pathlib
import signal
import socket

import grpc
import pytest

from router._proto import task_command_router_pb2 as pb
from router._proto import task_command_router_pb2_grpc as pb_grpc
from router.client import RouterClient
from tests.helpers.certs import CA, write
from tests.helpers.execs import PIPES
from tests.helpers.health import LIVENESS, NOT_SERVING, SERVING, health
from tests.helpers.polling import eventually
from tests.helpers.processes import run_router
from tests.helpers.servers import TASK_ID, free_port, hand_over, router_process, state_token


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_plaintext_health_beside_mtls_across_a_handover(tmp_path: pathlib.Path, mode: str) -> None:
    ca = CA("router test CA")
    cert, key = ca.issue("router", server=True)
    pki = tmp_path / "pki"
    pki.mkdir()
    tls = ("--tls-cert", write(pki, "server.pem", cert), "--tls-key", write(pki, "server.key", key),
           "--tls-client-ca", write(pki, "ca.pem", ca.pem()))
    probe = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    with router_process(state, *tls, "--health-listen", probe, "--server-mode", mode) as (keeper, listen):
        assert health(probe) == SERVING and health(probe, LIVENESS) == SERVING
        with pytest.raises(grpc.RpcError) as plain:  # the main port is TLS only, a client certificate required
            health(listen)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(probe) as channel, pytest.raises(grpc.RpcError) as other:
            pb_grpc.TaskCommandRouterStub(channel).TaskExecPoll(
                pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="x"), timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED  # health alone: nothing else in plaintext
        hand_over(keeper, state)
        assert health(probe) == SERVING and health(probe, LIVENESS) == SERVING


def test_a_drain_is_not_ready_and_still_alive_on_the_health_port(tmp_path: pathlib.Path) -> None:
    probe = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    with router_process(state, "--health-listen", probe, drain_secs=60) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID, retries=0) as client:
            client.start("s", ["sleep", "60"], **PIPES)
            keeper.send_signal(signal.SIGTERM)
            assert eventually(lambda: health(probe) == NOT_SERVING, 10)
            assert health(probe, LIVENESS) == SERVING
            keeper.send_signal(signal.SIGTERM)  # the second signal: the stop at once
            assert keeper.wait(30) == 0


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_a_busy_health_address_is_named_and_nothing_starts(tmp_path: pathlib.Path, mode: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        out = run_router("serve", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--health-listen", address,
                         "--server-mode", mode)
    assert out.returncode == 1 and b"Traceback" not in out.stderr
    assert f"router serve: cannot serve health on {address} (--health-listen)" in out.stderr.decode()
    assert not (tmp_path / "server.json").exists()
