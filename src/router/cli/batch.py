"""`router batch`: each line of a file run as `sh -c LINE` on one or more routers, GNU parallel style.

Few calls per job (one gRPC call costs the server ~0.2 ms, issue 10): jobs start in chunks, one
BatchStart per target per refill of the -j window, and each chunk is followed by one Watch over
its ids that ends by itself when the last of them exits. Output up to OUTPUT_LIMIT comes in the
exit event; only larger output costs TaskExecStdioRead calls. A Watch over every exec would be one
call per run instead, but at connect it sends every exec the router still keeps (up to 10,000 by
default, each with its output), a previous batch's included; a Watch per chunk sees only ours.

Joblog, --resume, --retries, --halt and the exit status follow GNU parallel (checked against
parallel 20221122):
- the joblog has one row per job, for its last attempt; `JobRuntime` is `%10.3f`; a job killed
  by --halt now is not logged, so --resume runs it again; a timed-out job has Exitval -1;
- --retries N is N attempts in all, the next on another target where there is one;
- blank lines are jobs too (they succeed), so that a job's seq is its line number;
- Starttime and JobRuntime are the router's: the Watch asks for start events too (one more event
  on the same stream, no call), so both come from the router's clock; a job that never started
  has the time its BatchStart was sent and runtime 0;
- the exit status is the number of failed jobs, at most 101; with --halt ...,fail=1 it is the
  failing job's own status.
Unlike parallel, -j is the number of jobs at once over all targets, not per target.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import queue
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import BinaryIO, TextIO

import grpc

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import STDERR, STDOUT, RouterClient

# Output delivered in the exit event: 64 KiB is a pipe's buffer, and the size the batch benchmark
# writes per job; the router reads it on its event loop, so each event's read stays short.
OUTPUT_LIMIT = 64 * 1024
# --halt now: TERM, then KILL after this long, for each running job's process group.
KILL_GRACE_SECS = 1.0
MAX_STATUS = 101  # parallel's cap on the exit status (number of failed jobs)
NOT_RUN = -1  # parallel's joblog Exitval for a job killed by a timeout (and here: one that never started)
# Items per BatchStart (and its Watch): a call answers once all its items have started, so the
# first outputs come after one chunk's spawns rather than all of them (benchmarks/RESULTS.md).
CHUNK = 256
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


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
    attempts: int = 0
    failed_on: set[int] = dataclasses.field(default_factory=set)  # targets it failed on


@dataclasses.dataclass
class Attempt:
    job: Job
    target: int
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
class WatchFailed:
    error: Exception


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


class Batch:
    """One run: keeps up to `jobs` attempts running over the targets, refilling in chunks."""

    def __init__(self, clients: Sequence[RouterClient], hosts: Sequence[str], jobs: Iterable[Job],
                 options: Options, out: BinaryIO, err: TextIO) -> None:
        self._clients = list(clients)
        self._hosts = list(hosts)
        self._options = options
        self._pending = deque(jobs)
        self._out = out
        self._err = err
        self._prefix = f"batch-{uuid.uuid4().hex}"
        self._running: dict[str, Attempt] = {}
        self._killed: set[str] = set()  # by --halt now: neither logged nor counted
        self._events: queue.SimpleQueue[Finished | WatchFailed | Interrupted] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._done = 0
        self._failed = 0
        self._halted_by: Outcome | None = None
        self._interrupted = 0  # the signal
        self._stopping = False
        self._progress = Progress(err, len(self._pending))
        self._joblog = Joblog(options.joblog, options.resume) if options.joblog else None

    def run(self) -> int:
        """Run every job (or until --halt); the exit status. On an error or an interrupt, the jobs
        still running are killed before it propagates."""
        try:
            while self._running or (self._pending and not self._stopping):
                if not self._stopping:
                    self._refill()
                if self._running:
                    self._collect()
        except BaseException:
            self._kill_running()  # the Watch threads end once the caller closes the clients
            raise
        finally:
            self._progress.end(self._done, self._failed)
            if self._joblog is not None:
                self._joblog.close()
        for thread in self._threads:  # every exec they follow has exited: their streams have ended
            thread.join()
        if self._interrupted:
            return 128 + self._interrupted
        if self._halted_by is not None and self._options.halt is not None and self._options.halt.fails == 1:
            return self._halted_by.status
        return min(self._failed, MAX_STATUS)

    # -- starting ------------------------------------------------------------------------------

    def _refill(self) -> None:
        free = self._options.jobs - len(self._running)
        if free <= 0 or not self._pending:
            return
        load = [0] * len(self._clients)
        for attempt in self._running.values():
            load[attempt.target] += 1
        chunks: dict[int, list[Attempt]] = {}
        for _ in range(min(free, len(self._pending))):
            job = self._pending.popleft()
            target = self._pick(job, load)
            load[target] += 1
            job.attempts += 1
            attempt = Attempt(job, target, f"{self._prefix}-{job.seq}-{job.attempts}", 0.0)
            chunks.setdefault(target, []).append(attempt)
        for target, attempts in chunks.items():
            for at in range(0, len(attempts), CHUNK):
                self._start(target, attempts[at:at + CHUNK])

    def _pick(self, job: Job, load: list[int]) -> int:
        """The least loaded target, among those the job has not failed on if there are any."""
        fresh = [t for t in range(len(load)) if t not in job.failed_on] or list(range(len(load)))
        return min(fresh, key=lambda t: load[t])

    def _start(self, target: int, attempts: list[Attempt]) -> None:
        items = [pb.TaskExecStartRequest(exec_id=a.exec_id, command_args=["sh", "-c", a.job.command],
                                         stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                                         stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE,
                                         timeout_secs=self._options.timeout_secs or None)
                 for a in attempts]
        client = self._clients[target]
        sent = time.time()
        results = client.batch_start(items)
        started = []
        for attempt, result in zip(attempts, results, strict=True):
            attempt.started = sent
            if result.code == 0:
                self._running[attempt.exec_id] = attempt
                started.append(attempt.exec_id)
            else:
                reason = f"{_CODE_NAMES.get(result.code, result.code)}: {result.message}"
                self._ended(attempt, Outcome(not_started=reason), b"", b"", sent, sent)
        if started:
            thread = threading.Thread(target=self._follow, args=(client, started), daemon=True,
                                      name=f"batch-watch-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _follow(self, client: RouterClient, exec_ids: list[str]) -> None:
        """One Watch over a chunk's execs (its own thread): each exit, with its output, onto the queue."""
        started: dict[str, float] = {}
        try:
            for event in client.watch(exec_ids, OUTPUT_LIMIT, include_started=True):
                if event.kind == ec.WATCH_EVENT_KIND_STARTED:
                    started[event.exec_id] = event.time
                    continue
                if event.output_included:
                    stdout, stderr = event.stdout, event.stderr
                else:
                    stdout = b"".join(client.read(event.exec_id, STDOUT))
                    stderr = b"".join(client.read(event.exec_id, STDERR))
                self._events.put(Finished(event.exec_id, event.exit, stdout, stderr,
                                          started.pop(event.exec_id, 0.0), event.time))
        except (grpc.RpcError, ValueError) as e:  # ValueError: the channel was closed under it
            self._events.put(WatchFailed(e))

    # -- finishing -----------------------------------------------------------------------------

    def _collect(self) -> None:
        """Handle every exit that has come (waiting a while for the first), then show progress."""
        try:
            events = [self._events.get(timeout=self._progress.interval)]
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if isinstance(event, WatchFailed):
                raise event.error
            if isinstance(event, Interrupted):
                self._interrupt(event.signal)
                continue
            attempt = self._running.pop(event.exec_id)
            if event.exec_id in self._killed:
                continue
            started = event.started or event.ended or attempt.started  # no STARTED event: runtime 0
            self._ended(attempt, Outcome.of(event.exit), event.stdout, event.stderr, started, event.ended or started)
        self._progress.show(self._done, self._failed, len(self._running))

    def _ended(self, attempt: Attempt, outcome: Outcome, stdout: bytes, stderr: bytes, started: float,
               ended: float) -> None:
        job = attempt.job
        if outcome.not_started:
            self._progress.clear()
            print(f"router batch: job {job.seq} did not start on {self._hosts[attempt.target]}: "
                  f"{outcome.not_started}", file=self._err, flush=True)
        if outcome.failed and job.attempts < self._options.attempts and not self._stopping:
            job.failed_on.add(attempt.target)
            self._pending.appendleft(job)  # retried next, as parallel does
            return
        self._report(job, outcome, stdout, stderr)
        if self._joblog is not None:
            self._joblog.row(job.seq, self._hosts[attempt.target], started, max(0.0, ended - started),
                             len(stdout) + len(stderr), outcome, job.command)
        self._done += 1
        if outcome.failed:
            self._failed += 1
            halt = self._options.halt
            if halt is not None and self._failed >= halt.fails and not self._stopping:
                self._halt(halt, job, outcome)

    def _report(self, job: Job, outcome: Outcome, stdout: bytes, stderr: bytes) -> None:
        """The job's output, whole (parallel's --group), or its --results files."""
        if self._options.results is not None:
            write_results(self._options.results, job.seq, stdout, stderr, outcome.text())
            return
        if stdout:
            self._out.write(stdout)
            self._out.flush()
        if stderr:
            self._progress.clear()
            self._err.flush()
            self._err.buffer.write(stderr)
            self._err.buffer.flush()

    def _halt(self, halt: Halt, job: Job, outcome: Outcome) -> None:
        self._stopping = True
        self._halted_by = outcome
        self._progress.clear()
        print(f"router batch: halting after {self._failed} failed jobs; the last: job {job.seq} "
              f"({outcome.text()}): {job.command}", file=self._err)
        if halt.now:
            print(f"router batch: killing {len(self._running)} running jobs", file=self._err, flush=True)
            self._kill_running()
        elif self._running:
            print(f"router batch: starting no more jobs; waiting for {len(self._running)} running",
                  file=self._err, flush=True)

    def interrupt(self, signum: int, _frame: object = None) -> None:
        """A signal handler: the first signal stops the run (running jobs killed, not logged); a
        second, while that goes on, raises KeyboardInterrupt."""
        if self._interrupted:
            raise KeyboardInterrupt
        self._events.put(Interrupted(signum))  # SimpleQueue.put is safe in a signal handler

    def _interrupt(self, signum: int) -> None:
        if self._interrupted:
            return
        self._interrupted = signum
        self._stopping = True
        self._progress.clear()
        print(f"router batch: interrupted; killing {len(self._running)} running jobs", file=self._err, flush=True)
        self._kill_running()

    def _kill_running(self) -> None:
        """Kill every attempt still running; their exits are neither logged nor counted, so that
        --resume runs them again. Best effort: a target that fails a Kill is not asked again."""
        failing: set[int] = set()
        for exec_id, attempt in list(self._running.items()):
            if exec_id in self._killed or attempt.target in failing:
                continue
            self._killed.add(exec_id)
            try:
                self._clients[attempt.target].kill(exec_id, KILL_GRACE_SECS, timeout=KILL_GRACE_SECS + 10)
            except (grpc.RpcError, ValueError):  # ValueError: its channel is closed
                failing.add(attempt.target)  # (Kill of an exec that has exited answers its exit)


def run(clients: Sequence[RouterClient], hosts: Sequence[str], source: BinaryIO, options: Options,
        out: BinaryIO | None = None, err: TextIO | None = None) -> int:
    """Read the jobs (skipping those in the joblog, with --resume) and run them; the exit status."""
    skip = Joblog.logged(options.joblog) if options.resume and options.joblog else set()
    jobs = read_jobs(source, skip)
    runner = Batch(clients, hosts, jobs, options, out or sys.stdout.buffer, err or sys.stderr)
    if threading.current_thread() is not threading.main_thread():  # only it may handle signals
        return runner.run()
    previous = {sig: signal.signal(sig, runner.interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
