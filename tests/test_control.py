"""The router's own ExecControl service: signal, kill, resize, list, inspect, batch start, watch."""
from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from router._proto import api_pb2
from router._proto import exec_control_pb2 as ec
from router._proto import exec_control_pb2_grpc as ec_grpc
from router._proto import task_command_router_pb2 as pb
from router.client import CHANNEL_OPTIONS, RouterClient
from router.server import control as control_module
from tests.helpers.execs import PIPES
from tests.helpers.grpc_raw import bearer
from tests.helpers.polling import eventually
from tests.helpers.processes import alive
from tests.helpers.protos import as_enum
from tests.helpers.servers import TASK_ID, router_process, serving, state_token


class Control:
    """The ExecControl stub with auth metadata: control.Kill(request) and so on. Closes its channel
    at the end of a `with` block."""

    def __init__(self, port_or_target: int | str, token: str) -> None:
        target = port_or_target if isinstance(port_or_target, str) else f"127.0.0.1:{port_or_target}"
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = ec_grpc.ExecControlStub(self.channel)
        self.md = bearer(token)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)
        return lambda request, timeout=30: method(request, timeout=timeout, metadata=self.md)

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()


@pytest.fixture(params=["aio", "threads"])
def both(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[RouterClient, Control]]:
    """A client and a Control on a server in each mode."""
    with serving(tmp_path, server_mode=request.param) as (server, client, raw), \
            Control(server.port, raw.token) as control:
        yield client, control


@pytest.fixture
def client_and_control(tmp_path: pathlib.Path) -> Iterator[tuple[RouterClient, Control]]:
    """A client and a Control on a server of the default configuration."""
    with serving(tmp_path) as (server, client, raw), Control(server.port, raw.token) as control:
        yield client, control


def first_line(client: RouterClient, exec_id: str) -> str:
    out = b""
    for data in client.read(exec_id):
        out += data
        if b"\n" in out:
            break
    return out.split(b"\n")[0].decode().strip()


def test_kill_reaches_grandchildren_and_answers_once_gone(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    client.start("tree", ["sh", "-c", "sleep 300 & sleep 300 & echo $!; wait"], **PIPES)
    grandchild = int(first_line(client, "tree"))
    assert alive(grandchild)
    done = control.Kill(ec.KillRequest(task_id=TASK_ID, exec_id="tree"))
    assert done.exit.signal == signal.SIGKILL and done.exit.cause == ec.EXIT_CAUSE_KILLED
    assert eventually(lambda: not alive(grandchild)), "a grandchild survived Kill"
    # TERM first, with a grace: a program that exits on TERM ends by itself.
    client.start("polite", ["sh", "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.1; done"], **PIPES)
    assert first_line(client, "polite") == "ready"
    done = control.Kill(ec.KillRequest(task_id=TASK_ID, exec_id="polite", grace_secs=5))
    assert done.exit.code == 7 and done.exit.cause == ec.EXIT_CAUSE_EXITED
    assert control.Kill(ec.KillRequest(task_id=TASK_ID, exec_id="polite")).exit.code == 7  # gone already: OK


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_kill_answers_without_a_journal(tmp_path: pathlib.Path, mode: str) -> None:
    """Without a journal nothing else wakes the exec after its output ends: Kill must still answer."""
    with serving(tmp_path, server_mode=mode, journal=False) as (server, client, raw), \
            Control(server.port, raw.token) as control:
        client.start("s", ["sleep", "60"], **PIPES)
        client.poll("s")
        done = control.Kill(ec.KillRequest(task_id=TASK_ID, exec_id="s"), timeout=3)
        assert done.exit.cause == ec.EXIT_CAUSE_KILLED


def test_signal_targets_and_refusals(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    client.start("trap", ["sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo ready; while :; do sleep 0.1; done"],
                 **PIPES)
    assert first_line(client, "trap") == "ready"
    control.Signal(ec.SignalRequest(task_id=TASK_ID, exec_id="trap", signal=signal.SIGUSR1,
                                    target=ec.SIGNAL_TARGET_LEADER))
    assert b"got-usr1" in b"".join(client.read("trap"))
    codes = {}
    for name, request in {
        "ended": ec.SignalRequest(task_id=TASK_ID, exec_id="trap", signal=signal.SIGTERM),
        "no signal": ec.SignalRequest(task_id=TASK_ID, exec_id="trap", signal=0),
        "huge signal": ec.SignalRequest(task_id=TASK_ID, exec_id="trap", signal=4096),
        "bad target": ec.SignalRequest(task_id=TASK_ID, exec_id="trap", signal=1, target=as_enum(ec.SignalTarget, 9)),
        "unknown exec": ec.SignalRequest(task_id=TASK_ID, exec_id="nope", signal=1),
        "other task": ec.SignalRequest(task_id="ta-other", exec_id="trap", signal=1),
    }.items():
        try:
            control.Signal(request)
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            codes[name] = e.code()
    client.wait("trap")
    assert codes == {"ended": grpc.StatusCode.FAILED_PRECONDITION, "no signal": grpc.StatusCode.INVALID_ARGUMENT,
                     "huge signal": grpc.StatusCode.INVALID_ARGUMENT, "bad target": grpc.StatusCode.INVALID_ARGUMENT,
                     "unknown exec": grpc.StatusCode.NOT_FOUND, "other task": grpc.StatusCode.NOT_FOUND}


def test_exit_cause_of_each_kind_and_usage(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    burn = "import resource\nx = bytearray(64 << 20)\nt = 0\nfor i in range(3 * 10**6): t += i\n"
    cases = {
        "exits": (["sh", "-c", "exit 3"], {}, ec.EXIT_CAUSE_EXITED),
        "signalled": (["sh", "-c", "kill -SEGV $$"], {}, ec.EXIT_CAUSE_SIGNALLED),
        "times out": (["sleep", "30"], {"timeout_secs": 1}, ec.EXIT_CAUSE_TIMED_OUT),
        "missing": (["no-such-command-here"], {}, ec.EXIT_CAUSE_FAILED_TO_START),
        "burns": ([sys.executable, "-c", burn], {}, ec.EXIT_CAUSE_EXITED),
    }
    for exec_id, (args, fields, _) in cases.items():
        client.start(exec_id, args, **PIPES, **fields)

    def has_cause(exec_id: str, cause: int) -> bool:
        return control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id=exec_id)).exit.cause == cause

    for exec_id, (_, _, cause) in cases.items():
        client.wait(exec_id)
        assert eventually(functools.partial(has_cause, exec_id, cause)), exec_id
    info = control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id="burns"))
    assert info.args[0] == sys.executable and not info.running and info.ended_at >= info.started_at > 0
    assert info.usage.user_cpu_secs > 0.05 and info.usage.max_rss_bytes > 64 << 20, info.usage
    assert control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id="exits")).exit.code == 3
    assert control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id="signalled")).exit.signal == signal.SIGSEGV


def _memory_cgroup() -> pathlib.Path | None:
    """This process's memory cgroup (v1 or v2), if a child with a limit can be made in it."""
    if os.geteuid() != 0 or not os.access("/dev/kmsg", os.R_OK):
        return None
    for line in pathlib.Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = pathlib.Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if (base / "memory.limit_in_bytes").exists() else None
    own = pathlib.Path("/proc/self/cgroup").read_text().split("::", 1)[-1].strip().lstrip("/")
    unified = pathlib.Path("/sys/fs/cgroup") / own
    return unified if "memory" in (unified / "cgroup.subtree_control").read_text(errors="replace") else None


@contextlib.contextmanager
def _limited_cgroup(limit: int) -> Iterator[pathlib.Path]:
    base = _memory_cgroup()
    if base is None:
        pytest.skip("needs root, /dev/kmsg and a memory cgroup to make an OOM kill happen")
    group = base / f"router-test-oom-{os.getpid()}"
    group.mkdir()
    try:
        limit_file = group / ("memory.limit_in_bytes" if (group / "memory.limit_in_bytes").exists() else "memory.max")
        limit_file.write_text(str(limit))
        yield group
    finally:
        assert eventually(lambda: not (group / "cgroup.procs").read_text().strip())
        group.rmdir()


def test_an_exec_killed_for_memory_says_so(tmp_path: pathlib.Path) -> None:
    with _limited_cgroup(64 << 20) as group, serving(tmp_path) as (server, client, raw):
        # The leader moves itself into the limited group, then becomes a program that needs too much.
        hog = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -c 'x = bytearray(400 << 20)'"
        client.start("hog", ["sh", "-c", hog], **PIPES)
        client.start("shot", ["sleep", "30"], **PIPES)
        os.kill(client.inspect("shot").pid, signal.SIGKILL)  # SIGKILL too, but not the OOM killer's
        assert client.wait("hog").signal == signal.SIGKILL
        client.wait("shot")
        # The cause is known once the exec has finished (its output ended too), a moment after Wait answers.
        def finished(exec_id: str) -> bool:
            return client.inspect(exec_id).exit.cause != ec.EXIT_CAUSE_UNSPECIFIED

        assert eventually(lambda: finished("hog")) and eventually(lambda: finished("shot"))
        assert client.inspect("hog").exit.cause == ec.EXIT_CAUSE_OUT_OF_MEMORY
        assert client.inspect("shot").exit.cause == ec.EXIT_CAUSE_SIGNALLED


def test_list_filters_and_pages(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    for i in range(5):
        client.start(f"done-{i}", ["true"], **PIPES)
        client.wait(f"done-{i}")
    client.start("runs", ["sleep", "30"], **PIPES, timeout_secs=20)
    try:
        running = control.List(ec.ListRequest(task_id=TASK_ID, state=ec.EXEC_STATE_RUNNING))
        assert [e.exec_id for e in running.execs] == ["runs"] and running.next_page_token == ""
        seen, token = [], ""
        while True:
            page = control.List(ec.ListRequest(task_id=TASK_ID, state=ec.EXEC_STATE_EXITED, page_size=2,
                                               page_token=token))
            assert len(page.execs) <= 2
            seen += [e.exec_id for e in page.execs]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"done-{i}" for i in range(5)]
        with pytest.raises(grpc.RpcError) as info:
            control.List(ec.ListRequest(task_id=TASK_ID, page_token="garbage!"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        control.Kill(ec.KillRequest(task_id=TASK_ID, exec_id="runs"))


def test_resize_a_terminal(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    client.start("tty", ["sh", "-c", "echo ready; read x; stty size"], **PIPES, pty_info=api_pb2.PTYInfo(enabled=True))
    assert first_line(client, "tty") == "ready"
    control.Resize(ec.ResizeRequest(task_id=TASK_ID, exec_id="tty", rows=33, cols=101))
    client.write_stdin("tty", 0, b"\n")
    assert b"33 101" in b"".join(client.read("tty"))
    client.start("plain", ["true"], **PIPES)
    client.wait("plain")
    with pytest.raises(grpc.RpcError) as info:
        control.Resize(ec.ResizeRequest(task_id=TASK_ID, exec_id="plain", rows=10, cols=10))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_batch_start_one_bad_item_fails_only_itself(both: tuple[RouterClient, Control]) -> None:
    client, control = both
    items = [pb.TaskExecStartRequest(exec_id="b0", command_args=["echo", "zero"], **PIPES),
             pb.TaskExecStartRequest(exec_id="b1", command_args=[], **PIPES),
             pb.TaskExecStartRequest(exec_id="b2", command_args=["echo", "two"], **PIPES),
             pb.TaskExecStartRequest(exec_id="b3", command_args=["true"], secret_ids=["st-missing"])]
    results = control.BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=items)).results
    assert [(r.exec_id, r.code) for r in results] == [("b0", 0), ("b1", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
                                                      ("b2", 0), ("b3", grpc.StatusCode.NOT_FOUND.value[0])]
    assert "command_args" in results[1].message and "st-missing" in results[3].message
    assert b"".join(client.read("b2")) == b"two\n"
    # A repeat is idempotent, item by item, as TaskExecStart is.
    again = control.BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=items[:1])).results
    assert again[0].code == 0
    client.start("b0", ["echo", "zero"], **PIPES)  # the same request through Modal's RPC: no conflict


def test_a_big_batch_fits_in_the_descriptors_its_running_execs_need(tmp_path: pathlib.Path) -> None:
    """Spawns wait in a queue: a batch as large as the open-file limit allows running at once
    (four descriptors each) starts whole, though an exec holds six while it is being spawned."""
    token = state_token(tmp_path)
    with router_process(tmp_path) as (server, listen):
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (4000, 4000))
        items = [pb.TaskExecStartRequest(exec_id=f"big{i}", command_args=["true"], **PIPES) for i in range(700)]
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            results = client.batch_start(items)
            assert [r.message for r in results if r.code != 0] == []
            assert len(list(client.watch([i.exec_id for i in items]))) == 700


def test_watch_sees_each_of_1000_exits_once_across_a_reconnect(tmp_path: pathlib.Path,
                                                             client_and_control: tuple[RouterClient, Control]) -> None:
    """400 execs end at once, 600 only once a line comes down a FIFO each: the first Watch is cut
    after it saw the 400, a second one sees the rest, each exit exactly once."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    client, control = client_and_control
    writer = os.open(fifo, os.O_RDWR)  # held open: a reader that opens late still gets its line
    try:
        ids = [f"w{i}" for i in range(1000)]
        items = [pb.TaskExecStartRequest(exec_id=i, command_args=[
            "sh", "-c", (f"read line < {fifo}; " if n >= 400 else "") + f"echo {i}; exit {n % 7}"], **PIPES)
            for n, i in enumerate(ids)]
        for chunk in range(0, 1000, 250):
            results = control.BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=items[chunk:chunk + 250]),
                                         timeout=120).results
            assert all(r.code == 0 for r in results)
        seen: dict[str, ec.WatchEvent] = {}
        stream = control.stub.Watch(ec.WatchRequest(task_id=TASK_ID, exec_ids=ids, output_limit=64),
                                    timeout=120, metadata=control.md)
        for response in stream:
            for event in response.events:
                assert event.exec_id not in seen, f"{event.exec_id} twice"
                seen[event.exec_id] = event
            if len(seen) == 400:
                stream.cancel()  # the client goes away: reconnect for the rest
                break
        assert set(seen) == set(ids[:400])
        os.write(writer, b"\n" * 600)
        rest = [i for i in ids if i not in seen]
        for response in control.stub.Watch(ec.WatchRequest(task_id=TASK_ID, exec_ids=rest, output_limit=64),
                                           timeout=120, metadata=control.md):
            for event in response.events:
                assert event.exec_id not in seen, f"{event.exec_id} twice"
                seen[event.exec_id] = event
        assert set(seen) == set(ids)  # and the stream ended by itself once all were in
        for n, i in enumerate(ids):
            event = seen[i]
            assert event.exit.code == n % 7 and event.exit.cause == ec.EXIT_CAUSE_EXITED
            assert event.output_included and event.stdout == f"{i}\n".encode()
    finally:
        os.close(writer)


def test_watch_sends_what_is_ready_in_few_messages_of_bounded_size(
        monkeypatch: pytest.MonkeyPatch, client_and_control: tuple[RouterClient, Control]) -> None:
    """Events ready together share a message while they fit in WATCH_MESSAGE_BYTES; one exec's
    output is never split, and a message holds more only when one event alone does."""
    client, control = client_and_control

    def watch(items: list[pb.TaskExecStartRequest], output_limit: int) -> list[ec.WatchResponse]:
        assert all(r.code == 0 for r in control.BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=items)).results)
        for item in items:
            client.wait(item.exec_id)
        return list(control.stub.Watch(ec.WatchRequest(task_id=TASK_ID, exec_ids=[i.exec_id for i in items],
                                                       output_limit=output_limit), timeout=30, metadata=control.md))

    small = [pb.TaskExecStartRequest(exec_id=f"s{i}", command_args=["echo", str(i)], **PIPES) for i in range(50)]
    [response] = watch(small, 64)  # all ended: one message
    assert sorted(e.exec_id for e in response.events) == sorted(i.exec_id for i in small)
    size = 400 * 1024  # two of these fit in WATCH_MESSAGE_BYTES, three do not
    big = [pb.TaskExecStartRequest(exec_id=f"b{i}", command_args=["head", "-c", str(size), "/dev/zero"], **PIPES)
           for i in range(5)]
    responses = watch(big, size)
    assert [len(r.events) for r in responses] == [2, 2, 1]
    assert all(e.output_included and e.stdout == bytes(size) for r in responses for e in r.events)
    assert all(r.ByteSize() <= control_module.WATCH_MESSAGE_BYTES for r in responses)
    huge = [pb.TaskExecStartRequest(exec_id="h", command_args=["head", "-c", str(3 << 20), "/dev/zero"], **PIPES)]
    [response] = watch(huge, 4 << 20)  # more than a message should hold, but never split
    assert response.events[0].output_included and len(response.events[0].stdout) == 3 << 20
    # Events without output count too: with room for about ten, 50 come in five or six messages.
    monkeypatch.setattr(control_module, "WATCH_MESSAGE_BYTES", 10 * (control_module.EVENT_FIELDS_BYTES + 3))
    responses = watch([pb.TaskExecStartRequest(exec_id=f"t{i:02d}", command_args=["true"], **PIPES)
                       for i in range(50)], 0)
    assert 5 <= len(responses) <= 6 and sum(len(r.events) for r in responses) == 50
    assert all(r.ByteSize() <= control_module.WATCH_MESSAGE_BYTES for r in responses)


def test_watch_leaves_out_an_output_too_large_for_a_message(tmp_path: pathlib.Path) -> None:
    """An output_limit past the server's message size counts as that limit less EVENT_FIELDS_ROOM:
    the exit event comes without the output instead of the Watch failing to send it."""
    size = 1024 * 1024
    with serving(tmp_path, max_receive_message_size=size) as (server, client, raw), \
            Control(server.port, raw.token) as control:
        items = [pb.TaskExecStartRequest(exec_id=name, command_args=["head", "-c", str(n), "/dev/zero"], **PIPES)
                 for name, n in (("fits", size - control_module.EVENT_FIELDS_ROOM), ("big", size))]
        assert all(r.code == 0 for r in control.BatchStart(ec.BatchStartRequest(task_id=TASK_ID, items=items)).results)
        for item in items:
            client.wait(item.exec_id)
        events = {e.exec_id: e for r in control.stub.Watch(
            ec.WatchRequest(task_id=TASK_ID, exec_ids=["fits", "big"], output_limit=4 * size),
            timeout=30, metadata=control.md) for e in r.events}
        assert events["fits"].output_included and len(events["fits"].stdout) == size - control_module.EVENT_FIELDS_ROOM
        assert not events["big"].output_included and events["big"].exit.code == 0


@pytest.mark.parametrize("mode", ["aio", "threads"])
def test_a_watch_open_at_shutdown_ends_cleanly(tmp_path: pathlib.Path, mode: str) -> None:
    with serving(tmp_path, server_mode=mode) as (server, client, raw):
        control = Control(server.port, raw.token)
        stream = control.stub.Watch(ec.WatchRequest(task_id=TASK_ID), timeout=30, metadata=control.md)
        client.start("one", ["true"], **PIPES)
        assert [e.exec_id for e in next(stream).events] == ["one"]
    with control, pytest.raises(grpc.RpcError):
        next(stream)  # the server went away under it


def test_watch_all_sees_later_execs(client_and_control: tuple[RouterClient, Control]) -> None:
    client, control = client_and_control
    stream = control.stub.Watch(ec.WatchRequest(task_id=TASK_ID), timeout=30, metadata=control.md)
    client.start("later", ["sh", "-c", "head -c 100 /dev/zero"], **PIPES)
    [event] = next(stream).events
    assert event.exec_id == "later" and not event.output_included  # output_limit 0: never
    stream.cancel()


def test_watch_sends_each_start_before_its_exit_when_asked(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path) as (server, client, raw):
        client.start("done-before", ["true"], **PIPES)
        client.wait("done-before")
        client.start("running", ["sleep", "30"], **PIPES)
        ids = ["done-before", "running", "later", "not-found"]
        events = client.watch(ids, include_started=True)
        got: list[tuple[str, int]] = []
        first = [next(events) for _ in range(3)]  # done-before's start and exit, running's start
        got += [(e.exec_id, e.kind) for e in first]
        client.start("later", ["sh", "-c", "sleep 0.2"], **PIPES)
        client.start("not-found", ["/no/such/program"], **PIPES)
        client.kill("running")
        got += [(e.exec_id, e.kind) for e in events]
        STARTED, EXITED = ec.WATCH_EVENT_KIND_STARTED, ec.WATCH_EVENT_KIND_EXITED
        assert sorted(got) == sorted([("done-before", STARTED), ("done-before", EXITED), ("running", STARTED),
                                      ("running", EXITED), ("later", STARTED), ("later", EXITED),
                                      ("not-found", EXITED)])  # it never ran: no start
        for i in ids:
            kinds = [k for e, k in got if e == i]
            assert kinds[-1] == EXITED and kinds.count(STARTED) <= 1 and kinds.index(EXITED) == len(kinds) - 1
        started = {e.exec_id: e for e in first if e.kind == STARTED}
        assert started["running"].pid > 0 and started["running"].time > 0


def test_lost_and_shutdown_causes_across_restarts(tmp_path: pathlib.Path) -> None:
    token = state_token(tmp_path)
    with router_process(tmp_path) as (server, listen):
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("lost", ["sleep", "60"], **PIPES)
            client.poll("lost")
            time.sleep(0.3)  # journaled
        server.kill()
        server.wait()
    with router_process(tmp_path) as (server, listen), Control(listen, token) as control:
        info = control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id="lost"))
        assert info.exit.cause == ec.EXIT_CAUSE_LOST and info.exit.signal == signal.SIGKILL
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("stopped", ["sleep", "60"], **PIPES)
            client.poll("stopped")
    with router_process(tmp_path) as (server, listen), Control(listen, token) as control:
        assert control.Inspect(ec.InspectRequest(task_id=TASK_ID, exec_id="stopped")).exit.cause \
            == ec.EXIT_CAUSE_SHUTDOWN


def test_reflection_lists_both_services(tmp_path: pathlib.Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with serving(tmp_path) as (server, _, _raw):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=5)
            names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"modal.task_command_router.TaskCommandRouter", "task_command_router.v1.ExecControl"} <= names



def test_cli_ls_inspect_kill_logs(tmp_path: pathlib.Path) -> None:
    import json
    import subprocess

    token = state_token(tmp_path)
    with router_process(tmp_path) as (_, listen):
        def router(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "router.cli", *args, "--target", listen, "--token", token],
                                  capture_output=True, text=True, timeout=60)

        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("talks", ["sh", "-c", "echo out; echo err >&2; exit 4"], **PIPES)
            client.wait("talks")
            client.start("sleeps", ["sleep", "60"], **PIPES)
            client.poll("sleeps")
        ls = router("ls")
        assert ls.returncode == 0, ls.stderr
        assert "talks" in ls.stdout and "exit 4 (exited)" in ls.stdout and "sleeps" in ls.stdout
        assert "talks" not in router("ls", "--state", "running").stdout
        info = json.loads(router("inspect", "talks").stdout)
        assert info["exec_id"] == "talks" and info["exit"]["code"] == 4 and info["stdout_bytes"] == 4
        assert router("logs", "talks").stdout == "out\n"
        assert router("logs", "talks", "--stderr").stdout == "err\n"
        assert router("logs", "talks", "--from", "1").stdout == "ut\n"
        killed = router("kill", "sleeps")  # TERM first: sleep ends there
        assert killed.returncode == 0 and killed.stdout.strip() == "sleeps: signal 15"
        assert "killed" in router("ls", "--state", "exited").stdout
        missing = router("inspect", "nope")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
