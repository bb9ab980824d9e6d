"""At the router's open-file limit: new execs are refused (RESOURCE_EXHAUSTED with Modal's retry
policy) while new connections, reads, stdin, snapshots and the journal go on, and execs start
again once others end. Each test runs `router serve` in its own process under a lowered limit."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from router._proto import task_command_router_pb2 as pb
from router.client import STDOUT, RouterClient, exit_code
from tests.helpers.drivers import driver_result, modal_driver
from tests.helpers.execs import start_request
from tests.helpers.grpc_raw import Raw, retry_after
from tests.helpers.polling import eventually
from tests.helpers.servers import TASK_ID, router_process, state_token

LIMIT = 200
PRLIMIT = ("prlimit", f"--nofile={LIMIT}:{LIMIT}")  # hard too, so that `router serve` cannot raise it
# New connections opened at once when execs fill the rest: each one a descriptor of the reserve.
CONNECTIONS = 16


def poll(exec_id: str) -> pb.TaskExecPollRequest:
    return pb.TaskExecPollRequest(task_id=TASK_ID, exec_id=exec_id)


def stdin(exec_id: str, data: bytes = b"", eof: bool = False) -> pb.TaskExecStdinWriteRequest:
    return pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id=exec_id, offset=0, data=data, eof=eof)


# Streams piped (stdin, stdout, stderr and a pidfd held), then stdin alone (two descriptors): the
# smaller execs fill what the larger ones left, as close to the limit as admission lets them.
FILLS: tuple[dict[str, int], ...] = ({}, {"stdout_config": pb.TASK_EXEC_STDOUT_CONFIG_DEVNULL,
                                          "stderr_config": pb.TASK_EXEC_STDERR_CONFIG_DEVNULL})


def fill(raw: Raw) -> tuple[list[str], grpc.RpcError]:
    """Start `cat` execs, each kind of FILLS until one is refused: the execs started (those with
    piped output first), and the last refusal."""
    started: list[str] = []
    refused: grpc.RpcError | None = None
    for streams in FILLS:
        while len(started) < LIMIT:
            try:
                raw.call("TaskExecStart", start_request(f"cat-{len(started)}", ["cat"], **streams))
            except grpc.RpcError as e:
                refused = e
                break
            started.append(f"cat-{len(started)}")
    assert refused is not None, f"{LIMIT} execs started within a limit of {LIMIT} descriptors"
    return started, refused


def starts(raw: Raw, exec_id: str) -> bool:
    """Whether a start of `exec_id` is admitted now (False if refused for descriptors)."""
    try:
        raw.call("TaskExecStart", start_request(exec_id, ["true"]))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        return False
    return True


def end(raw: Raw, exec_ids: list[str]) -> None:
    """End these `cat` execs by closing their stdin, and wait for their exits."""
    for exec_id in exec_ids:
        raw.call("TaskExecStdinWrite", stdin(exec_id, eof=True))
    for exec_id in exec_ids:
        raw.call("TaskExecWait", pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id=exec_id))


@contextlib.contextmanager
def full_router(state: pathlib.Path, *extra: str) -> Iterator[tuple[str, Raw, list[str]]]:
    """A router (`extra` its flags) under PRLIMIT filled with `cat` execs until refused: (HOST:PORT,
    a stub on it, the execs)."""
    with router_process(state, *extra, prefix=PRLIMIT) as (_, listen), \
            Raw(int(listen.rsplit(":", 1)[1]), state_token(state)) as raw:
        execs, refused = fill(raw)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        yield listen, raw, execs


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_at_the_limit_execs_are_refused_and_the_rest_goes_on(tmp_path: pathlib.Path, mode: str) -> None:
    state = tmp_path / "state"
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(20):
        (tree / f"f{i}").write_text(f"file {i}\n")
    with full_router(state, "--server-mode", mode) as (listen, raw, execs):
        assert len(execs) >= 10, "so few execs that the test shows nothing"
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", start_request("refused", ["true"]))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(rf"the router is out of file descriptors: \d+ open of limit {LIMIT} \(.*\)",
                            info.value.details() or ""), info.value.details()
        assert retry_after(info.value) > 0
        assert raw.code("TaskExecPoll", poll("refused")) == grpc.StatusCode.NOT_FOUND  # refused: not created

        # grpc accepts new connections from the reserve: without it, accept4 fails with EMFILE
        # and grpc leaves them queued until a descriptor is free, past these calls' deadlines.
        port = int(listen.rsplit(":", 1)[1])
        fresh = [Raw(port, raw.token, own_connection=True) for _ in range(CONNECTIONS)]
        try:
            for other in fresh:
                assert other.code("TaskExecPoll", poll(execs[0]), timeout=5) == grpc.StatusCode.OK
            # A running exec takes stdin and its output is read, on a new connection.
            fresh[0].call("TaskExecStdinWrite", stdin(execs[0], b"hello\n"), timeout=5)
            stream = fresh[1].call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(
                task_id=TASK_ID, exec_id=execs[0], offset=0, file_descriptor=STDOUT), timeout=10)
            assert next(stream).data == b"hello\n"
            stream.cancel()
            # A snapshot opens a file at a time: the reserve holds them too.
            snap = fresh[2].call("TaskSnapshotDirectory", pb.TaskSnapshotDirectoryRequest(
                task_id=TASK_ID, path=bytes(tree)), timeout=30)
            assert snap.image_id.startswith("im-")
            assert not starts(fresh[3], "still-full")
        finally:
            for other in fresh:
                other.channel.close()

        # Ending execs frees their descriptors: starts are admitted again, with no restart.
        ended = execs[1:4]
        end(raw, ended)
        assert eventually(lambda: starts(raw, "after"), timeout=10), "no start admitted after execs ended"
        assert raw.code("TaskExecWait", pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="after")) \
            == grpc.StatusCode.OK

    # What happened at the limit was journaled: a restarted router (without the limit) serves it.
    with router_process(state) as (_, listen), RouterClient(listen, state_token(state), TASK_ID, retries=0) as client:
        assert b"".join(client.read(execs[0])) == b"hello\n"
        assert client.poll(execs[0]).signal == signal.SIGKILL  # killed when its router stopped
        assert [exit_code(client.poll(exec_id)) for exec_id in [*ended, "after"]] == [0, 0, 0, 0]


@pytest.mark.timeout(90)
@pytest.mark.skipif(importlib.util.find_spec("modal") is None, reason="Modal's client is part of the test extra")
def test_modal_client_gets_through_once_descriptors_are_free(tmp_path: pathlib.Path) -> None:
    """Modal's client retries a start refused with its retry policy, and the start goes through
    once execs end (its debug log shows the refusals it waited out)."""
    state = tmp_path / "state"
    with full_router(state) as (listen, raw, execs):
        with modal_driver(f"http://{listen}", raw.token, TASK_ID, "start", "modal-1", "true",
                          env={**os.environ, "MODAL_LOGLEVEL": "DEBUG"}) as driver:
            assert driver.stderr is not None
            for line in driver.stderr:
                if "RESOURCE_EXHAUSTED" in line:
                    break
            else:
                pytest.fail("Modal's client never saw a refusal")
            assert raw.code("TaskExecPoll", poll("modal-1")) == grpc.StatusCode.NOT_FOUND
            end(raw, execs[:3])
            assert driver_result(driver, 30) == {"started": "modal-1"}
        assert raw.code("TaskExecWait", pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="modal-1")) \
            == grpc.StatusCode.OK


# Counts before, with 100 descriptors more, and after, in a process of its own: this one's grpc
# threads open and close descriptors of their own at any time.
COUNTING = """
import json, os
from router.engine.descriptors import listed_descriptors, open_descriptors
counts = [(open_descriptors(), listed_descriptors())]
pipes = [os.pipe() for _ in range(50)]
counts.append((open_descriptors(), listed_descriptors()))
for r, w in pipes:
    os.close(r)
    os.close(w)
counts.append((open_descriptors(), listed_descriptors()))
print(json.dumps(counts))
"""


def test_the_count_of_open_descriptors_follows_the_process() -> None:
    """Both ways of counting (a stat; a listing, for kernels before 6.2) agree and see descriptors
    come and go."""
    done = subprocess.run([sys.executable, "-c", COUNTING], capture_output=True, text=True, timeout=30, check=True)
    before, during, after = json.loads(done.stdout)
    assert before[0] == before[1] and during == [before[0] + 100] * 2 and after == before
