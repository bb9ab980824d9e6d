"""`router batch` as a user runs it: a separate process against real routers (in this process)."""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pathlib
import pty
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from router.cli.batch import widen_pipe
from router.cli.batch_jobs import CHUNK, JOBLOG_HEADER, PIPE_BYTES
from router.client import RouterClient
from tests.helpers.processes import ROUTER
from tests.helpers.servers import serving


class Target(NamedTuple):
    listen: str
    token: str
    client: RouterClient


@contextlib.contextmanager
def target_at(directory: pathlib.Path, **overrides: object) -> Iterator[Target]:
    with serving(directory, **overrides) as (server, client, raw):
        yield Target(f"127.0.0.1:{server.port}", raw.token, client)


@pytest.fixture
def target(tmp_path: pathlib.Path) -> Iterator[Target]:
    with target_at(tmp_path) as t:
        yield t


def batch(t: Target, *args: str, input: bytes | None = None,
          targets: tuple[Target, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    flags = [f for other in (t, *targets) for f in ("--target", other.listen)]
    return subprocess.run([*ROUTER, "batch", *flags, "--token", t.token, *args], input=input, check=False,
                          capture_output=True, timeout=60)


def lines(*commands: str) -> bytes:
    return "".join(c + "\n" for c in commands).encode()


def joblog(path: pathlib.Path) -> list[list[str]]:
    """The rows (9 fields each) after checking the header and the format of every row."""
    text = path.read_text()
    assert text.startswith(JOBLOG_HEADER) and text.count("Seq\t") == 1
    rows = [row.split("\t", 8) for row in text[len(JOBLOG_HEADER):].splitlines()]
    for row in rows:
        assert len(row) == 9, row
        seq, _, start, runtime, send, receive, exitval, sig, _ = row
        assert seq.isdigit() and re.fullmatch(r"\d{10}\.\d{3}", start), row
        assert len(runtime) >= 10 and re.fullmatch(r" *\d+\.\d{3}", runtime), row  # parallel's %10.3f
        assert send == "0" and receive.isdigit() and re.fullmatch(r"-?\d+", exitval) and sig.isdigit(), row
    return rows


def by_seq(rows: list[list[str]]) -> dict[int, list[str]]:
    seqs = [int(r[0]) for r in rows]
    assert len(seqs) == len(set(seqs)), "a seq logged twice"
    return dict(zip(seqs, rows, strict=True))


@pytest.mark.timeout(60)
def test_1000_lines_with_failures(target: Target, tmp_path: pathlib.Path) -> None:
    commands = [f"echo out {i}; echo err {i} >&2; exit $(({i} % 7 == 0))" for i in range(1, 1001)]
    began = time.monotonic()
    result = batch(target, "-j", "32", "--joblog", str(tmp_path / "log"), input=lines(*commands))
    took = time.monotonic() - began
    assert result.returncode == 101, result.stderr[-2000:]  # 142 failed: capped as parallel's
    assert took < 20, f"1000 trivial jobs took {took:.1f} s"
    # Each job's output whole (grouped), in completion order.
    assert sorted(result.stdout.decode().splitlines()) == sorted(f"out {i}" for i in range(1, 1001))
    assert sorted(result.stderr.decode().splitlines()) == sorted(f"err {i}" for i in range(1, 1001))
    rows = by_seq(joblog(tmp_path / "log"))
    assert sorted(rows) == list(range(1, 1001))
    for seq, (_, host, _, _, _, receive, exitval, sig, command) in rows.items():
        assert host == target.listen and command == commands[seq - 1]
        assert exitval == ("1" if seq % 7 == 0 else "0") and sig == "0"
        assert int(receive) == len(f"out {seq}\nerr {seq}\n")


def test_exit_status_counts_failures_and_joblog_fields(target: Target, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    result = batch(target, "--joblog", str(log), input=lines("exit 3", "printf 'a\\tb'", "kill -9 $$", "", "exit 1"))
    assert result.returncode == 3 and result.stdout == b"a\tb"
    rows = by_seq(joblog(log))
    assert [rows[s][6:8] for s in range(1, 6)] == [["3", "0"], ["0", "0"], ["0", "9"], ["0", "0"], ["1", "0"]]
    assert rows[2][8] == "printf 'a\\tb'" and rows[4][8] == ""  # a blank line is a job too, as in parallel
    # The same file from a file argument rather than stdin, all succeeding: 0.
    source = tmp_path / "jobs"
    source.write_bytes(lines("true", "echo fine"))
    ok = batch(target, str(source))
    assert ok.returncode == 0 and ok.stdout == b"fine\n" and ok.stderr == b""


def test_results_files_timeout_and_large_output(target: Target, tmp_path: pathlib.Path) -> None:
    results, log = tmp_path / "results", tmp_path / "log"
    result = batch(target, "-j", "4", "--timeout", "1", "--results", str(results), "--joblog", str(log),
                   input=lines("echo out; echo err >&2", "exit 3", "kill -9 $$", "sleep 30",
                               "head -c 300000 /dev/zero | tr '\\0' x; echo big >&2"))
    assert result.returncode == 3, result.stderr
    assert result.stdout == b""  # the output went to the files
    files = {str(p.relative_to(results)): p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert sorted(files) == [f"{s}/{n}" for s in range(1, 6) for n in ("exit", "stderr", "stdout")]
    assert [files[f"{s}/exit"] for s in range(1, 6)] == [b"0\n", b"3\n", b"signal 9\n", b"signal 9 (timed out)\n",
                                                        b"0\n"]
    assert files["1/stdout"] == b"out\n" and files["1/stderr"] == b"err\n"
    assert files["5/stdout"] == b"x" * 300_000 and files["5/stderr"] == b"big\n"  # past the event's 64 KiB
    rows = by_seq(joblog(log))
    assert rows[4][6:8] == ["-1", "9"]  # timed out: parallel's -1
    assert rows[5][5] == str(300_004) and 1.0 <= float(rows[4][3]) < 10


def test_retries_run_a_failed_job_again(target: Target, tmp_path: pathlib.Path) -> None:
    marker, count, log = tmp_path / "marker", tmp_path / "count", tmp_path / "log"
    result = batch(target, "--retries", "3", "--joblog", str(log),
                   input=lines(f"echo try; test -e {marker} || {{ touch {marker}; exit 1; }}",
                               f"echo x >> {count}; exit 5"))
    assert result.returncode == 1
    assert result.stdout.count(b"try") == 1  # only the last attempt's output, as parallel
    assert count.read_text() == "x\n" * 3  # --retries N: N attempts in all
    rows = by_seq(joblog(log))
    assert sorted(rows) == [1, 2] and rows[1][6] == "0" and rows[2][6] == "5"  # one row per job
    # Without --retries a job runs once.
    marker.unlink()
    assert batch(target, input=lines(f"test -e {marker} || {{ touch {marker}; exit 1; }}")).returncode == 1


def test_halt_now_kills_running_jobs(target: Target, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    began = time.monotonic()
    result = batch(target, "-j", "4", "--halt", "now,fail=1", "--joblog", str(log),
                   input=lines("sleep 30", "sleep 30", "sleep 30", "sleep 0.3; exit 4", *["echo later"] * 10))
    assert time.monotonic() - began < 15
    assert result.returncode == 4  # fail=1: the failing job's status, as parallel
    assert result.stdout == b"" and b"killing 3 running jobs" in result.stderr
    assert sorted(by_seq(joblog(log))) == [4]  # the killed are not logged: --resume runs them again
    assert not any(info.running for info in target.client.execs())


def test_halt_soon_waits_for_running_jobs_and_starts_no_more(target: Target, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    result = batch(target, "-j", "2", "--halt", "soon,fail=2", "--joblog", str(log),
                   input=lines("sleep 1.5; echo slow", "exit 2", "exit 3", *["echo never"] * 10))
    assert result.returncode == 2, result.stderr
    assert result.stdout == b"slow\n" and b"waiting for 1 running" in result.stderr
    rows = by_seq(joblog(log))
    assert sorted(rows) == [1, 2, 3] and [rows[s][6] for s in (1, 2, 3)] == ["0", "2", "3"]
    assert 1.5 <= float(rows[1][3]) < 5 and float(rows[2][3]) < 1  # the router's start and end times
    assert float(rows[2][2]) <= float(rows[3][2]) < float(rows[1][2]) + 1.5  # 3 started once 2 ended
    assert len(list(target.client.execs())) == 3


@pytest.mark.timeout(60)
def test_halt_soon_starts_no_later_chunk(target: Target, tmp_path: pathlib.Path) -> None:
    """Three chunks' worth at once, the first job failing at once: the halt comes between chunks, so the
    last is never started; every job that did start ran to its end and is logged, and --resume runs
    the rest."""
    log = tmp_path / "log"
    jobs = lines("exit 3", *["sleep 1; echo done"] * (3 * CHUNK - 1))
    first = batch(target, "-j", str(3 * CHUNK), "--halt", "soon,fail=1", "--joblog", str(log), input=jobs)
    assert first.returncode == 3 and b"starting no more jobs" in first.stderr, first.stderr
    rows = by_seq(joblog(log))
    assert len(rows) == len(list(target.client.execs())) < 3 * CHUNK  # all that started, and not all
    assert first.stdout.count(b"done\n") == len(rows) - 1
    rest = batch(target, "-j", str(3 * CHUNK), "--joblog", str(log), "--resume", input=jobs)
    assert rest.returncode == 0 and rest.stdout.count(b"done\n") == 3 * CHUNK - len(rows)
    assert sorted(by_seq(joblog(log))) == list(range(1, 3 * CHUNK + 1))


def test_resume_after_a_halt_and_after_an_interrupt(target: Target, tmp_path: pathlib.Path) -> None:
    log, marker = tmp_path / "log", tmp_path / "marker"
    commands = [f"sleep 0.05; echo {i}" for i in range(1, 201)]
    commands[9] = f"test -e {marker} || {{ touch {marker}; exit 9; }}"  # seq 10 fails the first time
    source = tmp_path / "jobs"
    source.write_bytes(lines(*commands))
    first = batch(target, "-j", "4", "--halt", "now,fail=1", "--joblog", str(log), str(source))
    assert first.returncode == 9
    halted = by_seq(joblog(log))
    assert halted[10][6] == "9" and len(halted) < 200

    # An interrupt (SIGINT) kills the running jobs, which stay out of the joblog.
    run = subprocess.Popen([*ROUTER, "batch", "--target", target.listen, "--token", target.token, "-j", "4",
                            "--resume", "--joblog", str(log), str(source)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(joblog(log)) < len(halted) + 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130 and b"interrupted" in err
    interrupted = by_seq(joblog(log))
    assert len(halted) + 20 <= len(interrupted) < 200

    last = batch(target, "-j", "8", "--resume", "--joblog", str(log), str(source))
    assert last.returncode == 0, last.stderr
    rows = by_seq(joblog(log))  # every seq exactly once, and seq 10 was not run again (it is logged)
    assert sorted(rows) == list(range(1, 201))
    assert [s for s, row in rows.items() if row[6] != "0"] == [10]
    assert sorted(int(x) for x in last.stdout.split()) == sorted(set(range(1, 201)) - set(interrupted))


def test_two_targets_share_the_jobs(tmp_path: pathlib.Path) -> None:
    for name in ("a", "b/state"):
        (tmp_path / name).mkdir(parents=True)
    with target_at(tmp_path / "a") as a:
        shutil.copy(tmp_path / "a" / "state" / "jwt.key", tmp_path / "b" / "state" / "jwt.key")  # one token for both
        with target_at(tmp_path / "b") as b:
            log = tmp_path / "log"
            result = batch(a, "-j", "8", "--joblog", str(log), targets=(b,),
                           input=lines(*[f"sleep 0.01; echo {i}" for i in range(1, 201)]))
            assert result.returncode == 0, result.stderr
            rows = by_seq(joblog(log))
            assert sorted(rows) == list(range(1, 201))
            hosts = [row[1] for row in rows.values()]
            assert set(hosts) == {a.listen, b.listen} and min(hosts.count(a.listen), hosts.count(b.listen)) >= 50
            assert len(list(a.client.execs())) + len(list(b.client.execs())) == 200


@pytest.mark.timeout(60)
def test_output_goes_out_while_later_chunks_start(target: Target, tmp_path: pathlib.Path) -> None:
    """Four chunks of CHUNK jobs at once: the first chunks' output is written before the last chunk
    is started, not once every job has started (each job of the last one finds it there)."""
    out = tmp_path / "out"
    early = [f"echo {i}" for i in range(3 * CHUNK)]
    last = [f"if [ -s {out} ]; then echo early; else echo late; fi" for _ in range(CHUNK)]
    with out.open("wb") as stdout:
        result = subprocess.run([*ROUTER, "batch", "--target", target.listen, "--token", target.token, "-j",
                                 str(4 * CHUNK)], input=lines(*early, *last), stdout=stdout, stderr=subprocess.PIPE,
                                check=False, timeout=50)
    assert result.returncode == 0, result.stderr
    words = out.read_bytes().split()
    assert sorted(w for w in words if w.isdigit()) == sorted(str(i).encode() for i in range(3 * CHUNK))
    assert words.count(b"early") == CHUNK, words.count(b"late")


def test_a_pipe_on_stdout_is_widened(tmp_path: pathlib.Path) -> None:
    """A pipe's buffer holds PIPE_BYTES of output, so that the CLI need not wait for its reader every
    64 KiB; on anything else (a file, a closed stream) it is a no-op."""
    read, write = os.pipe()
    with os.fdopen(read, "rb") as reader, os.fdopen(write, "wb") as writer:
        widen_pipe(writer)
        assert fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        assert fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES  # one buffer, both ends
    with (tmp_path / "file").open("wb") as file:
        widen_pipe(file)
    widen_pipe(file)  # closed: fileno() raises ValueError
    widen_pipe(io.BytesIO())  # no descriptor at all


def test_a_job_that_cannot_start_fails_alone(tmp_path: pathlib.Path) -> None:
    with target_at(tmp_path, max_arg_bytes=1024) as t:
        log = tmp_path / "log"
        result = batch(t, "--joblog", str(log), input=lines("echo one", "echo " + "x" * 2000, "echo three"))
        assert result.returncode == 1
        assert sorted(result.stdout.split()) == [b"one", b"three"]
        assert b"job 2 did not start" in result.stderr and b"INVALID_ARGUMENT" in result.stderr
        assert by_seq(joblog(log))[2][6] == "-1"


def test_bad_usage_and_unreachable_target(target: Target, tmp_path: pathlib.Path) -> None:
    for args in (["--halt", "later"], ["--halt", "now,fail=0"], ["--retries", "0"], ["-j", "x"], ["--resume"]):
        result = batch(target, *args, input=b"true\n")
        assert result.returncode == 255 and b"Traceback" not in result.stderr, args
    missing = batch(target, str(tmp_path / "missing"))
    assert missing.returncode == 255 and b"No such file" in missing.stderr
    assert batch(target, input=b"\xff\n").returncode == 255
    gone = subprocess.run([*ROUTER, "batch", "--target", "127.0.0.1:1", "--token", target.token,
                           "--connect-timeout", "0.5"], input=b"true\n", capture_output=True, timeout=30,
                          check=False)
    assert gone.returncode == 255 and gone.stderr == b"router batch: cannot reach 127.0.0.1:1 (within 0.5 s)\n"


def test_progress_on_a_terminal(target: Target) -> None:
    primary, secondary = pty.openpty()
    try:
        run = subprocess.Popen([*ROUTER, "batch", "--target", target.listen, "--token", target.token, "-j", "4"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=secondary)
        out, _ = run.communicate(lines(*["sleep 0.1"] * 20), timeout=60)
        os.close(secondary)
        secondary = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has no writer
            while chunk := os.read(primary, 65536):
                shown += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert run.returncode == 0 and out == b""
    assert b"\r\x1b[K" in shown and b" running, ETA " in shown
    assert shown.rstrip().endswith(b"router batch: 20/20 done, 0 failed, 0 running")


def test_sigterm_kills_the_running_jobs_and_resume_mends_a_torn_row(target: Target, tmp_path: pathlib.Path) -> None:
    log, source = tmp_path / "log", tmp_path / "jobs"
    source.write_bytes(lines("sleep 30", "sleep 30", "echo three"))
    run = subprocess.Popen([*ROUTER, "batch", "--target", target.listen, "--token", target.token, "-j", "2",
                            "--joblog", str(log), str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while sum(info.running for info in target.client.execs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        run.terminate()
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 128 + signal.SIGTERM and b"interrupted" in err
    assert not any(info.running for info in target.client.execs())
    assert joblog(log) == []
    # A row cut short by a crash (no newline): a resume ends it before appending.
    with open(log, "a") as f:
        f.write(f"1\t{target.listen}\t1795988061.101\t     0.053\t0\t0\t0\t0\tsleep 30")
    source.write_bytes(lines("sleep 30", "echo two", "echo three"))
    again = batch(target, "--resume", "--joblog", str(log), str(source))
    assert again.returncode == 0 and sorted(again.stdout.split()) == [b"three", b"two"]
    assert sorted(by_seq(joblog(log))) == [1, 2, 3]


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel is not installed")
def test_joblog_matches_gnu_parallels(target: Target, tmp_path: pathlib.Path) -> None:
    """The same jobs through GNU parallel and through router batch: the same rows but for Host and times."""
    commands = lines("echo a", "exit 3", "", f"test -e {tmp_path}/M || {{ touch {tmp_path}/M; exit 1; }}",
                     "kill -9 $$", "printf 'x\\ty'")
    logs = []
    runners = {"parallel": ["parallel", "--will-cite", "-j", "2"],
               "router": [*ROUTER, "batch", "--target", target.listen, "--token", target.token, "-j", "2"]}
    for name, argv in runners.items():
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "M").unlink()
        ran = subprocess.run([*argv, "--retries", "2", "--joblog", str(tmp_path / name)], input=commands,
                             capture_output=True, timeout=60, check=False)
        assert ran.returncode == 2, (name, ran.stderr)
        logs.append(sorted([row[0], *row[4:]] for row in joblog(tmp_path / name)))
    assert logs[0] == logs[1]
