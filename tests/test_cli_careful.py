"""The `router` command as a careful user meets it: bad input, dead and frozen routers, closed pipes
and signals. Whatever happens: one line on stderr, a documented exit status, never a traceback."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.client import RouterClient
from tests.helpers.processes import ROUTER, one_line
from tests.helpers.processes import run_router as router
from tests.helpers.servers import TASK_ID, router_process, serving_pid, state_token

DEAD = "127.0.0.1:1"  # nothing listens there: connection refused


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[str], str, pathlib.Path]]:
    with router_process(tmp_path) as (proc, listen):
        yield proc, listen, tmp_path


@pytest.mark.parametrize(("argv", "status"), [
    (["exec", "--timeout", "-1", "--", "true"], 255),
    (["exec", "--no-such-flag", "--", "true"], 255),
    (["exec"], 255),
    (["exec", "--tls-ca", "/nonexistent", "--", "true"], 255),
    (["batch", "--retries", "0"], 255),
    (["batch", "--resume"], 255),
    (["kill", "-s", "FOO", "ex-1"], 2),
    (["logs", "ex-1", "--from", "-1"], 2),
    (["inspect"], 2),
    (["images"], 2),
    (["token", "--ttl", "0"], 2),
    (["token", "--ttl", "-5"], 2),
    (["serve", "--listen", "127.0.0.1"], 2),
    (["serve", "--listen", "127.0.0.1:99999"], 2),
    (["serve", "--max-message-size", "1T"], 2),
    (["serve", "--kill-grace", "-3"], 2),
    (["serve", "--drain-secs", "-1"], 2),
    (["serve", "--retain-secs", "-1"], 2),
    (["serve", "--retain-execs", "0"], 2),
    (["serve", "--max-workers", "8"], 2),
    (["serve", "--tls-client-ca", "/nonexistent"], 2),
    (["serve", "--tls-key", "/nonexistent"], 2),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_input_is_one_line_and_a_documented_status(tmp_path: pathlib.Path, argv: list[str], status: int) -> None:
    state = ["--state-dir", str(tmp_path)] if argv[0] in ("exec", "serve", "kill", "logs", "token") else []
    result = router(*argv[:1], *state, *argv[1:], timeout=30)
    assert result.returncode == status, result.stderr
    assert one_line(result).startswith(f"router {argv[0]}") or result.stderr.startswith(b"router")


def test_serve_refuses_a_file_as_state_directory_and_a_port_in_use(served: tuple) -> None:
    _, listen, state = served
    file = state / "a-file"
    file.write_text("")
    assert "state directory" in one_line(result := router("serve", "--state-dir", str(file)))
    assert result.returncode == 1
    busy = router("serve", "--state-dir", str(state / "other"), "--listen", listen)
    # A server logs as it starts; its error is then the last line.
    assert busy.returncode == 1 and b"Traceback" not in busy.stderr
    assert busy.stderr.decode().splitlines()[-1].startswith(f"router serve: cannot listen on {listen}")


@pytest.mark.parametrize(("flags", "ended_by"), [([], signal.SIGPIPE), (["-tt"], signal.SIGHUP)],
                         ids=["pipes", "terminal"])
def test_exec_into_a_closed_pipe_exits_141_and_ends_the_remote_command(served: tuple, flags: list[str],
                                                                        ended_by: int) -> None:
    """Without a terminal the command gets SIGPIPE, as it would locally; a terminal is hung up."""
    _, listen, state = served
    proc = subprocess.Popen([*ROUTER, "exec", "--state-dir", str(state), *flags, "-n", "--", "yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(4) in (b"y\ny\n", b"y\r\ny")  # a terminal writes \r\n
    proc.stdout.close()  # `| head -2`
    assert proc.wait(20) == 128 + signal.SIGPIPE
    assert proc.stderr.read() == b""
    proc.stderr.close()
    with RouterClient(listen, state_token(state), TASK_ID, retries=0) as client:
        deadline = time.monotonic() + 10
        while any(info.running for info in client.execs()):
            assert time.monotonic() < deadline, "the remote yes runs on"
            time.sleep(0.1)
        (info,) = list(client.execs())
        assert info.exit.signal == ended_by


def test_logs_into_a_closed_pipe_exits_quietly(served: tuple) -> None:
    _, _, state = served
    done = router("exec", "--state-dir", str(state), "-n", "--", "sh", "-c", "seq 1 200000")
    assert done.returncode == 0
    ids = router("ls", "--state-dir", str(state)).stdout.decode().split()
    exec_id = ids[ids.index("COMMAND") + 1]
    proc = subprocess.Popen([*ROUTER, "logs", "--state-dir", str(state), exec_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(2) == b"1\n"
    proc.stdout.close()
    assert proc.wait(20) == 128 + signal.SIGPIPE
    assert proc.stderr.read() == b""
    proc.stderr.close()


def _started(state: pathlib.Path, script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*ROUTER, "exec", "--state-dir", str(state), "-n", "--", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_signals_reach_the_remote_group_and_a_second_sigint_kills(served: tuple) -> None:
    _, _, state = served
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        proc = _started(state, f'trap "echo got-{sig.name}; exit 7" {sig.name[3:]}; echo ready; '
                               "while :; do sleep 0.1; done")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        # (The remote shell may report its `sleep` killed by the same signal: "Terminated".)
        assert proc.returncode == 7 and out == f"got-{sig.name}\n".encode() and b"router" not in err, (sig, out, err)
    stubborn = _started(state, 'trap "echo ignored" INT; echo ready; while :; do sleep 0.1; done')
    assert stubborn.stdout is not None
    stubborn.send_signal(signal.SIGINT)
    assert stubborn.stdout.readline() == b"ignored\n"
    stubborn.send_signal(signal.SIGINT)
    out, err = stubborn.communicate(timeout=20)
    assert stubborn.returncode == 128 + signal.SIGINT
    assert err.decode().count("\n") == 1 and "killing the command" in err.decode()
    running = router("ls", "--state-dir", str(state), "--state", "running").stdout.decode().splitlines()
    assert running == [running[0]]  # the header alone


@pytest.mark.parametrize("frozen", [False, True], ids=["stopped", "frozen"])
def test_give_up_is_a_promise(served: tuple, frozen: bool) -> None:
    _, listen, state = served
    target = listen if frozen else DEAD
    serving = serving_pid(state)  # frozen: the serving process (its keeper would pass nothing on)
    if frozen:
        os.kill(serving, signal.SIGSTOP)
    try:
        for argv, status in ((["exec", "-n", "--", "true"], 255), (["ls"], 1), (["inspect", "ex-1"], 1),
                             (["kill", "ex-1"], 1), (["logs", "ex-1"], 1)):
            began = time.monotonic()
            result = router(argv[0], "--state-dir", str(state), "--target", target, "--give-up", "2", *argv[1:])
            took = time.monotonic() - began
            assert result.returncode == status and took < 2 + 1.5, (argv, took, result.stderr)
            line = one_line(result)
            assert ("did not answer within 2 s" if frozen else "cannot reach") in line, line
    finally:
        os.kill(serving, signal.SIGCONT)


def test_execs_of_a_router_that_ignores_signals_ignore_none(tmp_path: pathlib.Path) -> None:
    """A router started under nohup, or as a script's background job, inherits SIGHUP, SIGINT,
    SIGQUIT and SIGPIPE ignored; its execs start with every signal at its default and none blocked."""
    ignoring = ["sh", "-c", "trap '' INT QUIT HUP PIPE; exec \"$@\"", "sh"]
    with router_process(tmp_path, prefix=ignoring) as (proc, _):
        status = pathlib.Path(f"/proc/{proc.pid}/status").read_text()
        ignored = int(status.split("SigIgn:")[1].split()[0], 16)
        # As set up (SIGINT and SIGTERM it handles itself, to stop); its serving process inherits them.
        assert ignored & (1 << (signal.SIGHUP - 1)) and ignored & (1 << (signal.SIGQUIT - 1))
        for flags in ([], ["-t"]):
            result = router("exec", "--state-dir", str(tmp_path), *flags, "-n", "--", "grep", "^Sig[BI]",
                            "/proc/self/status")
            fields = result.stdout.replace(b"\r", b"").split()
            assert fields == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16], (flags, result.stdout, result.stderr)


def test_give_up_holds_for_a_router_frozen_under_a_stream(served: tuple) -> None:
    """`logs -f` follows a running exec; the router freezes: it gives up in time all the same."""
    _, listen, state = served
    started = _started(state, "echo ready; exec sleep 60")
    ids = router("ls", "--state-dir", str(state), "--state", "running").stdout.decode().split()
    follow = subprocess.Popen([*ROUTER, "logs", "--state-dir", str(state), "--give-up", "2", "-f",
                               ids[ids.index("COMMAND") + 1]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == b"ready\n"
        os.kill(serving_pid(state), signal.SIGSTOP)
        began = time.monotonic()
        _, err = follow.communicate(timeout=30)
        assert follow.returncode == 1 and time.monotonic() - began < 2 + 2.5, (time.monotonic() - began, err)
        assert err.count(b"\n") == 1 and b"Traceback" not in err, err
    finally:
        os.kill(serving_pid(state), signal.SIGCONT)
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
        started.kill()
        started.communicate()


def test_a_timed_out_exec_says_so(served: tuple) -> None:
    _, _, state = served
    result = router("exec", "--state-dir", str(state), "--timeout", "1", "-n", "--", "sleep", "30")
    assert result.returncode == 128 + signal.SIGKILL
    assert one_line(result) == "router exec: the command timed out after 1 s and was killed\n"


def test_env_pass_through_and_stored_secrets(served: tuple) -> None:
    _, _, state = served
    env = {**os.environ, "FROM_HERE": "local value"}
    passed = router("exec", "--state-dir", str(state), "-n", "--env", "FROM_HERE", "--env", "UNSET_HERE",
                    "--", "sh", "-c", 'echo "$FROM_HERE|${UNSET_HERE-unset}"', env=env)
    assert passed.stdout == b"local value|unset\n"
    empty = router("secrets", "set", "db", "PASSWORD", "--state-dir", str(state), input=b"")
    assert empty.returncode == 1 and "--allow-empty" in one_line(empty)
    assert router("secrets", "set", "db", "PASSWORD", "--state-dir", str(state), input=b"s3cret\n").returncode == 0
    used = router("exec", "--state-dir", str(state), "-n", "--secret", "db", "--", "sh", "-c", "echo $PASSWORD")
    assert used.stdout == b"s3cret\n"
    unknown = router("exec", "--state-dir", str(state), "-n", "--secret", "nope", "--", "true")
    assert unknown.returncode == 255 and "nope" in one_line(unknown)


def test_tokens_say_where_they_come_from(tmp_path: pathlib.Path) -> None:
    fresh = tmp_path / "mistyped"
    refused = router("token", "--state-dir", str(fresh))
    assert refused.returncode == 1 and "--init" in one_line(refused) and not fresh.exists()
    assert router("token", "--state-dir", str(fresh), "--init").returncode == 0
    with router_process(tmp_path / "served") as (_, listen):
        # A token minted from another state directory's key: refused, and the message says so.
        wrong = router("ls", "--state-dir", str(fresh), "--target", listen)
        assert wrong.returncode == 1 and f"minted with {fresh / 'jwt.key'}" in one_line(wrong)


def test_serve_banner_names_the_task_it_serves(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path, "--task-id", "ta-custom") as (proc, _):  # the last --task-id wins
        assert proc.stdout is not None
        command = next(line for line in proc.stdout if line.startswith("get a token with: "))
        token = subprocess.run(command.removeprefix("get a token with: ").replace("router", " ".join(ROUTER), 1),
                               shell=True, capture_output=True, text=True, timeout=30).stdout.split()[-1]
        listen = json.loads((tmp_path / "server.json").read_text())["listen"]
        with RouterClient(listen, token, "ta-custom", retries=0) as client:
            assert list(client.execs()) == []


def test_inspect_is_for_people_and_version_is_there(served: tuple) -> None:
    _, _, state = served
    assert router("exec", "--state-dir", str(state), "-n", "--", "sh", "-c", "echo hi; exit 3").returncode == 3
    ids = router("ls", "--state-dir", str(state)).stdout.decode().split()
    info = json.loads(router("inspect", "--state-dir", str(state), ids[ids.index("COMMAND") + 1]).stdout)
    assert info["stdout_bytes"] == 3 and info["exit"] == {"code": 3, "signal": None, "cause": "exited"}
    assert info["started_at"].endswith("+00:00") and info["running"] is False
    version = router("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"router (task-command-router) ")


_FLAGS = ["--target", "--token", "--give-up", "--timeout", "--env", "--secret", "-n", "-s", "--grace", "--from",
          "--state", "--stderr", "-f", "-j", "--retries", "--halt", "--ttl", "--workdir", "--", "--bogus"]
_VALUES = ["0", "-1", "1", "2", "x", "TERM", "FOO", "1e400", "nan", "", "K=V", "now,fail=1", DEAD, "ex-1", "\u00e9"]


def test_every_flag_says_what_it_does() -> None:
    from router.cli.parser import parser

    top = parser()
    undocumented = [(name, action.dest) for name, sub in top.commands.items() for action in sub._actions
                    if action.help is None and action.dest != "help"]
    assert not undocumented


def test_batch_and_exec_load_no_other_commands_modules() -> None:
    """A CLI start is on the clock of `router batch` and `router exec`: the parser and those two
    load neither `serve` (the engine, handover) nor the admin commands, whose `ls --state` choices
    the parser holds apart from admin's map of them."""
    code = ("import sys; from router.cli.parser import parser; parser(); import router.cli.batch, router.cli.exec; "
            "print(*sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60).stdout.split()
    assert not [m for m in loaded if m.startswith((b"router.cli.serve", b"router.cli.admin", b"router.handover",
                                                  b"router.engine.adoption", b"router.server.grpc_server"))]
    from router.cli.admin import STATES
    from router.cli.argtypes import EXEC_STATES

    assert sorted(STATES) == sorted(EXEC_STATES)


@pytest.fixture(params=["dead", "live"])
def router_target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    if request.param == "dead":
        yield DEAD, tmp_path
    else:
        with router_process(tmp_path) as (_, listen):
            yield listen, tmp_path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["exec", "ls", "inspect", "kill", "logs", "batch", "token"]),
       words=st.lists(st.sampled_from(_FLAGS + _VALUES), max_size=6))
def test_random_argv_never_tracebacks_nor_hangs(router_target: tuple[str, pathlib.Path], command: str,
                                                words: list[str]) -> None:
    """Against a dead router and a live one, with --give-up 1: any argv ends within seconds, without a
    traceback, with a documented status."""
    target, state = router_target
    argv = [command, "--state-dir", str(state)] + ([] if command == "token" else ["--target", target,
                                                                                 "--give-up", "1"])
    began = time.monotonic()
    # In the test's directory: a value may become a relative path (`token --state nan` is --state-dir nan).
    result = router(*argv, *words, input=b"true\n", timeout=30, cwd=state)
    assert b"Traceback" not in result.stderr, (words, result.stderr)
    assert time.monotonic() - began < 10, words
    if command not in ("exec", "batch"):  # theirs are the commands' statuses (and batch's count of failures)
        assert result.returncode in (0, 1, 2) or result.returncode > 128, (words, result.returncode)
