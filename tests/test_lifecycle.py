"""Process lifecycle at the edges: leaders that leave their group, background jobs, terminals,
failing logs, descriptor exhaustion, shutdown with calls in flight, huge offsets and deadlines."""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import resource
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, RouterClient, exit_code
from router.server.grpc_server import RouterServer
from tests.helpers.execs import PIPES, py, start_request
from tests.helpers.grpc_raw import Raw
from tests.helpers.polling import eventually
from tests.helpers.processes import alive
from tests.helpers.servers import TASK_ID, make_server, serving, state_token

OK = grpc.StatusCode.OK
U64_MAX = 2**64 - 1


def _parent(pid: int) -> int:
    """The parent of `pid`, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return 0


def _kill(pid: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def _first_line(client: RouterClient, exec_id: str) -> bytes:
    buf = b""
    for data in client.read(exec_id):
        buf += data
        if b"\n" in buf:
            return buf.split(b"\n", 1)[0]
    return buf


@contextlib.contextmanager
def descriptors_exhausted(free: int = 0) -> Iterator[None]:
    """This process at its descriptor limit, with `free` descriptors left, for the block's length."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 64, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        for _ in range(free):
            os.close(fillers.pop())
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# A leader that leaves its own process group: it forks a helper into a new group and joins it, so
# killpg(leader pid) no longer reaches it (ESRCH). Prints "<leader pid> <helper group>".
LEAVE_GROUP = (
    "import os, time\n"
    "r = os.fork()\n"
    "if r == 0:\n"
    "    time.sleep(30); os._exit(0)\n"
    "os.setpgid(r, r)\n"
    "os.setpgid(0, r)\n"
    "print(os.getpid(), r, flush=True)\n"
    "time.sleep(30)\n"
)


# -- kills, timeouts, terminals, failing logs ------------------------------------------------------------

def test_start_without_a_deadline_is_ok(raw: Raw, client: RouterClient) -> None:
    """Modal's client sends TaskExecStart with no deadline (grpcio then reports ~1e19 s remaining).
    """
    assert raw.code("TaskExecStart", start_request("nodeadline", ["true"]), timeout=None) == OK
    assert exit_code(client.wait("nodeadline")) == 0

def test_timeout_kills_a_leader_that_left_its_process_group(client: RouterClient, raw: Raw) -> None:
    """The timeout signals the leader through its pidfd as well as its group, so leaving the group does not escape it.
    """
    client.start("escape", py(LEAVE_GROUP), **PIPES, timeout_secs=1)
    leader, group = map(int, _first_line(client, "escape").split())
    try:
        wait = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="escape")
        try:
            response = raw.call("TaskExecWait", wait, timeout=3.0)
        except grpc.RpcError as e:
            pytest.fail(f"timeout_secs=1 did not end the exec within 3 s: {e.code()}")
        assert response.signal == signal.SIGKILL
    finally:
        _kill(group, group=True)
        _kill(leader)


def test_stop_kills_a_leader_outside_its_group(tmp_path: pathlib.Path) -> None:
    """Stopping the server kills and reaps a leader that left its process group, promptly."""
    server, key = make_server(tmp_path)
    with RouterClient(f"127.0.0.1:{server.port}", auth.mint_token(key, TASK_ID), TASK_ID, retries=0) as c:
        c.start("escape", py(LEAVE_GROUP), **PIPES)
        leader, group = map(int, _first_line(c, "escape").split())
    stopper = threading.Thread(target=server.stop, args=(0.2,))
    started = time.monotonic()
    stopper.start()
    try:
        stopper.join(8.0)
        assert not stopper.is_alive(), "server.stop() did not return"
        assert time.monotonic() - started < 5
        assert eventually(lambda: not alive(leader), 3.0), "stop() left the exec's leader running"
    finally:
        _kill(group, group=True)
        _kill(leader)
        stopper.join(10.0)


def test_timeout_still_kills_the_group_after_the_leader_exits(client: RouterClient, raw: Raw) -> None:
    """A background process holding stdout after the leader exited is killed at the deadline, so the stream completes.
    """
    client.start("bg", ["sh", "-c", "sleep 30 & echo $!"], **PIPES, timeout_secs=1)
    sleeper = int(_first_line(client, "bg"))
    try:
        assert exit_code(client.wait("bg")) == 0
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="bg", offset=0)
        code = raw.code("TaskExecStdioRead", read, timeout=3.0)
        assert code == OK, f"stdout of an exec with timeout_secs=1 still open after 3 s: {code}"
        assert not alive(sleeper)
    finally:
        _kill(sleeper)


def test_stop_kills_background_processes_of_exited_execs(tmp_path: pathlib.Path) -> None:
    """Processes an exec left in its group (output closed, leader gone) do not outlive the router's shutdown.
    """
    with serving(tmp_path) as (server, client, _):
        client.start("bg", ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], **PIPES)
        sleeper = int(_first_line(client, "bg"))
        assert exit_code(client.wait("bg")) == 0
        server.stop(0.2)
    try:
        assert eventually(lambda: not alive(sleeper), 2.0), "a process of the exec's group outlived server.stop()"
    finally:
        _kill(sleeper)


def test_pty_eof_after_a_partial_line_ends_input(client: RouterClient, raw: Raw) -> None:
    """In canonical mode one EOF character after "abc" only pushes the partial line; eof sends two.
    """
    client.start("ptycat", ["cat"], **PIPES, pty_info={"enabled": True}, timeout_secs=10)
    client.write_stdin("ptycat", 0, b"abc", eof=True)
    wait = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="ptycat")
    try:
        response = raw.call("TaskExecWait", wait, timeout=3.0)
    except grpc.RpcError as e:
        pytest.fail(f"eof on a pty after a partial line did not end cat's input: {e.code()}")
    assert exit_code(response) == 0


def _drain_failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.name == "router.engine.output" and r.getMessage().startswith("writing output failed")
               for r in caplog.records)


def test_output_survives_a_log_that_cannot_be_written(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the log cannot take output (EISDIR here, standing in for EMFILE / ENOSPC / EIO), the bytes the
    drain took are kept and reading pauses; once the log works again the stream is whole and the child unharmed.
    """
    with serving(tmp_path) as (server, client, raw):
        arena = tmp_path / "state" / "logs" / "arena-00000000"
        assert not arena.exists()
        arena.mkdir()  # creating the first arena file now fails (EISDIR)
        client.start("lossy", ["sh", "-c", "echo hello; sleep 0.3; echo world"], **PIPES)
        assert exit_code(client.wait("lossy", call_timeout=5)) == 0, "the child was harmed by the log's failure"
        assert eventually(lambda: _drain_failures(caplog) >= 2), "the drain neither failed nor retried"
        arena.rmdir()  # the log works again
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="lossy", offset=0)
        assert b"".join(m.data for m in raw.call("TaskExecStdioRead", read, timeout=5)) == b"hello\nworld\n"


def test_pty_timeout_kills_background_jobs_of_an_interactive_shell(client: RouterClient, raw: Raw) -> None:
    """An interactive shell puts each job in its own process group: a terminal exec's timeout kills its whole session.
    """
    client.start("ish", ["bash", "--norc", "--noprofile", "-i", "-c", "sleep 30 & echo pid=$!; wait"],
                 **PIPES, pty_info={"enabled": True}, timeout_secs=1)
    out = b""
    for data in client.read("ish"):
        out += data
        if b"\n" in out.partition(b"pid=")[2]:
            break
    sleeper = int(out.partition(b"pid=")[2].split()[0])
    try:
        assert client.wait("ish", call_timeout=5).signal == signal.SIGKILL
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="ish", offset=0)
        code = raw.code("TaskExecStdioRead", read, timeout=2.0)
        assert code == OK and not alive(sleeper), \
            f"background job survived the exec's timeout (stdout read: {code})"
    finally:
        _kill(sleeper)


def test_orphans_are_reaped_when_the_router_is_a_subreaper(tmp_path: pathlib.Path) -> None:
    """As PID 1 of a container (or a child subreaper) the router inherits every orphaned grandchild
    of an exec, and reaps it; an exec's own leader is still its to reap."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    orphan = 0
    try:
        with serving(tmp_path, reap_orphans=True) as (server, client, _):
            client.start("orph", ["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"], **PIPES)
            orphan = int(_first_line(client, "orph"))
            assert exit_code(client.wait("orph")) == 0
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.exists(f"/proc/{orphan}"), "orphaned grandchild left as a zombie of the router"
            client.start("after", ["sh", "-c", "exit 3"], **PIPES)
            assert exit_code(client.wait("after")) == 3  # its own children are still the engine's
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        if orphan and os.path.exists(f"/proc/{orphan}"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(orphan, 0)


def test_serve_reaps_orphans_as_their_subreaper(tmp_path: pathlib.Path) -> None:
    """`router serve` (the keeper) is the subreaper of every exec: orphans come to it and it reaps them."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--listen", "127.0.0.1:0", "--state-dir",
                             str(tmp_path), "--task-id", TASK_ID], stdout=subprocess.PIPE, text=True)
    orphan = 0
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        port = int(lines[0].split()[-1].rsplit(":", 1)[1])
        with RouterClient(f"127.0.0.1:{port}", state_token(tmp_path),
                          TASK_ID) as client:
            # The background job outlives its shell: an orphan, re-parented to the router, which must reap it.
            client.start("orph", ["sh", "-c", "sleep 1.5 >/dev/null 2>&1 & echo $!"], **PIPES)
            orphan = int(_first_line(client, "orph"))
            assert exit_code(client.wait("orph")) == 0
            assert eventually(lambda: _parent(orphan) == proc.pid), "the orphan was not re-parented to the router"
            assert eventually(lambda: not os.path.exists(f"/proc/{orphan}")), \
                f"orphan {orphan} left as a zombie of the router"
    finally:
        if orphan and alive(orphan):
            _kill(orphan)
        proc.terminate()
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_emfile_while_draining_loses_nothing(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """A momentary EMFILE while draining (the first output must create the first arena file) pauses
    reading; no output is lost."""
    with serving(tmp_path) as (server, client, raw):
        client.start("fd", ["sh", "-c", "sleep 0.4; echo one; sleep 0.6; echo two"], **PIPES)
        with descriptors_exhausted():
            # "one" arrives while no descriptor is free.
            assert eventually(lambda: _drain_failures(caplog) >= 1), "the drain never met EMFILE"
        status = client.wait("fd", call_timeout=5)
        out = b"".join(client.read("fd"))
        assert (out, exit_code(status)) == (b"one\ntwo\n", 0)


# -- checked and found correct ------------------------------------------------------------------------

def test_pty_eof_after_a_full_line_ends_input(client: RouterClient) -> None:
    client.start("ptycat2", ["cat"], **PIPES, pty_info={"enabled": True}, timeout_secs=10)
    client.write_stdin("ptycat2", 0, b"abc\n", eof=True)
    assert exit_code(client.wait("ptycat2", call_timeout=5)) == 0


@pytest.mark.parametrize("free_fds", [1, 3, 5])
def test_spawn_emfile_is_throttled_and_leaks_nothing(tmp_path: pathlib.Path, free_fds: int) -> None:
    """EMFILE at each descriptor the spawn needs (stdin pipe, stdout pipe, stderr pipe) is
    RESOURCE_EXHAUSTED with a retry policy, creates no exec, and closes every descriptor it opened.
    (Admission counted the descriptors at the start before, far from the limit, and trusts that
    count for a second: so this start meets EMFILE in the spawn, as when something else takes the
    reserve between two counts.)"""
    with serving(tmp_path) as (server, client, raw):
        poll = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="emfile")
        assert raw.code("TaskExecPoll", poll) == grpc.StatusCode.NOT_FOUND  # connection is up
        client.start("before", ["true"])
        assert eventually(lambda: server.engine.get("before").cause is not None)  # its descriptors closed
        with descriptors_exhausted(free_fds), pytest.raises(grpc.RpcError) as refused:
            raw.call("TaskExecStart", start_request("emfile", ["true"]))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cannot start process" in (refused.value.details() or "")
        assert raw.code("TaskExecPoll", poll) == grpc.StatusCode.NOT_FOUND
        assert server.engine.running_count == 0
        assert raw.code("TaskExecStart", start_request("emfile", ["true"])) == OK
        assert exit_code(client.wait("emfile")) == 0


def test_leftover_segments_of_a_crashed_router_never_show_through(tmp_path: pathlib.Path) -> None:
    """A router that died without stop() leaves state/logs/* behind (engine.start() never clears it and
    the counter restarts at 0). Segments are reopened without O_TRUNC, but readers stop at `committed`,
    so the stale tail never shows. (The files are never removed, though: a disk leak per crash.)"""
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "0.stdout-00000000").write_bytes(b"STALE" * 1000)
    (logs / "0.stdout").mkdir()  # an older layout: each stream's segments in a directory of their own
    with serving(tmp_path) as (_, client, raw):
        assert raw.code("TaskExecStart", start_request("after-crash", ["printf", "hi"])) == OK
        assert exit_code(client.wait("after-crash")) == 0
        assert b"".join(client.read("after-crash")) == b"hi"

def test_uint64_offsets_are_out_of_range_not_internal(client: RouterClient, raw: Raw) -> None:
    client.start("o", ["printf", "abc"], **PIPES)
    assert exit_code(client.wait("o")) == 0
    for fd in (STDOUT, STDERR):
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="o", offset=U64_MAX, file_descriptor=fd)
        assert raw.code("TaskExecStdioRead", read) == grpc.StatusCode.OUT_OF_RANGE
    write = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="o", offset=U64_MAX, data=b"x", eof=True)
    assert raw.code("TaskExecStdinWrite", write) == grpc.StatusCode.OUT_OF_RANGE
    # A huge offset on a running stream just waits (until the caller's deadline).
    client.start("r", ["sleep", "10"], **PIPES, timeout_secs=5)
    read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="r", offset=U64_MAX)
    assert raw.code("TaskExecStdioRead", read, timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_largest_timeout_secs_is_accepted(client: RouterClient) -> None:
    client.start("t", ["sh", "-c", "echo hi"], **PIPES, timeout_secs=2**32 - 1)
    assert b"".join(client.read("t")) == b"hi\n"
    assert exit_code(client.wait("t")) == 0


def _waiters(server: RouterServer, exec_id: str) -> int:
    """Threads (threads mode) and coroutines (aio mode) waiting on the exec right now."""
    return server.engine.get(exec_id).waiters


def test_cancelled_waits_and_reads_leave_no_waiters(client: RouterClient, raw: Raw, server: RouterServer) -> None:
    client.start("w", ["sleep", "10"], **PIPES, timeout_secs=8)
    wait = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="w")
    read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="w")
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(lambda i: raw.code("TaskExecWait" if i % 2 else "TaskExecStdioRead",
                                                  wait if i % 2 else read, timeout=0.5), range(200)))
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    # The done-callback wakes every handler well before the 5 s recheck.
    deadline = time.monotonic() + 1.5
    while _waiters(server, "w") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _waiters(server, "w") == 0


def test_stop_with_blocked_readers_waiters_and_writers_is_prompt(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, stdin_buffer_limit=64 * 1024) as (server, client, raw):
        client.start("b", ["sleep", "30"], **PIPES)
        chunk = b"x" * (1024 * 1024)
        raw.call("TaskExecStdinWrite", pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="b", data=chunk))
        calls = [
            raw.stub.TaskExecWait.future(pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="b"), metadata=raw.metadata),
            raw.stub.TaskExecStdinWrite.future(pb.TaskExecStdinWriteRequest(
                task_id=TASK_ID, exec_id="b", offset=len(chunk), data=chunk), metadata=raw.metadata),
        ]
        reader = raw.stub.TaskExecStdioRead(pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="b"),
                                            metadata=raw.metadata)
        assert eventually(lambda: _waiters(server, "b") == 3), "the calls never blocked"
        started = time.monotonic()
        server.stop(0.2)
        assert time.monotonic() - started < 3
        for call in calls:
            assert call.exception(2).code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
        with pytest.raises(grpc.RpcError):
            list(reader)


def test_concurrent_different_starts_for_one_id_run_exactly_one(raw: Raw, client: RouterClient,
                                                                tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "runs"
    variants = [start_request("same", ["sh", "-c", f"echo {i} >> {marker}"]) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: (i % 4, raw.code("TaskExecStart", variants[i % 4])), range(32)))
    winners = {v for v, c in codes if c == OK}
    assert len(winners) == 1
    assert {c for v, c in codes if v not in winners} == {grpc.StatusCode.ALREADY_EXISTS}
    assert exit_code(client.wait("same")) == 0
    assert marker.read_text() == f"{winners.pop()}\n"


def test_stdin_writes_racing_exit_are_all_accepted(client: RouterClient, raw: Raw) -> None:
    client.start("h", ["head", "-c", "100000"], stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_DEVNULL,
                 stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE)
    chunk = b"y" * 65536
    offset = 0
    for _ in range(64):
        request = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="h", offset=offset, data=chunk)
        assert raw.code("TaskExecStdinWrite", request) == OK
        offset += len(chunk)
    assert raw.code("TaskExecStdinWrite", pb.TaskExecStdinWriteRequest(
        task_id=TASK_ID, exec_id="h", offset=offset, eof=True)) == OK
    assert exit_code(client.wait("h")) == 0


def test_child_that_closes_stdout_early_keeps_running(client: RouterClient) -> None:
    client.start("c", ["sh", "-c", "echo early; exec 1>&-; read x; echo late >&2"], **PIPES)
    assert b"".join(client.read("c")) == b"early\n"  # complete while the exec still runs
    assert exit_code(client.poll("c")) is None
    client.write_stdin("c", 0, b"go\n")
    assert b"".join(client.read("c", STDERR)) == b"late\n"
    assert exit_code(client.wait("c")) == 0


def test_timeout_after_exit_changes_nothing(client: RouterClient) -> None:
    client.start("q", ["true"], **PIPES, timeout_secs=1)
    assert exit_code(client.wait("q")) == 0
    time.sleep(1.3)
    assert exit_code(client.poll("q")) == 0


def test_pty_output_after_exit_is_drained_to_eio(client: RouterClient) -> None:
    client.start("p", py("import sys; sys.stdout.write('z' * 200000)"), **PIPES,
                 pty_info={"enabled": True})
    assert exit_code(client.wait("p")) == 0
    assert b"".join(client.read("p")) == b"z" * 200000


def test_a_cancelled_start_leaves_the_exec_usable(raw: Raw) -> None:
    """A TaskExecStart that ends early (deadline, client gone) cannot cancel the spawn it waits for:
    its retries and the exec's other calls still work."""
    request = start_request("cancelled", ["sh", "-c", "echo ok"])
    raw.code("TaskExecStart", request, timeout=0.0001)  # may or may not get through in time
    assert raw.code("TaskExecStart", request) == OK
    # Before its spawn has run too: nothing can cancel the future a start waits on.
    from router.engine.execs import Exec
    from router.engine.records import ExecSpec
    unspawned = Exec("x", b"", ExecSpec(args=["true"], env={}), None, None, 1024)
    assert not unspawned.started.cancel()
    wait = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="cancelled")
    assert raw.call("TaskExecWait", wait).code == 0
