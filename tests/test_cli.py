"""`router serve`, `router token` and `router exec` as a user runs them: separate processes."""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import time

from router import auth
from router._proto import task_command_router_pb2 as pb
from router.engine import journal_format
from tests.helpers.execs import start_request
from tests.helpers.grpc_raw import Raw
from tests.helpers.processes import ROUTER
from tests.helpers.processes import run_router as router
from tests.helpers.servers import TASK_ID, router_process, state_token


def test_token_is_alone_on_its_last_line(tmp_path: pathlib.Path) -> None:
    result = router("token", "--state-dir", str(tmp_path), "--task-id", TASK_ID, "--ttl", "60", "--init")
    assert result.returncode == 0
    token = result.stdout.decode().strip().splitlines()[-1]
    key = auth.load_or_create_key(tmp_path)
    assert auth.Authenticator(key, TASK_ID).token_task((("authorization", f"Bearer {token}"),)) == TASK_ID


def test_exec_streams_forwards_stdin_and_exits_with_the_code(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path) as (_, listen):
        result = router("exec", "--state-dir", str(tmp_path), "--",
                        "sh", "-c", "cat; echo to-err >&2; exit 7", input=b"from stdin\n")
        assert result.returncode == 7
        assert result.stdout == b"from stdin\n" and result.stderr == b"to-err\n"
        # Through an explicit target and a token from the environment, as a remote user would.
        token = router("token", "--state-dir", str(tmp_path), "--task-id", TASK_ID).stdout.decode().split()[-1]
        env = {**os.environ, "ROUTER_TOKEN": token}
        timed = subprocess.run([*ROUTER, "exec", "--target", listen, "--timeout", "1", "-n", "--", "sleep", "50"],
                               capture_output=True, timeout=60, env=env)
        assert timed.returncode == 128 + signal.SIGKILL


def test_exec_output_is_byte_exact(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path):
        result = router("exec", "--state-dir", str(tmp_path), "-n", "--", "head", "-c", "3000000", "/dev/urandom")
        assert result.returncode == 0 and len(result.stdout) == 3_000_000


def test_sigterm_stops_cleanly_and_kills_running_execs(tmp_path: pathlib.Path) -> None:
    """With --drain-secs 0, no drain: SIGTERM ends what runs at once (tests/test_drain.py drains)."""
    with router_process(tmp_path, drain_secs=0) as (proc, listen):
        token = state_token(tmp_path)
        with Raw(int(listen.rsplit(":", 1)[1]), token) as raw:
            raw.call("TaskExecStart", start_request("sleeper", ["sh", "-c", "sleep 60 & echo $!; wait"]))
            first = next(iter(raw.call("TaskExecStdioRead", pb.TaskExecStdioReadRequest(
                task_id=TASK_ID, exec_id="sleeper"))))
            grandchild = int(first.data.split()[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{grandchild}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{grandchild}")
        assert not (tmp_path / "server.json").exists()
        # The records stay for the next run: the exec it killed, with its output.
        kept = journal_format.replay(tmp_path / "journal").execs["sleeper"]
        assert kept.exited is not None and kept.exited.status.signal == signal.SIGKILL
        assert kept.outputs["stdout"].committed == len(first.data)


def test_serve_defaults_generate_and_keep_a_task_id(tmp_path: pathlib.Path) -> None:
    proc = subprocess.Popen([*ROUTER, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("get a token with"):
                break
        task_line = next(line for line in lines if line.startswith("task id: "))
        task_id = task_line.split()[-1]
        assert task_id == (tmp_path / "task_id").read_text().strip() and task_id.startswith("ta-")
        assert (tmp_path / "jwt.key").stat().st_mode & 0o777 == 0o600
        result = router("exec", "--state-dir", str(tmp_path), "-n", "--", "echo", "hi")
        assert result.stdout == b"hi\n" and result.returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_unreachable_server_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    result = router("exec", "--state-dir", str(tmp_path), "--target", "127.0.0.1:1", "-n", "--", "true")
    assert result.returncode == 255
    assert result.stderr.startswith(b"router exec: cannot reach the router at 127.0.0.1:1")
    assert b"Traceback" not in result.stderr


def test_log_dir_holds_the_logs_and_keeps_what_else_is_there(tmp_path: pathlib.Path) -> None:
    logs = tmp_path / "logs-elsewhere"
    logs.mkdir()
    (logs / "keep-me").write_text("not the router's")
    (logs / "arena-00000000").write_text("stale, from a crashed run")
    with router_process(tmp_path / "state", "--log-dir", str(logs)) as (_, listen):
        result = router("exec", "--state-dir", str(tmp_path / "state"), "-n", "--", "echo", "logged")
        assert result.stdout == b"logged\n"  # into a slot of the stale arena, whose bytes never show
        assert not (tmp_path / "state" / "logs").exists()
    # Kept for the next run, beside what else lives there.
    assert sorted(p.name for p in logs.iterdir()) == ["arena-00000000", "keep-me"]
    # Without a journal nothing can read old logs: the router removes its own files, nothing else.
    with router_process(tmp_path / "state", "--log-dir", str(logs), "--no-journal"):
        pass
    assert sorted(p.name for p in logs.iterdir()) == ["keep-me"]


def test_exec_gives_up_on_a_router_that_died(tmp_path: pathlib.Path) -> None:
    """`router exec` waiting on a command whose router is killed exits 255 with one line, in time."""
    with router_process(tmp_path) as (server, _):
        client = subprocess.Popen([*ROUTER, "exec", "--state-dir", str(tmp_path), "--give-up", "2", "-n", "--",
                                   "sh", "-c", "echo $$; exec sleep 30"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sleeper = 0
        try:
            assert client.stdout is not None
            sleeper = int(client.stdout.readline())
            server.kill()
            server.wait(10)
            _, err = client.communicate(timeout=40)
            assert client.returncode == 255
            assert err.startswith(b"router exec: cannot reach the router") and err.count(b"\n") == 1, err
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
            if sleeper:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(sleeper, signal.SIGKILL)


def test_one_server_per_state_directory(tmp_path: pathlib.Path) -> None:
    """A second `router serve` on a served directory exits at once, naming the holder; after a
    `kill -9` of the holder the directory is free again at once (the kernel dropped the lock)."""
    with router_process(tmp_path) as (first, listen):
        began = time.monotonic()
        second = router("serve", "--state-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--task-id", TASK_ID,
                        timeout=30)
        assert second.returncode == 1 and time.monotonic() - began < 5
        line = second.stderr.decode().splitlines()[-1]
        assert line == f"router serve: {tmp_path} is served by another router (pid {first.pid}, listening on {listen})"
        assert b"Traceback" not in second.stderr
        assert (tmp_path / "server.json").exists()  # the first one's, left alone
        first.kill()
        first.wait(10)
    with router_process(tmp_path) as (again, _):
        assert again.poll() is None
