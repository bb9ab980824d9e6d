"""The journal across restarts: a clean stop, a `kill -9`, and a journal of 10,000 finished execs."""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import struct
import subprocess
import threading
import time

import grpc

from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, RouterClient, exit_code
from router.engine import journal, journal_format, procs, spawn_slots
from router.engine.records import ExecSpec, ExitCause, ExitStatus
from tests.helpers.execs import PIPES, start_request
from tests.helpers.polling import eventually
from tests.helpers.processes import alive
from tests.helpers.servers import TASK_ID, router_process, serving, state_token


def journal_of(tmp_path: pathlib.Path) -> journal.Journal:
    """The journal of the state directory that `serving(tmp_path)` uses, for a test to write."""
    state = tmp_path / "state"
    state.mkdir()
    return journal.Journal.open(state / "journal")[0]


def test_a_clean_stop_keeps_every_finished_exec(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "runs"
    args = ["sh", "-c", f"echo run >> {marker}; head -c 300000 /dev/urandom; echo oops >&2; exit 3"]
    with serving(tmp_path) as (_, client, _raw):
        client.start("a", args, **PIPES)
        assert exit_code(client.wait("a")) == 3
        out = b"".join(client.read("a"))
    assert len(out) == 300000
    with serving(tmp_path) as (_, client, raw):
        assert exit_code(client.poll("a")) == 3 and exit_code(client.wait("a")) == 3
        assert b"".join(client.read("a")) == out
        assert b"".join(client.read("a", offset=123457)) == out[123457:]
        assert b"".join(client.read("a", STDERR)) == b"oops\n"
        client.start("a", args, **PIPES)  # the same request again: OK, and nothing runs
        assert raw.code("TaskExecStart", start_request("a", ["true"])) == grpc.StatusCode.ALREADY_EXISTS
        client.start("b", ["echo", "new"], **PIPES)  # new output goes into recycled or fresh slots
        assert exit_code(client.wait("b")) == 0 and b"".join(client.read("b")) == b"new\n"
        assert b"".join(client.read("a")) == out
    assert marker.read_text() == "run\n"


def test_kill_9_then_serve_again(tmp_path: pathlib.Path) -> None:
    """After a crash: finished execs as they were, a running one reported lost (SIGKILL) with its
    output up to the crash, its process group killed, and a repeated start runs nothing."""
    marker = tmp_path / "runs"
    done_args = ["sh", "-c", f"echo run >> {marker}; head -c 200000 /dev/urandom"]
    leader = 0
    try:
        with router_process(tmp_path) as (proc, listen):
            token = state_token(tmp_path)
            with RouterClient(listen, token, TASK_ID, retries=0) as client:
                client.start("done", done_args, **PIPES)
                assert exit_code(client.wait("done")) == 0
                done = b"".join(client.read("done"))
                client.start("running", ["sh", "-c", "echo $$; echo second; exec sleep 60"], **PIPES)
                seen = b""
                for data in client.read("running"):
                    seen += data
                    if seen.endswith(b"second\n"):
                        break
                leader = int(seen.split()[0])

                def journaled() -> bool:
                    state = journal_format.replay(tmp_path / "journal")
                    out = state.execs["running"].outputs.get("stdout") if "running" in state.execs else None
                    return out is not None and out.committed == len(seen)

                assert eventually(journaled), "the running exec's output never reached the journal"
            proc.kill()
            proc.wait(10)
        assert alive(leader), "the exec died with its router: nothing left to kill"
        with router_process(tmp_path) as (_, listen):
            token = state_token(tmp_path)
            with RouterClient(listen, token, TASK_ID, retries=0) as client:
                assert eventually(lambda: not alive(leader)), "the lost exec's process group outlived the restart"
                assert client.poll("running").signal == signal.SIGKILL
                assert client.wait("running").signal == signal.SIGKILL
                assert b"".join(client.read("running")) == seen
                assert b"".join(client.read("running", offset=3)) == seen[3:]
                assert exit_code(client.wait("done")) == 0 and b"".join(client.read("done")) == done
                client.start("done", done_args, **PIPES)  # a retry of the finished start: runs nothing
                assert exit_code(client.wait("done")) == 0
        assert marker.read_text() == "run\n"
    finally:
        if leader:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)


def test_ten_thousand_finished_execs_are_served_after_a_restart(tmp_path: pathlib.Path) -> None:
    spec = ExecSpec(args=["true"], env={"SECRET": "value"}, stdout="devnull", stderr="devnull")
    with journal_of(tmp_path) as j:
        for i in range(10_000):
            j.append(journal_format.Begun.from_spec(f"e{i}", b"f", spec, time.time()))
            j.append(journal_format.Exited(f"e{i}", ExitStatus(code=i % 7), time.time(), ExitCause.EXITED))
    started = time.monotonic()
    with serving(tmp_path) as (_, client, raw):
        ready = time.monotonic() - started
        assert exit_code(client.poll("e0")) == 0 and exit_code(client.wait("e9999")) == 9999 % 7
        read = pb.TaskExecStdioReadRequest(task_id=TASK_ID, exec_id="e5")
        assert raw.code("TaskExecStdioRead", read) == grpc.StatusCode.OK
    print(f"serving 10,000 journaled execs {ready:.3f} s after start")


def test_a_lost_exec_takes_stdin_retries_after_a_restart(tmp_path: pathlib.Path) -> None:
    """The child is gone: writes at any offset are accepted and dropped, as after any exit."""
    spec = ExecSpec(args=["cat"], env={}, stdout="pipe", stderr="pipe")
    with journal_of(tmp_path) as j:
        j.append(journal_format.Begun.from_spec("cat", b"f", spec, time.time()))  # never spawned, never ended
    with serving(tmp_path) as (_, client, _raw):
        assert client.poll("cat").signal == signal.SIGKILL
        client.write_stdin("cat", 12345, b"late", eof=True)
        assert b"".join(client.read("cat")) == b""


def test_stop_records_the_exit_of_an_exec_whose_output_was_still_open(tmp_path: pathlib.Path) -> None:
    """The leader exited, but a process of another session still held its stdout: stop() ends the
    output, and the exit must still reach the journal."""
    holder = 0
    try:
        with serving(tmp_path) as (_, client, _raw):
            client.start("held", ["sh", "-c", "setsid sleep 30 & echo $!; exit 5"], **PIPES)
            assert exit_code(client.wait("held")) == 5
            holder = int(next(client.read("held")).split()[0])
        kept = journal_format.replay(tmp_path / "state" / "journal").execs["held"]
        assert kept.exited is not None and kept.exited.status.code == 5
        assert kept.outputs["stdout"].eof
    finally:
        if holder:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)


def test_a_restored_exec_ages_from_its_exit(tmp_path: pathlib.Path) -> None:
    spec = ExecSpec(args=["true"], env={}, stdout="devnull", stderr="devnull")
    with journal_of(tmp_path) as j:
        for exec_id, age in (("old", 3600.0), ("new", 0.0)):
            j.append(journal_format.Begun.from_spec(exec_id, b"f", spec, time.time() - age))
            j.append(journal_format.Exited(exec_id, ExitStatus(code=0), time.time() - age, ExitCause.EXITED))
    with serving(tmp_path, retain_secs=600) as (_, client, raw):
        assert eventually(lambda: raw.code("TaskExecPoll", pb.TaskExecPollRequest(
            task_id=TASK_ID, exec_id="old")) == grpc.StatusCode.NOT_FOUND), "an hour-old exit was kept for 600 s"
        assert exit_code(client.poll("new")) == 0


def test_kill_9_ends_what_an_exited_leader_left_holding_its_output(tmp_path: pathlib.Path) -> None:
    """The leader exited (its status answered and journaled) but a background process holds its
    output open: after a crash that process is ended once, and the exit answered stays as it was."""
    background = 0
    try:
        with router_process(tmp_path) as (proc, listen):
            with RouterClient(listen, state_token(tmp_path), TASK_ID, retries=0) as client:
                client.start("d", ["sh", "-c", "sleep 60 & echo $!; exit 2"], **PIPES)
                assert exit_code(client.wait("d")) == 2
                background = int(next(iter(client.read("d"))).split()[0])
            proc.kill()
            proc.wait(10)
        assert alive(background)
        with router_process(tmp_path) as (_, listen):
            with RouterClient(listen, state_token(tmp_path), TASK_ID, retries=0) as client:
                assert eventually(lambda: not alive(background)), "the background process outlived the restart"
                assert exit_code(client.poll("d")) == 2
        out = journal_format.replay(tmp_path / "journal").execs["d"].stdout
        assert out is not None and out.eof  # ended in the journal: the next restart kills nothing
    finally:
        if background and alive(background):
            os.kill(background, signal.SIGKILL)


def test_a_child_spawned_just_before_a_crash_is_found_by_its_spawner_slot(tmp_path: pathlib.Path) -> None:
    """The router died after a spawn and before the journal's Spawned: the spawner's slot names the
    child, which the restart ends; a process that started before the exec began is left alone."""
    state = tmp_path / "state"
    state.mkdir()
    spec = ExecSpec(args=["sleep", "60"], env={}, stdout="pipe", stderr="pipe")
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    time.sleep(0.2)  # it started well before the execs below began
    with journal.Journal.open(state / "journal")[0] as j:
        for exec_id in ("young", "old"):
            j.append(journal_format.Begun.from_spec(exec_id, b"f", spec, time.time()))
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    slots = spawn_slots.SpawnSlots(state / "spawning", procs.boot_id(), 2)

    def spawned(exec_id: str, pid: int) -> None:  # a spawner thread: a slot of its own
        os.pwrite(slots.claim(exec_id), struct.pack("=i", pid), 0)  # the pid, as _fastio.spawn writes it

    try:
        for args in (("young", child.pid), ("old", stranger.pid)):
            thread = threading.Thread(target=spawned, args=args)
            thread.start()
            thread.join()
        slots.close()
        with serving(tmp_path) as (_, client, _raw):
            assert client.poll("young").signal == signal.SIGKILL and client.poll("old").signal == signal.SIGKILL
            assert child.wait(10) == -signal.SIGKILL
            assert stranger.poll() is None, "a process that started before the exec began was killed"
    finally:
        for proc in (child, stranger):
            proc.kill()
            proc.wait()


def test_a_child_of_a_spawn_the_crash_cut_short_is_found_by_its_environment(tmp_path: pathlib.Path) -> None:
    """The router died inside a spawn: the slot names the exec but no pid. The restart ends the
    group leader that started just then with the exec's environment, and no other."""
    state = tmp_path / "state"
    state.mkdir()
    spec = ExecSpec(args=["sh", "-c", "exec sleep 60"], env={"MINE": "1"}, stdout="pipe", stderr="pipe")
    with journal.Journal.open(state / "journal")[0] as j:
        j.append(journal_format.Begun.from_spec("cut", b"f", spec, time.time()))
    slots = spawn_slots.SpawnSlots(state / "spawning", procs.boot_id(), 2)
    slots.claim("cut")  # and no pid: the spawn never returned
    slots.close()
    child = subprocess.Popen(["sleep", "60"], start_new_session=True, env={"MINE": "1"})
    # Another child whose leader exited at once, leaving a member of its group.
    with subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], start_new_session=True, stdout=subprocess.PIPE,
                          env={"MINE": "1", "PATH": os.environ["PATH"]}) as leader:
        assert leader.stdout is not None
        member = int(leader.stdout.readline())
    other = subprocess.Popen(["sleep", "60"], start_new_session=True, env={"THEIRS": "1"})
    time.sleep(0.3)  # the restart comes later: the slot's time must still be the claim's
    try:
        with serving(tmp_path) as (_, client, _raw):
            assert client.poll("cut").signal == signal.SIGKILL
            assert child.wait(10) == -signal.SIGKILL
            assert eventually(lambda: not alive(member)), "the group whose leader had exited outlived the restart"
            assert other.poll() is None, "a process without the exec's environment was killed"
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()
        if alive(member):
            os.kill(member, signal.SIGKILL)
