"""The five exec RPCs against a real server, real children and a real gRPC channel."""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import random
import signal
import time

import grpc
import pytest

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, RouterClient, exit_code
from tests.helpers.execs import PIPES, py, start_request
from tests.helpers.grpc_raw import Raw, retry_after
from tests.helpers.protos import as_enum
from tests.helpers.servers import TASK_ID, running, serving

OK = grpc.StatusCode.OK


def read_all(client: RouterClient, exec_id: str, fd: pb.TaskExecStdioFileDescriptor = STDOUT, offset: int = 0) -> bytes:
    return b"".join(client.read(exec_id, fd, offset))


def run(client: RouterClient, exec_id: str, args: list[str], **fields: object) -> tuple[bytes, bytes, int | None]:
    client.start(exec_id, args, **PIPES, **fields)
    out, err = read_all(client, exec_id), read_all(client, exec_id, STDERR)
    return out, err, exit_code(client.wait(exec_id))


# -- start -----------------------------------------------------------------------------------------

def test_stdout_and_stderr_kept_apart(client: RouterClient) -> None:
    out, err, code = run(client, "e", ["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"])
    assert (out, err, code) == (b"out\nout2\n", b"err\n", 3)


def test_merged_stderr_keeps_order_and_stderr_stream_is_empty(client: RouterClient, raw: Raw) -> None:
    code = ("import sys\nfor i in range(200):\n"
            "    (sys.stdout if i % 2 else sys.stderr).write(f'{i},'); (sys.stdout if i % 2 else sys.stderr).flush()")
    client.start("m", py(code), stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                 stderr_config=pb.TASK_EXEC_STDERR_CONFIG_STDOUT)
    assert read_all(client, "m") == "".join(f"{i}," for i in range(200)).encode()
    stderr = raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="m",
                                                                     file_descriptor=STDERR))
    assert list(stderr) == []
    assert exit_code(client.wait("m")) == 0


def test_devnull_streams_end_at_once(client: RouterClient) -> None:
    client.start("d", ["sh", "-c", "echo out; echo err >&2"], stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_DEVNULL,
                 stderr_config=pb.TASK_EXEC_STDERR_CONFIG_DEVNULL)
    assert read_all(client, "d") == b"" and read_all(client, "d", STDERR) == b""
    assert exit_code(client.wait("d")) == 0


def test_same_exec_id_runs_once(client: RouterClient, raw: Raw, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "runs"
    request = start_request("once", ["sh", "-c", f"echo run >> {marker}"])
    for _ in range(3):
        raw.call("TaskExecStart", request)
    assert exit_code(client.wait("once")) == 0
    assert marker.read_text() == "run\n"
    different = start_request("once", ["sh", "-c", "echo other"])
    assert raw.code("TaskExecStart", different) == grpc.StatusCode.ALREADY_EXISTS


def test_concurrent_identical_starts_run_once(client: RouterClient, raw: Raw, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "runs"
    request = start_request("race", ["sh", "-c", f"echo run >> {marker}"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: raw.code("TaskExecStart", request), range(16)))
    assert set(codes) == {OK}
    client.wait("race")
    assert marker.read_text() == "run\n"


@pytest.mark.parametrize("field, request_fields", [
    ("command_args", {"command_args": []}),
    ("command_args[0]", {"command_args": [""]}),
    ("command_args[1]", {"command_args": ["echo", "a\0b"]}),
    ("workdir", {"workdir": "relative/dir"}),
    ("timeout_secs", {"timeout_secs": 0}),
    ("stdout_config", {"stdout_config": 7}),
    ("stderr_config", {"stderr_config": 9}),
    ("exec_id", {"exec_id": ""}),
    ("env", {"env": {"A=B": "x"}}),
])
def test_malformed_start_is_invalid_argument(raw: Raw, field: str, request_fields: dict) -> None:
    fields = {"exec_id": "bad", "command_args": ["true"], **request_fields}
    request = pb.TaskExecStartRequest(task_id=TASK_ID, **fields)
    with pytest.raises(grpc.RpcError) as info:
        raw.call("TaskExecStart", request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def test_unknown_secret_and_container_are_not_found(raw: Raw) -> None:
    secret = start_request("s1", ["true"], secret_ids=["st-missing"])
    with pytest.raises(grpc.RpcError) as info:
        raw.call("TaskExecStart", secret)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "st-missing" in info.value.details()
    source = start_request("s2", ["true"], secret_sources=[{"secret_id": "st-other"}])
    assert raw.code("TaskExecStart", source) == grpc.StatusCode.NOT_FOUND
    container = start_request("s3", ["true"], container_id="co-elsewhere")
    assert raw.code("TaskExecStart", container) == grpc.StatusCode.NOT_FOUND
    # None of them created an exec.
    assert raw.code("TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="s1")) == grpc.StatusCode.NOT_FOUND


def test_command_not_found_is_127_with_reason(client: RouterClient) -> None:
    out, err, code = run(client, "nf", ["no-such-command-xyz"])
    assert code == 127 and out == b""
    assert b"no-such-command-xyz" in err and err.count(b"\n") == 1


def test_not_executable_is_126(client: RouterClient, tmp_path: pathlib.Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    out, err, code = run(client, "nx", [str(script)])
    assert code == 126 and out == b"" and str(script).encode() in err


def test_bad_workdir_fails_like_a_shell_and_reason_follows_merge(client: RouterClient) -> None:
    client.start("bw", ["pwd"], stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                 stderr_config=pb.TASK_EXEC_STDERR_CONFIG_STDOUT, workdir="/no/such/dir")
    assert b"/no/such/dir" in read_all(client, "bw")
    assert exit_code(client.wait("bw")) == 127


def test_workdir_honored(client: RouterClient, tmp_path: pathlib.Path) -> None:
    out, _, code = run(client, "wd", ["pwd"], workdir=str(tmp_path))
    assert out.decode().strip() == str(tmp_path) and code == 0


def test_environment_layers_later_wins(client: RouterClient, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [{"env": {"contents": {"B": "source1", "C": "source1"}}}, {"env": {"contents": {"C": "source2"}}}]
    out, _, _ = run(client, "env", py("import os, json; print(json.dumps(dict(os.environ)))"),
                    env={"A": "env", "B": "env"}, secret_sources=sources)
    import json
    env = json.loads(out)
    assert (env["A"], env["B"], env["C"]) == ("env", "source1", "source2")
    assert env["PATH"] == os.environ["PATH"]  # the router's base environment
    assert not [k for k in env if k.startswith("ROUTER_")]


def test_router_credentials_never_reach_the_child(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_TOKEN", "secret-token")
    with running(tmp_path) as (server, key):
        with RouterClient(f"127.0.0.1:{server.port}", auth.mint_token(key, TASK_ID), TASK_ID) as c:
            out, _, _ = run(c, "creds", ["env"])
        assert b"secret-token" not in out and b"ROUTER_TOKEN" not in out


def test_timeout_kills_the_process_group(client: RouterClient) -> None:
    started = time.monotonic()
    client.start("to", ["sh", "-c", "sleep 100 & echo $!; wait"], **PIPES, timeout_secs=1)
    child = int(next(client.read("to")).split()[0])
    response = client.wait("to")
    assert response.WhichOneof("exit_status") == "signal" and response.signal == 9
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}"), "the exec's own child survived its timeout"


def test_timeout_grace_sends_sigterm_first(tmp_path: pathlib.Path) -> None:
    with running(tmp_path, kill_grace_secs=5.0) as (server, key), \
            RouterClient(f"127.0.0.1:{server.port}", auth.mint_token(key, TASK_ID), TASK_ID) as c:
        c.start("g", ["sleep", "100"], **PIPES, timeout_secs=1)
        assert c.wait("g").signal == 15


# -- poll and wait -----------------------------------------------------------------------------------

def test_poll_running_then_exited(client: RouterClient) -> None:
    client.start("p", ["sh", "-c", "read x; exit 5"], **PIPES)
    assert client.poll("p").WhichOneof("exit_status") is None
    client.write_stdin("p", 0, b"go\n")
    client.wait("p")
    assert client.poll("p").code == 5


def test_wait_honors_the_callers_deadline_and_leaves_nothing_behind(client: RouterClient, raw: Raw) -> None:
    client.start("w", ["sleep", "30"], **PIPES, timeout_secs=3)
    request = pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="w")
    started = time.monotonic()
    assert raw.code("TaskExecWait", request, timeout=0.5) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert raw.call("TaskExecWait", request).signal == 9


def test_unknown_exec_is_not_found(raw: Raw) -> None:
    requests = {
        "TaskExecPoll": pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="nope"),
        "TaskExecWait": pb.TaskExecWaitRequest(task_id=TASK_ID, exec_id="nope"),
        "TaskExecStdioRead": pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="nope"),
        "TaskExecStdinWrite": pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="nope", data=b"x"),
    }
    for name, request in requests.items():
        assert raw.code(name, request) == grpc.StatusCode.NOT_FOUND, name


# -- reading -----------------------------------------------------------------------------------------

BIG = 64 * 1024 * 1024
BIG_PROGRAM = (
    "import random, sys\n"
    "r = random.Random(7)\n"
    "for _ in range(64):\n"
    "    sys.stdout.buffer.write(r.randbytes(1 << 20))\n"
)


def _big_expected() -> bytes:
    r = random.Random(7)
    return b"".join(r.randbytes(1 << 20) for _ in range(64))


def test_64_mib_read_back_exact_from_zero_and_mid_stream(client: RouterClient, raw: Raw) -> None:
    expected = _big_expected()
    client.start("big", py(BIG_PROGRAM), **PIPES)
    # Read while it runs, from 0 and from an offset in the middle of a segment and a message.
    mid = 23_456_789
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        whole = pool.submit(read_all, client, "big")
        tail = pool.submit(read_all, client, "big", STDOUT, mid)
        assert hashlib.sha256(whole.result()).digest() == hashlib.sha256(expected).digest()
        assert hashlib.sha256(tail.result()).digest() == hashlib.sha256(expected[mid:]).digest()
    assert exit_code(client.wait("big")) == 0
    # And long after exit: every message non-empty and within the chunk size.
    sizes = [len(m.data) for m in raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(
        task_id=TASK_ID, exec_id="big", offset=BIG - 5_000_000))]
    assert sum(sizes) == 5_000_000 and min(sizes) > 0 and max(sizes) <= 1024 * 1024


def test_offsets_at_and_beyond_the_end(client: RouterClient, raw: Raw) -> None:
    run(client, "o", ["printf", "0123456789"])
    assert read_all(client, "o", STDOUT, 4) == b"456789"
    at_end = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="o", offset=10)
    assert list(raw.call("TaskExecStdioRead", at_end)) == []
    beyond = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="o", offset=11)
    assert raw.code("TaskExecStdioRead", beyond) == grpc.StatusCode.OUT_OF_RANGE
    bad_fd = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="o",
                                         file_descriptor=as_enum(pb.TaskExecStdioFileDescriptor, 5))
    assert raw.code("TaskExecStdioRead", bad_fd) == grpc.StatusCode.INVALID_ARGUMENT


def test_reader_waits_for_output_and_many_readers_are_independent(client: RouterClient) -> None:
    client.start("slow", ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"],
                 **PIPES)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda off: read_all(client, "slow", STDOUT, off), range(8)))
    full = b"".join(f"line{i}\n".encode() for i in range(1, 6))
    assert results == [full[off:] for off in range(8)]
    client.wait("slow")


# -- stdin -------------------------------------------------------------------------------------------

def test_stdin_offsets_retries_and_eof(client: RouterClient, raw: Raw) -> None:
    client.start("cat", ["cat"], **PIPES)
    client.write_stdin("cat", 0, b"hello ")
    client.write_stdin("cat", 0, b"hello ")  # a retried duplicate: nothing new
    client.write_stdin("cat", 3, b"lo world")  # overlaps: only "world" is new
    gap = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="cat", offset=100, data=b"x")
    assert raw.code("TaskExecStdinWrite", gap) == grpc.StatusCode.OUT_OF_RANGE
    client.write_stdin("cat", 11, b"!", eof=True)
    client.write_stdin("cat", 12, b"", eof=True)  # a repeated eof with nothing new is fine
    client.write_stdin("cat", 0, b"hello world!", eof=True)  # a whole retry after eof: nothing new
    late = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="cat", offset=12, data=b"more")
    assert raw.code("TaskExecStdinWrite", late) == grpc.StatusCode.FAILED_PRECONDITION
    assert read_all(client, "cat") == b"hello world!"
    assert exit_code(client.wait("cat")) == 0


def test_stdin_after_exit_is_accepted_and_dropped(client: RouterClient, raw: Raw) -> None:
    run(client, "gone", ["true"])
    client.write_stdin("gone", 0, b"ignored")
    client.write_stdin("gone", 3, b"oredmore")  # a retry's repeat is skipped, the rest is taken
    gap = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="gone", offset=12, data=b"x")
    assert raw.code("TaskExecStdinWrite", gap) == grpc.StatusCode.OUT_OF_RANGE
    client.write_stdin("gone", 11, b"", eof=True)
    client.write_stdin("gone", 5, b"edmo", eof=True)  # nothing new: a retry's repeat
    after_end = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="gone", offset=11, data=b"x")
    assert raw.code("TaskExecStdinWrite", after_end) == grpc.StatusCode.FAILED_PRECONDITION
    info = client.inspect("gone")
    assert info.stdin_bytes == 11 and info.pid > 0 and list(info.args) == ["true"]


def test_stdin_of_16_mib_in_one_write(client: RouterClient) -> None:
    data = random.Random(3).randbytes(16 * 1024 * 1024)
    client.start("sum", ["sha256sum"], **PIPES)
    client.write_stdin("sum", 0, data, eof=True)
    assert read_all(client, "sum").split()[0].decode() == hashlib.sha256(data).hexdigest()
    client.wait("sum")


def test_full_stdin_buffer_waits_until_the_deadline(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, stdin_buffer_limit=1024 * 1024) as (_, _, raw):
        raw.call("TaskExecStart", start_request("full", ["sleep", "30"], timeout_secs=20))
        chunk = b"x" * (1024 * 1024)
        write = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="full", offset=0, data=chunk)
        raw.call("TaskExecStdinWrite", write)  # fills the pipe and the buffer
        more = pb.TaskExecStdinWriteRequest(task_id=TASK_ID, exec_id="full", offset=len(chunk), data=chunk)
        started = time.monotonic()
        assert raw.code("TaskExecStdinWrite", more, timeout=1.0) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.9 < time.monotonic() - started < 5
        # Nothing of the refused write was taken: the next write continues at the same offset.
        assert raw.code("TaskExecStdinWrite", pb.TaskExecStdinWriteRequest(
            task_id=TASK_ID, exec_id="full", offset=2 * len(chunk) + 1, data=b"x")) == grpc.StatusCode.OUT_OF_RANGE


# -- pty ---------------------------------------------------------------------------------------------

def test_pty_runs_on_a_terminal_of_the_given_size(client: RouterClient) -> None:
    pty = {"enabled": True, "winsz_rows": 33, "winsz_cols": 111, "env_term": "xterm-test"}
    client.start("tty", ["sh", "-c", "tty; stty size; echo $TERM; read line; echo got:$line"],
                 **PIPES, pty_info=pty)
    client.write_stdin("tty", 0, b"abc\n")
    out = read_all(client, "tty").replace(b"\r", b"")
    # The terminal echoes the input too, wherever it lands among the output lines.
    lines = out.split(b"\n")
    assert any(line.startswith(b"/dev/pts/") for line in lines)
    assert {b"33 111", b"xterm-test", b"got:abc"} <= set(lines)
    assert exit_code(client.wait("tty")) == 0
    assert read_all(client, "tty", STDERR) == b""


def test_pty_is_the_controlling_terminal(client: RouterClient) -> None:
    out, _, code = run(client, "ctty", py("import os; fd = os.open('/dev/tty', os.O_RDWR); print('ctty ok')"),
                       pty_info={"enabled": True})
    assert b"ctty ok" in out and code == 0


@pytest.mark.parametrize("fields", [{}, {"workdir": "/"}, {"pty_info": {"enabled": True}}],
                         ids=["spawn", "workdir", "pty"])
def test_every_signal_at_its_default_whatever_the_router_ignores(client: RouterClient, fields: dict) -> None:
    """As in a login session: signals the router inherited ignored (SIGINT and SIGQUIT as a script's
    background job, SIGHUP under nohup) are not ignored by an exec, which could not even trap them."""
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGTTOU)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}  # the server runs in this process
    try:
        out, _, code = run(client, "sigs", ["grep", "^Sig[BI]", "/proc/self/status"], **fields)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert code == 0 and out.replace(b"\r", b"").split() == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16]


# -- fan-out -----------------------------------------------------------------------------------------

def test_200_concurrent_execs_every_byte_checked(client: RouterClient) -> None:
    def one(i: int) -> bool:
        exec_id = f"fan-{i}"
        lines = 50 + i
        client.start(exec_id, ["sh", "-c", f"i=0; while [ $i -lt {lines} ]; do echo {exec_id}:$i; i=$((i+1)); done; "
                                           f"echo err-{i} >&2"], **PIPES)
        expected = "".join(f"{exec_id}:{n}\n" for n in range(lines)).encode()
        return (read_all(client, exec_id) == expected and read_all(client, exec_id, STDERR) == f"err-{i}\n".encode()
                and exit_code(client.wait(exec_id)) == 0)

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results), [i for i, ok in enumerate(results) if not ok]


def test_throttled_start_carries_a_retry_policy(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path, max_running_execs=1) as (_, _, raw):
        raw.call("TaskExecStart", start_request("first", ["sleep", "30"], timeout_secs=20))
        with pytest.raises(grpc.RpcError) as info:
            raw.call("TaskExecStart", start_request("second", ["true"]))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after(info.value) > 0
        # Refused means not created: the id is still free.
        assert raw.code("TaskExecPoll", pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="second")) \
            == grpc.StatusCode.NOT_FOUND


def test_the_execs_own_path_finds_its_command(client: RouterClient, tmp_path: pathlib.Path) -> None:
    tool = tmp_path / "my-tool"
    tool.write_text("#!/bin/sh\necho found me\n")
    tool.chmod(0o755)
    out, _, code = run(client, "path", ["my-tool"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert (out, code) == (b"found me\n", 0)


def test_children_start_with_default_signals_and_an_empty_mask(client: RouterClient) -> None:
    out, _, _ = run(client, "sig", ["cat", "/proc/self/status"])
    fields = dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)
    assert int(fields["SigIgn"], 16) & (1 << (13 - 1)) == 0, "SIGPIPE is ignored in the child"
    assert int(fields["SigBlk"], 16) == 0
