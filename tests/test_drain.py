"""Drain on SIGTERM (and SIGINT): `router serve` refuses new execs with UNAVAILABLE and says it is
not ready, while the running execs go on and are served (reads, waits, stdin, Inspect); it stops
once they end, or ends them (cause shutdown) when --drain-secs is up, or at a second signal; the
calls in flight then get their answers. Real `router serve` processes, in both server modes."""
from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import subprocess
import time

import grpc
import pytest

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient, exit_code
from router.engine import journal_format
from router.engine.records import ExitCause
from router.server.service import SERVICE_NAME
from tests.helpers.execs import start_request
from tests.helpers.grpc_raw import Raw
from tests.helpers.health import LIVENESS, NOT_SERVING, SERVING, health
from tests.helpers.polling import eventually
from tests.helpers.processes import alive
from tests.helpers.servers import TASK_ID, open_log, router_process, serving_pid, state_token
from tests.helpers.tmpfs import fill, tmpfs

# Reads a line of stdin, then runs 3 s more.
SLOW = ["sh", "-c", 'echo start; read x; sleep 3; echo "got $x"']
# Says its pid, then sleeps long past any drain here.
SLEEPER = ["sh", "-c", "echo $$; exec sleep 60"]


def _refused(raw: Raw, exec_id: str) -> grpc.RpcError:
    """A new exec's start, which must fail: its error."""
    with pytest.raises(grpc.RpcError) as refused:
        raw.call("TaskExecStart", start_request(exec_id, ["true"]))
    return refused.value


def _pid(raw: Raw, exec_id: str) -> int:
    """The first line of the exec's stdout, a pid."""
    responses = raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id=exec_id))
    try:
        return int(next(responses).data.split()[0])
    finally:
        responses.cancel()


def _wait(raw: Raw, exec_id: str) -> grpc.Future:
    """A TaskExecWait in flight."""
    return raw.stub.TaskExecWait.future(pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id=exec_id),
                                        metadata=raw.metadata, timeout=60)


def _cause(state: pathlib.Path, exec_id: str) -> ExitCause:
    exited = journal_format.replay(state / "journal").execs[exec_id].exited
    assert exited is not None
    return exited.cause


def _rest(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.read()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_a_drain_lets_a_running_exec_finish_and_refuses_new_ones(tmp_path: pathlib.Path, mode: str) -> None:
    token = state_token(tmp_path)
    with router_process(tmp_path, "--server-mode", mode, drain_secs=None) as (proc, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), token) as raw, \
            RouterClient(listen, token, TASK_ID, retries=0) as client:
        raw.call("TaskExecStart", start_request("slow", SLOW))
        raw.call("TaskExecStart", start_request("victim", ["sleep", "60"]))
        raw.call("TaskExecStart", start_request("done", ["echo", "earlier"]))
        assert exit_code(client.wait("done")) == 0
        waiting = _wait(raw, "slow")
        events = client.watch(["victim"], include_started=True)
        assert next(events).kind == ec.WATCH_EVENT_KIND_STARTED  # the Watch is in flight
        proc.send_signal(signal.SIGTERM)
        # Not ready for new execs at once; alive all along.
        assert eventually(lambda: health(listen) == NOT_SERVING), "still ready while draining"
        assert health(listen, SERVICE_NAME) == NOT_SERVING
        assert health(listen, LIVENESS) == SERVING
        assert client.status().serving == "draining"
        refused = _refused(raw, "new")
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert (refused.details() or "").startswith("the router is draining: "), refused.details()
        # BatchStart refuses its new items alike; a retried start of a running exec is answered as before.
        new, again = client.batch_start([start_request("new-in-batch", ["true"]), start_request("slow", SLOW)])
        assert (new.code, again.code) == (grpc.StatusCode.UNAVAILABLE.value[0], 0), (new, again)
        assert "draining" in new.message
        raw.call("TaskExecStart", start_request("slow", SLOW))
        with pytest.raises(grpc.RpcError) as changed:
            raw.call("TaskExecStart", start_request("slow", ["true"]))
        assert changed.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # The execs there are served: polls, Inspect, List, finished output, Signal, Kill, Watch, stdin.
        assert exit_code(client.poll("slow")) is None
        assert client.inspect("slow").exec_id == "slow"
        assert {info.exec_id for info in client.execs()} == {"slow", "victim", "done"}
        client.signal("slow", signal.SIGCONT)
        assert client.kill("victim").cause == ec.EXIT_CAUSE_KILLED
        (exited,) = list(events)  # a Watch of named execs ends after their exits
        assert (exited.exec_id, exited.kind, exited.exit.cause) == ("victim", ec.WATCH_EVENT_KIND_EXITED,
                                                                    ec.EXIT_CAUSE_KILLED)
        assert b"".join(client.read("done")) == b"earlier\n"
        client.write_stdin("slow", 0, b"x\n", eof=True)
        # A stream read while it runs gets to its end, and the Wait in flight since before the signal its exit.
        assert b"".join(client.read("slow")) == b"start\ngot x\n"
        assert exit_code(waiting.result(timeout=10)) == 0
        ended = time.monotonic()
        # It stops soon after its last exec ended, long before --drain-secs (25 s by default).
        assert proc.wait(10) == 0
        assert time.monotonic() - ended < 3
        log = _rest(proc)
    assert "draining: 2 execs running" in log and "drained in" in log, log
    assert _cause(tmp_path, "slow") == ExitCause.EXITED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_execs_still_running_when_the_drain_time_is_up_end_with_cause_shutdown(tmp_path: pathlib.Path,
                                                                              mode: str) -> None:
    token = state_token(tmp_path)
    with router_process(tmp_path, "--server-mode", mode, drain_secs=2) as (proc, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
        raw.call("TaskExecStart", start_request("sleeper", SLEEPER))
        pid = _pid(raw, "sleeper")
        waiting = _wait(raw, "sleeper")
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        assert eventually(lambda: health(listen) == NOT_SERVING), "still ready while draining"
        # The Wait in flight when the drain ends gets the exit it was waiting for.
        assert exit_code(waiting.result(timeout=20)) == 128 + signal.SIGKILL
        assert 2 <= time.monotonic() - began < 2 + 3
        assert proc.wait(10) == 0
        log = _rest(proc)
    assert "drain time is up (2 s): ending the 1 execs still running" in log, log
    assert not alive(pid)
    assert _cause(tmp_path, "sleeper") == ExitCause.SHUTDOWN


def _interrupt(proc: subprocess.Popen[str], how: str) -> None:
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:  # Ctrl-C in the router's terminal: SIGINT to its whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_second_signal_ends_the_drain_at_once(tmp_path: pathlib.Path, how: str) -> None:
    """The first SIGTERM (or Ctrl-C's SIGINT, which the execs, in groups of their own, never get)
    drains; the second stops at once, ending what runs as a stop does."""
    token = state_token(tmp_path)
    with router_process(tmp_path, prefix=["setsid"], drain_secs=60) as (proc, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
        raw.call("TaskExecStart", start_request("sleeper", SLEEPER))
        pid = _pid(raw, "sleeper")
        waiting = _wait(raw, "sleeper")
        _interrupt(proc, how)
        assert eventually(lambda: health(listen) == NOT_SERVING), "still ready while draining"
        assert _refused(raw, "new").code() == grpc.StatusCode.UNAVAILABLE
        assert alive(pid) and exit_code(raw.call("TaskExecPoll", pb.TaskExecPollRequest(
            task_id=TASK_ID, exec_id="sleeper"))) is None
        _interrupt(proc, how)
        began = time.monotonic()
        assert exit_code(waiting.result(timeout=10)) == 128 + signal.SIGKILL
        assert proc.wait(10) == 0
        assert time.monotonic() - began < 3
        log = _rest(proc)
    assert "drain ended by a second signal" in log, log
    assert not alive(pid)
    assert _cause(tmp_path, "sleeper") == ExitCause.SHUTDOWN


@pytest.mark.timeout(120)
def test_readiness_stays_not_serving_while_draining_when_the_state_filesystem_has_room_again(
        tmp_path: pathlib.Path) -> None:
    """Each reason holds readiness down on its own: space returning during a drain leaves it NOT_SERVING."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with tmpfs(tmp_path / "state", 4 << 20) as state:
        token = state_token(state)
        with router_process(state, "--log-dir", str(logs), drain_secs=60) as (proc, listen), \
                Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
            raw.call("TaskExecStart", start_request("sleeper", SLEEPER))
            filler = fill(state)
            n = 0
            while raw.code("TaskExecStart", start_request(f"new{n}", ["true"])) == grpc.StatusCode.OK:
                n += 1
                assert n < 5000, "new execs were never refused"
            assert eventually(lambda: health(listen) == NOT_SERVING), "ready on a full state filesystem"
            proc.send_signal(signal.SIGTERM)
            assert eventually(lambda: "draining: " in open_log(proc), 10), "no drain began"
            filler.unlink()
            # The journal has room again (no more RESOURCE_EXHAUSTED): the drain alone refuses now.
            assert eventually(lambda: raw.code("TaskExecStart", start_request("after", ["true"]))
                              == grpc.StatusCode.UNAVAILABLE, timeout=10)
            assert not eventually(lambda: health(listen) == SERVING, timeout=0.5), "ready again while draining"
            assert health(listen, LIVENESS) == SERVING
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0


@pytest.mark.timeout(120)
def test_a_handover_asked_for_while_draining_is_refused_and_the_drain_goes_on(tmp_path: pathlib.Path) -> None:
    """SIGUSR2 during a drain: a successor would take new execs again, so the serving process
    refuses it and drains on; the second SIGTERM then stops it."""
    token = state_token(tmp_path)
    with router_process(tmp_path, drain_secs=60) as (keeper, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
        raw.call("TaskExecStart", start_request("sleeper", SLEEPER))
        pid, serving = _pid(raw, "sleeper"), serving_pid(tmp_path)
        keeper.send_signal(signal.SIGTERM)
        assert eventually(lambda: health(listen) == NOT_SERVING), "still ready while draining"
        keeper.send_signal(signal.SIGUSR2)
        assert eventually(lambda: "handover failed, serving on: this router is draining" in open_log(keeper), 30)
        assert serving_pid(tmp_path) == serving and alive(pid)
        refused = _refused(raw, "new")
        assert "the router is draining" in (refused.details() or ""), refused.details()
        assert not eventually(lambda: health(listen) == SERVING, timeout=0.5), "ready again while draining"
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(15) == 0
        assert "drain ended by a second signal" in open_log(keeper)
    assert not alive(pid)
    assert _cause(tmp_path, "sleeper") == ExitCause.SHUTDOWN


def _other_thread(pid: int) -> int:
    """A thread of process `pid` other than its main one that takes SIGTERM (does not block it)."""
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        if tid == pid:
            continue
        status = pathlib.Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(status.split("SigBlk:")[1].split()[0], 16)
        if not blocked & (1 << (signal.SIGTERM - 1)):
            return tid
    raise AssertionError(f"no thread of {pid} takes SIGTERM")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_a_sigterm_taken_by_another_thread_than_the_main_one_drains(tmp_path: pathlib.Path, mode: str) -> None:
    """The kernel gives a process's signal to any thread that does not block it (another one when
    the main thread has a signal pending already): its handler runs in the main thread all the same,
    at once, not whenever the main thread wakes up."""
    token = state_token(tmp_path)
    with router_process(tmp_path, "--server-mode", mode, drain_secs=60) as (_, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
        raw.call("TaskExecStart", start_request("sleeper", SLEEPER))
        serving = serving_pid(tmp_path)
        tgkill = ctypes.CDLL(None, use_errno=True).syscall
        assert tgkill(234, serving, _other_thread(serving), signal.SIGTERM) == 0  # SYS_tgkill on x86-64
        assert eventually(lambda: health(listen) == NOT_SERVING, 3), "the SIGTERM was not handled"
        assert _refused(raw, "new").code() == grpc.StatusCode.UNAVAILABLE
