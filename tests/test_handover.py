"""Live handover: SIGUSR2 to `router serve` (the keeper) or `router serve --takeover` starts a new
serving process that takes over every running exec; what runs never notices."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import signal
import subprocess
import time

import grpc
import pytest

from router._proto import api_pb2
from router._proto import exec_control_pb2 as ec
from router.client import RouterClient, exit_code
from tests.helpers.drivers import driver_result, modal_driver
from tests.helpers.execs import PIPES
from tests.helpers.health import LIVENESS, NOT_SERVING, SERVING, health
from tests.helpers.polling import eventually
from tests.helpers.processes import ROUTER, alive
from tests.helpers.servers import TASK_ID, hand_over, open_log, router_process, serving_pid, state_token

pytestmark = pytest.mark.timeout(180)


def test_running_execs_with_timeouts_and_stdin_carry_on(tmp_path: pathlib.Path) -> None:
    """200 running execs: half wait for stdin, half for their timeout. After the handover they have
    the same pids, stdin goes on at its offsets (a retried write is taken once), exit codes are
    theirs and the timeouts fire at their original times."""
    state = tmp_path / "state"
    with router_process(state) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            started = {}
            for i in range(200):
                if i % 2:
                    client.start(f"t{i}", ["sh", "-c", "echo up; sleep 100"], **PIPES, timeout_secs=6)
                else:
                    client.start(f"s{i}", ["sh", "-c", f'read line; echo "got $line"; exit {i % 7}'], **PIPES)
                    client.write_stdin(f"s{i}", 0, b"hel")
                started[i] = time.monotonic()
            pids = {info.exec_id: info.pid for info in client.execs()}
            old = serving_pid(state)
            new = hand_over(keeper, state)
            assert new != old and keeper.pid not in (old, new)
            assert {info.exec_id: info.pid for info in client.execs()} == pids
            for i in range(0, 200, 2):
                client.write_stdin(f"s{i}", 0, f"hello-{i}\n".encode(), eof=True)  # its first 3 bytes repeat
            for i in range(200):
                exec_id = f"t{i}" if i % 2 else f"s{i}"
                result = client.wait(exec_id)
                info = client.inspect(exec_id)
                if i % 2:
                    assert info.exit.cause == ec.EXIT_CAUSE_TIMED_OUT, exec_id
                    elapsed = info.ended_at - info.started_at
                    assert 5.5 < elapsed < 9, (exec_id, elapsed)
                    assert b"".join(client.read(exec_id)) == b"up\n"
                else:
                    assert exit_code(result) == i % 7, exec_id
                    assert b"".join(client.read(exec_id)) == f"got hello-{i}\n".encode()
    assert keeper.returncode == 0


def test_a_pty_exec_being_typed_into(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    with router_process(state) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("tty", ["sh", "-c", "while read line; do echo \"you said $line\"; done; echo bye"],
                         **PIPES, pty_info=api_pb2.PTYInfo(enabled=True))
            client.write_stdin("tty", 0, b"one\n")
            assert b"you said one" in read_until(client, "tty", b"you said one")
            pid = client.inspect("tty").pid
            hand_over(keeper, state)
            assert client.inspect("tty").pid == pid
            client.write_stdin("tty", 4, b"two\n", eof=True)
            assert exit_code(client.wait("tty")) == 0
            out = b"".join(client.read("tty")).replace(b"\r\n", b"\n")
            assert out.count(b"you said one\n") == 1 and out.count(b"you said two\n") == 1 and out.endswith(b"bye\n")


@pytest.mark.skipif(importlib.util.find_spec("modal") is None, reason="Modal's client is not installed")
def test_a_stream_read_by_modals_client_across_the_handover(tmp_path: pathlib.Path) -> None:
    """1 GiB written while Modal's client reads it: every byte once, in order (sha256)."""
    size = 1 << 30
    # Deterministic bytes, written in a steady trickle so the handover lands mid-stream.
    program = ("import hashlib,sys,time\n"
               f"n={size}; block=1<<20; i=0\n"
               "while n:\n"
               " b=hashlib.sha256(str(i).encode()).digest()*(block//32); b=b[:min(n,block)]\n"
               " sys.stdout.buffer.write(b); n-=len(b); i+=1\n"
               " if i % 64 == 0: sys.stdout.flush(); time.sleep(0.05)\n")
    expected = hashlib.sha256()
    n, i = size, 0
    while n:
        b = (hashlib.sha256(str(i).encode()).digest() * ((1 << 20) // 32))[:min(n, 1 << 20)]
        expected.update(b)
        n -= len(b)
        i += 1
    state = tmp_path / "state"
    with router_process(state) as (keeper, listen):
        token = state_token(state)
        with RouterClient(listen, token, TASK_ID) as client:
            client.start("big", ["python3", "-c", program], **PIPES)
            with modal_driver(f"http://{listen}", token, TASK_ID, "follow", "big") as reader:
                assert reader.stdout is not None
                assert reader.stdout.readline().strip() == "reading"
                assert eventually(lambda: client.inspect("big").stdout_bytes > 100 << 20, 60)
                hand_over(keeper, state)
                assert client.inspect("big").running
                assert driver_result(reader, 150) == {"length": size, "sha256": expected.hexdigest()}
            assert exit_code(client.wait("big")) == 0


@pytest.mark.parametrize("failpoint", ["before-commit", "version"])
def test_a_failed_successor_leaves_the_old_process_serving(tmp_path: pathlib.Path, failpoint: str) -> None:
    state = tmp_path / "state"
    with router_process(state, prefix=failing(failpoint)) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("s", ["sh", "-c", "read line; echo \"got $line\"; sleep 0.5; echo end; exit 5"], **PIPES)
            client.write_stdin("s", 0, b"a")
            old = serving_pid(state)
            if failpoint == "version":  # asked for by hand: the outcome is said, at once
                began = time.monotonic()
                done = subprocess.run([*ROUTER, "serve", "--takeover", "--state-dir", str(state)],
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 1 and "failed" in done.stderr and time.monotonic() - began < 30, done
            else:
                keeper.send_signal(signal.SIGUSR2)
            assert eventually(lambda: "handover failed" in open_log(keeper), 30)
            assert serving_pid(state) == old and alive(old)
            client.write_stdin("s", 0, b"abc\n", eof=True)
            assert exit_code(client.wait("s")) == 5
            assert b"".join(client.read("s")) == b"got abc\nend\n"
            client.start("after", ["echo", "still"], **PIPES)
            assert exit_code(client.wait("after")) == 0


def test_readiness_says_not_serving_while_it_hands_over(tmp_path: pathlib.Path) -> None:
    """Readiness is NOT_SERVING from the moment the old process stops taking new execs until the
    new one serves; liveness stays SERVING; a new exec meanwhile is UNAVAILABLE (retried)."""
    state = tmp_path / "state"
    with router_process(state, prefix=failing("slow-commit")) as (keeper, listen):
        assert health(listen) == SERVING
        with RouterClient(listen, state_token(state), TASK_ID, retries=0) as client:
            client.start("s", ["sleep", "30"], **PIPES)
            old = serving_pid(state)
            keeper.send_signal(signal.SIGUSR2)
            assert eventually(lambda: health(listen) == NOT_SERVING, 30)
            assert health(listen, LIVENESS) == SERVING
            with pytest.raises(grpc.RpcError) as refused:
                client.start("new", ["true"], **PIPES)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert eventually(lambda: serving_pid(state) != old, 30)
            assert eventually(lambda: health(listen) == SERVING, 10)
            client.start("new", ["true"], **PIPES)
            assert exit_code(client.wait("new")) == 0


def test_a_crashed_serving_process_is_started_again(tmp_path: pathlib.Path) -> None:
    """kill -9 of the serving process (not the keeper): the keeper starts a new one, which restores
    from the journal as after any crash (a running exec is lost, its group ended)."""
    state = tmp_path / "state"
    with router_process(state) as (keeper, listen):
        token = state_token(state)
        with RouterClient(listen, token, TASK_ID) as client:
            client.start("done", ["echo", "kept"], **PIPES)
            assert exit_code(client.wait("done")) == 0
            client.start("running", ["sleep", "60"], **PIPES)
            leader = client.inspect("running").pid
            old = serving_pid(state)
            os.kill(old, signal.SIGKILL)
            assert eventually(lambda: serving_pid(state) != old, 30)  # server.json stays: the crash left it
            assert keeper.poll() is None
            assert eventually(lambda: not alive(leader), 10)
            assert client.inspect("running").exit.cause == ec.EXIT_CAUSE_LOST
            assert b"".join(client.read("done")) == b"kept\n"
            client.start("after", ["true"], **PIPES)
            assert exit_code(client.wait("after")) == 0


def test_an_exit_during_a_second_handover_reaches_the_successor(tmp_path: pathlib.Path) -> None:
    """A leader handed over once is the keeper's child; it exits while the second handover's old
    process is frozen: its status reaches the successor all the same."""
    state = tmp_path / "state"
    with router_process(state, prefix=failing("slow-commit")) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("a", ["sleep", "100"], **PIPES)
            leader = client.inspect("a").pid
            hand_over(keeper, state)
            old = serving_pid(state)
            keeper.send_signal(signal.SIGUSR2)
            assert eventually(lambda: health(listen) == NOT_SERVING, 30)  # frozen: the successor dawdles
            os.kill(leader, signal.SIGTERM)
            assert eventually(lambda: serving_pid(state) != old, 60)
            assert exit_code(client.wait("a")) == 128 + signal.SIGTERM
            assert eventually(lambda: not alive(leader), 10)  # reaped


def test_sigterm_during_a_handover_reaches_whoever_serves_after_it(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    with router_process(state, prefix=failing("slow-commit")) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("s", ["sleep", "1"], **PIPES)
            leader = client.inspect("s").pid
        old = serving_pid(state)
        keeper.send_signal(signal.SIGUSR2)
        assert eventually(lambda: health(listen) == NOT_SERVING, 30)
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(30) == 0
        assert not alive(old) and not alive(leader)


def test_takeover_flag(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    with router_process(state) as (keeper, listen):
        with RouterClient(listen, state_token(state), TASK_ID) as client:
            client.start("s", ["sh", "-c", "sleep 1; echo done"], **PIPES)
            assert_inherits_stdio_only(client, "fds-before")  # nor what the keeper passed
            old = serving_pid(state)
            done = subprocess.run([*ROUTER, "serve", "--takeover", "--state-dir", str(state)],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert serving_pid(state) != old
            assert exit_code(client.wait("s")) == 0
            assert b"".join(client.read("s")) == b"done\n"
            # What the new process was handed (the exec's pipes, its pidfd) is not inherited by new execs.
            assert_inherits_stdio_only(client, "fds-after")


def failing(failpoint: str) -> list[str]:
    """A prefix for router_process: the router's successors fail (or dawdle) as `failpoint` says."""
    return ["env", f"ROUTER_HANDOVER_FAILPOINT={failpoint}"]


def assert_inherits_stdio_only(client: RouterClient, exec_id: str) -> None:
    client.start(exec_id, ["ls", "/proc/self/fd"], **PIPES)
    assert exit_code(client.wait(exec_id)) == 0
    assert b"".join(client.read(exec_id)).split() == [b"0", b"1", b"2", b"3"]  # 3: ls's own


def read_until(client: RouterClient, exec_id: str, needle: bytes) -> bytes:
    """A running exec's output from its start until `needle` shows up (the stream read stops there)."""
    seen = b""
    for chunk in client.read(exec_id):
        seen += chunk
        if needle in seen:
            break
    return seen
