"""The jobs of `router batch`: reading them, their outcomes, the joblog, results and the progress line
(GNU parallel's formats; see batch.py)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import BinaryIO, TextIO

import grpc

from router._proto import exec_control_pb2 as ec
from router.client import RETRYABLE

# Output delivered in the exit event: 64 KiB is a pipe's buffer, and the size the batch benchmark
# writes per job; the router reads it on its event loop, so each event's read stays short.
OUTPUT_LIMIT = 64 * 1024
# The buffer asked for a pipe on stdout: Linux's default limit for an unprivileged process
# (/proc/sys/fs/pipe-max-size); a chunk's outputs then go to the reader in 1 MiB rounds.
PIPE_BYTES = 1024 * 1024
# --halt now: TERM, then KILL after this long, for each running job's process group.
KILL_GRACE_SECS = 1.0
MAX_STATUS = 101  # parallel's cap on the exit status (number of failed jobs)
NOT_RUN = -1  # parallel's joblog Exitval for a job killed by a timeout (and here: one that never started)
# Items per BatchStart (and its Watch): a call answers once all its items have started, so the
# first outputs come after one chunk's spawns rather than all of them (benchmarks/HISTORY.md,
# "Fan-out and exec rate through BatchStart + Watch").
CHUNK = 256
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


# A failed call that another router (or this one, later) may answer: the router, not the request, failed.
ROUTER_TROUBLE = frozenset({*RETRYABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class BatchError(Exception):
    """Bad input (a file, a joblog): reported as one line, exit status 255 as parallel's."""


@dataclasses.dataclass(frozen=True)
class Halt:
    now: bool  # kill running jobs; else (soon) wait for them
    fails: int

    @classmethod
    def parse(cls, text: str) -> Halt:
        when, _, why = text.partition(",")
        kind, _, count = why.partition("=")
        if when not in ("now", "soon") or kind != "fail" or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{text!r}: expected now,fail=N or soon,fail=N (N >= 1)")
        return cls(now=when == "now", fails=int(count))


@dataclasses.dataclass(frozen=True)
class Options:
    jobs: int
    timeout_secs: int = 0  # 0: none
    attempts: int = 1  # --retries
    halt: Halt | None = None
    joblog: pathlib.Path | None = None
    results: pathlib.Path | None = None
    resume: bool = False


@dataclasses.dataclass
class Job:
    seq: int  # 1-based line number
    command: str
    attempts: int = 0  # counted against --retries: not those a lost router ended
    runs: int = 0  # every start, so that each has an exec id of its own
    failed_on: set[str] = dataclasses.field(default_factory=set)  # targets it failed on


@dataclasses.dataclass
class Attempt:
    job: Job
    target: str  # the router's HOST:PORT
    exec_id: str
    started: float  # unix time its BatchStart was sent


@dataclasses.dataclass(frozen=True)
class Finished:
    """An exit event, with the exec's whole output, from a Watch thread."""
    exec_id: str
    exit: ec.ExitInfo
    stdout: bytes
    stderr: bytes
    started: float  # unix times on the router's clock; 0 if it never started (or no STARTED event)
    ended: float


@dataclasses.dataclass(frozen=True)
class Lost:
    """Execs a router lost (unknown to it after it came back) or may have (set aside): run again."""
    exec_ids: list[str]
    target: str
    why: str = ""  # set, the router is set aside for it


@dataclasses.dataclass(frozen=True)
class Refused:
    """A router answered with an error no other router would mend (a token refused, say)."""
    target: str
    error: grpc.RpcError


class RouterRefused(Exception):
    """Ends the run: `error` from the router at `target` (exit 255, one line saying why)."""

    def __init__(self, event: Refused) -> None:
        super().__init__(event.target)
        self.target, self.error = event.target, event.error


@dataclasses.dataclass(frozen=True)
class Changed:
    """Which routers take new jobs may have changed."""


@dataclasses.dataclass(frozen=True)
class Interrupted:
    """SIGINT or SIGTERM, queued by the handler so that it lands between steps, never inside one
    (between a BatchStart's answer and the bookkeeping that lets the jobs be killed)."""
    signal: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended."""
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    not_started: str = ""  # why BatchStart refused it

    @classmethod
    def of(cls, info: ec.ExitInfo) -> Outcome:
        return cls(code=info.code if info.HasField("code") else None,
                   signal=info.signal if info.HasField("signal") else None,
                   timed_out=info.cause == ec.EXIT_CAUSE_TIMED_OUT)

    @property
    def failed(self) -> bool:
        return self.code != 0

    @property
    def exitval(self) -> int:
        """The joblog's Exitval: parallel's $? >> 8 (0 for a signal), -1 if timed out or never run."""
        if self.timed_out or self.not_started:
            return NOT_RUN
        return self.code or 0

    @property
    def status(self) -> int:
        """As a shell reports it: the code, 128+N for signal N, 1 for a job that never started."""
        if self.signal is not None:
            return 128 + self.signal
        return self.code if self.code else 1

    def text(self) -> str:
        """The --results `exit` file."""
        if self.not_started:
            return f"not started: {self.not_started}"
        ended = f"signal {self.signal}" if self.signal is not None else str(self.code)
        return ended + (" (timed out)" if self.timed_out else "")


def read_jobs(stream: BinaryIO, skip: set[int]) -> list[Job]:
    """One job per line; a line's seq is its number, so blank lines are (trivial) jobs too."""
    data = stream.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    jobs = []
    for seq, line in enumerate(lines, 1):
        if seq in skip:
            continue
        try:
            jobs.append(Job(seq, line.decode()))
        except UnicodeDecodeError:
            raise BatchError(f"line {seq} is not UTF-8") from None
    return jobs


class Joblog:
    """GNU parallel's joblog: a header, then a row per finished job, appended and flushed."""

    def __init__(self, path: pathlib.Path, resume: bool) -> None:
        fresh = not resume or not path.exists() or path.stat().st_size == 0
        torn = not fresh and not path.read_bytes().endswith(b"\n")  # a row cut short by a crash
        # Open for the whole run: close() ends it.
        self._file = open(path, "w" if fresh else "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        self._file.write(JOBLOG_HEADER if fresh else "\n" if torn else "")
        self._file.flush()

    @staticmethod
    def logged(path: pathlib.Path) -> set[int]:
        """The seqs a joblog has a row for (--resume skips them, as parallel does)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as e:
            raise BatchError(f"cannot read the joblog {path}: {e}") from None
        seqs = set()
        for number, row in enumerate(text.splitlines()[1:], 2):
            first = row.split("\t", 1)[0]
            if not first.isdigit():
                raise BatchError(f"{path}:{number}: not a joblog row")
            seqs.add(int(first))
        return seqs

    def row(self, seq: int, host: str, start: float, runtime: float, received: int, outcome: Outcome,
            command: str) -> None:
        self._file.write(f"{seq}\t{host}\t{start:.3f}\t{runtime:10.3f}\t0\t{received}\t{outcome.exitval}\t"
                         f"{outcome.signal or 0}\t{command}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_results(directory: pathlib.Path, seq: int, stdout: bytes, stderr: bytes, exit_text: str) -> None:
    """DIR/SEQ/{stdout,stderr,exit}, each renamed into place whole; `exit` last, so a directory with
    an `exit` is complete. Not fsynced: a crash of this process leaves no torn file, a power loss may."""
    job_dir = directory / str(seq)
    job_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("stdout", stdout), ("stderr", stderr), ("exit", exit_text.encode() + b"\n")):
        partial = job_dir / f".{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, job_dir / name)


class Progress:
    """On a terminal, one line redrawn in place; otherwise a plain line every PLAIN_SECS (quiet in CI logs)."""
    TERMINAL_SECS = 0.2
    PLAIN_SECS = 30.0

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self._total = total
        self._tty = stream.isatty()
        self._began = time.monotonic()
        self._last = self._began
        self._shown = False
        self.interval = self.TERMINAL_SECS if self._tty else self.PLAIN_SECS

    def show(self, done: int, failed: int, running: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = f"router batch: {done}/{self._total} done, {failed} failed, {running} running"
        if 0 < done < self._total:
            line += f", ETA {(now - self._began) / done * (self._total - done):.0f}s"
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
            self._shown = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Before other output to the terminal."""
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def end(self, done: int, failed: int) -> None:
        if self._tty:
            self.show(done, failed, 0, force=True)
            self._stream.write("\n")
            self._stream.flush()
