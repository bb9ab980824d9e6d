"""The server's own log lines (`router serve --log-format`): JSON lines that parse, each exec's start
and end with its exit and cause, text as before, and never a secret or a token."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import pytest

from router import auth, log_writer, logs
from router._proto import api_pb2
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient
from router.secretstore import SecretStore
from tests.helpers.execs import PIPES, start_request
from tests.helpers.grpc_raw import Raw
from tests.helpers.servers import TASK_ID, router_process, state_token

SECRET = "s3cr3t-in-a-store-7f1e"
INLINE = "inline-secret-value-90ab"
ENV_VALUE = "env-value-that-is-secret-55cd"
POLL = pb.TaskExecPollRequest(task_id=TASK_ID, exec_id="absent")


def parsed(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object with the fields each must have; fails on any other line."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert entry["time"].endswith("Z") and datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert re.fullmatch(r"[a-z][a-z0-9_]*", entry["event"]), line
        assert isinstance(entry["message"], str), line
        entries.append(entry)
    return entries


def serve_json(tmp_path: pathlib.Path, run: Any, *extra: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`router serve --log-format json` (state in tmp_path/state), `run(listen, token)` against it,
    then SIGTERM: (its stdout's entries, its stderr's entries)."""
    state = tmp_path / "state"
    with open(tmp_path / "stderr", "wb") as err, \
            router_process(state, "--log-format", "json", *extra, stderr=err) as (proc, listen):
        run(listen, state_token(state))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and proc.stdout is not None
        out = proc.stdout.read()  # not communicate(timeout=...), which skips what the pipe's reader holds
    return parsed(out), parsed((tmp_path / "stderr").read_text())


def by_exec(entries: list[dict[str, Any]], event: str) -> dict[str, dict[str, Any]]:
    return {e["exec_id"]: e for e in entries if e["event"] == event}


def test_json_lines_parse_and_log_each_execs_start_and_end(tmp_path: pathlib.Path) -> None:
    def run(listen: str, token: str) -> None:
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("three", ["sh", "-c", "exit 3"], **PIPES)
            client.start("missing", ["/no/such/program"], **PIPES)
            client.start("timed", ["sleep", "30"], **PIPES, timeout_secs=1)
            client.start("killed", ["sleep", "30"], **PIPES)
            client.start("left", ["sh", "-c", "sleep 30", "with", "args"], **PIPES)
            for exec_id in ("three", "missing", "timed"):
                client.wait(exec_id)
            client.kill("killed")

    out, err = serve_json(tmp_path, run)
    # (router_process read the first, "listening", to learn the address.)
    assert out[0]["event"] == "task" and out[0]["task_id"] == TASK_ID and out[-1]["event"] == "shutting_down"
    assert "state_dir" in {e["event"] for e in out}
    started, ended = by_exec(err, "exec_started"), by_exec(err, "exec_ended")
    assert set(started) == {"three", "timed", "killed", "left"}  # one that never ran did not start
    assert all(e["level"] == "info" and e["pid"] > 0 for e in started.values())
    assert started["left"]["argc"] == 5 and started["three"]["argc"] == 3
    assert set(ended) == {"three", "missing", "timed", "killed", "left"}
    expected = {"three": (3, None, "exited"), "missing": (127, None, "failed_to_start"),
                "timed": (None, signal.SIGKILL, "timed_out"), "killed": (None, signal.SIGKILL, "killed"),
                "left": (None, signal.SIGKILL, "shutdown")}
    assert {k: (e["exit_code"], e["signal"], e["cause"]) for k, e in ended.items()} == expected
    assert ended["timed"]["duration_secs"] >= 1.0 and ended["three"]["argc"] == 3
    assert all(e["pid"] == started[k]["pid"] for k, e in ended.items() if k in started)
    # No argument of any exec is in its lines.
    assert not any("30" in e["message"].split() or "with" in e["message"] for e in err if "exec_id" in e)


def test_a_lost_exec_is_logged_when_the_restarted_router_finds_it(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    with router_process(state, "--log-format", "json") as (proc, listen):
        with RouterClient(listen, state_token(state), TASK_ID, retries=0) as client:
            client.start("running", ["sleep", "30"], **PIPES)
        proc.kill()  # a crash: its exec is lost
        proc.wait(10)
    _, err = serve_json(tmp_path, lambda listen, token: None)
    lost = by_exec(err, "exec_ended")["running"]
    assert lost["cause"] == "lost" and lost["signal"] == signal.SIGKILL


def test_text_mode_is_as_before(tmp_path: pathlib.Path) -> None:
    with router_process(tmp_path) as (proc, listen):
        with RouterClient(listen, state_token(tmp_path), TASK_ID, retries=0) as client:
            client.start("three", ["sh", "-c", "exit 3"], **PIPES)
            client.wait("three")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0 and proc.stdout is not None
        lines = proc.stdout.read().splitlines()
    assert "router shutting down" in lines and "task id: ta-test" in lines
    logged = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ", line)]
    assert any(line.endswith("INFO router.execs: exec three started: " + line.split("started: ")[-1])
               for line in logged)
    assert any(re.search(r" INFO router\.execs: exec three ended: exit 3 \(exited\) after [\d.]+ s, pid \d+, 3 args$",
                         line) for line in logged)
    assert not any(line.startswith("{") for line in lines)


def test_no_line_holds_a_secret_or_a_token(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    store = SecretStore(state / "secrets")
    store.set("st-db", {"PASSWORD": SECRET})
    inline = api_pb2.SecretSource(env=api_pb2.StringMap(contents={"INLINE": INLINE}))
    forged = auth.mint_token(b"k" * 32, TASK_ID)  # signed with another key: refused, and not logged either

    def run(listen: str, token: str) -> None:
        with RouterClient(listen, token, TASK_ID, retries=0) as client:
            client.start("uses", ["sh", "-c", f"echo {SECRET} >&2; exit 1"], **PIPES, secret_ids=["st-db"],
                         secret_sources=[inline], env={"VALUE": ENV_VALUE})
            client.start("fails", [f"/no/such/{SECRET}"], **PIPES, secret_ids=["st-db"], env={"VALUE": ENV_VALUE})
            client.start("times-out", ["sleep", "10"], **PIPES, secret_ids=["st-db"], timeout_secs=1)
            for exec_id in ("uses", "fails", "times-out"):
                client.wait(exec_id)
            with pytest.raises(grpc.RpcError) as missing:
                client.start("missing-secret", ["true"], **PIPES, secret_ids=["st-none"], env={"V": ENV_VALUE})
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with Raw(int(listen.rsplit(":", 1)[1]), forged) as raw, pytest.raises(grpc.RpcError) as refused:
            raw.call("TaskExecPoll", POLL)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Raw(int(listen.rsplit(":", 1)[1]), "not.a.jwt-" + SECRET) as raw, pytest.raises(grpc.RpcError):
            raw.call("TaskExecPoll", POLL)
        tokens.append(token)

    tokens: list[str] = []
    out, err = serve_json(tmp_path, run, "--kill-grace", "0")
    assert len(by_exec(err, "exec_ended")) == 3
    text = json.dumps(out) + json.dumps(err) + (tmp_path / "stderr").read_text()
    for value in (SECRET, INLINE, ENV_VALUE, tokens[0], forged):
        assert value not in text


def test_a_call_without_an_event_gets_one_from_its_module_and_level() -> None:
    try:
        raise ValueError("what broke")
    except ValueError:
        record = logging.getLogger("router.engine.journaling").makeRecord(
            "router.engine.journaling", logging.ERROR, __file__, 1, "writing %s failed", ("x",), sys.exc_info())
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["event"] == "journaling_error" and entry["logger"] == "router.engine.journaling"
    assert entry["message"] == "writing x failed" and "ValueError: what broke" in entry["exception"]
    assert entry["level"] == "error" and set(entry) == {"time", "level", "event", "logger", "message", "exception"}
    # A path that is not UTF-8 is escaped, not a line lost.
    record = logging.LogRecord("router.images.store", logging.INFO, __file__, 1, "%s", (os.fsdecode(b"/m\xff"),), None)
    assert json.loads(logs.JsonFormatter().format(record))["message"] == os.fsdecode(b"/m\xff")


def test_the_rfc3339_time_is_utc_with_microseconds() -> None:
    assert logs.rfc3339(0.25) == "1970-01-01T00:00:00.250000Z"
    assert logs.rfc3339(1_800_000_000.000001)[:20] == "2027-01-15T08:00:00."


def test_usage_errors_in_json_mode_are_json_too(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, "-m", "router.cli", "serve", "--state-dir", str(tmp_path),
                           "--log-format", "json", "--max-workers", "4"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    [entry] = parsed(done.stderr)
    assert entry["level"] == "error" and entry["event"] == "usage_error" and "--max-workers" in entry["message"]


def test_a_stderr_nobody_reads_stalls_no_exec_and_not_the_stop(tmp_path: pathlib.Path) -> None:
    """router_process's pipe is read only up to the address: 3,000 lines fill it several times."""
    ids = [f"e{i}" for i in range(1500)]
    with router_process(tmp_path) as (proc, listen), \
            RouterClient(listen, state_token(tmp_path), TASK_ID, retries=0) as client:
        assert all(r.code == 0 for r in client.batch_start([start_request(i, ["true"]) for i in ids]))
        assert len(list(client.watch(ids))) == len(ids)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - began < 8  # a second for each write that finds the reader gone


def test_lines_wait_for_a_stalled_reader_then_the_dropped_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_writer, "MAX_PENDING_LINES", 50)
    r, w = os.pipe()
    handler = log_writer.BlockHandler(w, lambda n: f"{n} dropped")
    try:
        os.set_blocking(w, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"-" * 4096)  # the pipe is full: the reader has stopped
        os.set_blocking(w, True)
        handler.add("first")
        time.sleep(0.5)  # the handler's thread took it and waits for the reader
        began = time.monotonic()
        for i in range(200):
            handler.add(f"line {i}")
        handler.flush(stall=0.2)  # gives up on the reader, as the stop does
        assert time.monotonic() - began < 1.5
        os.set_blocking(r, False)
        got = b""
        deadline = time.monotonic() + 10
        while b" dropped\n" not in got and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                got += os.read(r, 1 << 16)
            time.sleep(0.01)
        lines = got.replace(b"-", b"").decode().splitlines()
        assert lines[0] == "first"
        assert lines[1:] == [f"line {i}" for i in range(50)] + ["150 dropped"]  # whole lines, in order
    finally:
        handler.close()
        os.close(r)
        os.close(w)


def test_a_warning_is_written_with_what_came_before_when_the_call_returns() -> None:
    r, w = os.pipe()
    handler = log_writer.BlockHandler(w, lambda n: f"{n} dropped")
    logger = logging.getLogger("router.tests.warning")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("first")  # waits for the next block
        logger.warning("second")  # an os._exit may come next: written before the call returns
        os.set_blocking(r, False)
        assert os.read(r, 1000) == b"first\nsecond\n"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        handler.close()
        os.close(r)
        os.close(w)
