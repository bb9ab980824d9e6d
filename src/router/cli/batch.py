"""`router batch`: each line of a file run as `sh -c LINE` on one or more routers, GNU parallel style.

Few calls per job (one gRPC call costs the server ~0.2 ms: benchmarks/HISTORY.md): jobs start in chunks of
up to CHUNK, one BatchStart per target at a time while the -j window has room, the output that has
come written between them; each chunk is followed by one Watch over its ids that ends by itself
when the last of them exits. Output up to OUTPUT_LIMIT comes in the
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

The targets are a fleet (batch_fleet.py): a router that refuses new execs (draining, handing over,
full) gets none until it is ready again, and keeps running what it has. One that does not answer for
--target-timeout, or that lost an exec (cause LOST or SHUTDOWN, or unknown to it once it answers
again), is set aside until a probe finds it ready; its jobs start again elsewhere, without using
up --retries (at-least-once, as parallel's --sshlogin: a job cut off by a router that was only
unreachable may have run there too). The run fails (255) only once no router has answered for
--target-timeout.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import queue
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import BinaryIO, TextIO

import grpc

from router._proto import exec_control_pb2 as ec
from router._proto import task_command_router_pb2 as pb
from router.client import RouterClient
from router.client.targets import TargetError, Targets

from .batch_fleet import PROBE_SECS, RECONNECT_SECS, Fleet
from .batch_jobs import (
    CHUNK,
    CODE_NAMES,
    KILL_GRACE_SECS,
    MAX_STATUS,
    PIPE_BYTES,
    ROUTER_TROUBLE,
    Attempt,
    BatchError,
    Changed,
    Finished,
    Halt,
    Interrupted,
    Job,
    Joblog,
    Lost,
    Options,
    Outcome,
    Progress,
    Refused,
    RouterRefused,
    read_jobs,
    write_results,
)
from .batch_watch import follow
from .connection import ROUTER_FAILED, connect, failure
from .parser import DEFAULT_TARGET_TIMEOUT

Event = Finished | Lost | Refused | Changed | Interrupted
# Exit causes that say the router, not the job, ended it: the job runs again elsewhere.
ROUTER_ENDED = frozenset({ec.EXIT_CAUSE_LOST, ec.EXIT_CAUSE_SHUTDOWN})
# A refused start that another router (or this one, later) may take: the job waits for one.
REFUSED = frozenset({grpc.StatusCode.UNAVAILABLE.value[0], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]})


class Batch:
    """One run: keeps up to `jobs` attempts running over the targets, refilling in chunks."""

    def __init__(self, fleet: Fleet, jobs: Iterable[Job], options: Options, out: BinaryIO, err: TextIO) -> None:
        self._fleet = fleet
        self._options = options
        self._pending = deque(jobs)
        self._out = out
        self._err = err
        self._prefix = f"batch-{uuid.uuid4().hex}"
        self._running: dict[str, Attempt] = {}
        self._killed: set[str] = set()  # by --halt now: neither logged nor counted
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        fleet.on_change = lambda: self._events.put(Changed())
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
        still running are killed before it propagates. The Watch threads end once the caller closes
        the fleet (those following a router set aside may still wait on it), then `join()`."""
        try:
            while self._running or (self._pending and not self._stopping):
                started = not self._stopping and self._refill()
                self._collect(wait=not started)  # after a start, only what has come: then the next chunk
                silent = self._fleet.silent_for()
                if silent > self._fleet.target_timeout:
                    raise BatchError(f"no target has answered for {silent:.0f} s (--target-timeout "
                                     f"{self._fleet.target_timeout:g}); --resume runs the jobs not logged")
        except BaseException:
            self._kill_running()
            raise
        finally:
            self._progress.end(self._done, self._failed)
            if self._joblog is not None:
                self._joblog.close()
        if self._interrupted:
            return 128 + self._interrupted
        if self._halted_by is not None and self._options.halt is not None and self._options.halt.fails == 1:
            return self._halted_by.status
        return min(self._failed, MAX_STATUS)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    # -- starting ------------------------------------------------------------------------------

    def _refill(self) -> bool:
        """Start a chunk per target, if the -j window has room; whether any started. One at a time, so
        that the output of the jobs done so far goes out while the next chunk starts."""
        free = self._options.jobs - len(self._running)
        eligible = self._fleet.eligible()
        if free <= 0 or not self._pending or not eligible:
            return False
        load = dict.fromkeys(eligible, 0)
        for attempt in self._running.values():
            if attempt.target in load:
                load[attempt.target] += 1
        chunks: dict[str, list[Attempt]] = {}
        for _ in range(min(free, len(self._pending), CHUNK * len(load))):
            job = self._pending.popleft()
            target = self._pick(job, load)
            load[target] += 1
            job.attempts += 1
            job.runs += 1
            attempt = Attempt(job, target, f"{self._prefix}-{job.seq}-{job.runs}", 0.0)
            chunks.setdefault(target, []).append(attempt)
        for target, attempts in chunks.items():
            for at in range(0, len(attempts), CHUNK):
                self._start(target, attempts[at:at + CHUNK])
        return True

    @staticmethod
    def _pick(job: Job, load: dict[str, int]) -> str:
        """The least loaded target, among those the job has not failed on if there are any."""
        fresh = [t for t in load if t not in job.failed_on] or list(load)
        return min(fresh, key=lambda t: load[t])

    def _again(self, attempts: Iterable[Attempt]) -> None:
        """Run these again, first, without using up an attempt: the router, not the job, failed."""
        for attempt in reversed(list(attempts)):
            attempt.job.attempts -= 1
            self._pending.appendleft(attempt.job)

    def _start(self, target: str, attempts: list[Attempt]) -> None:
        items = [pb.TaskExecStartRequest(exec_id=a.exec_id, command_args=["sh", "-c", a.job.command],
                                         stdout_config=pb.TASK_EXEC_STDOUT_CONFIG_PIPE,
                                         stderr_config=pb.TASK_EXEC_STDERR_CONFIG_PIPE,
                                         timeout_secs=self._options.timeout_secs or None)
                 for a in attempts]
        sent = time.time()
        try:
            results = self._fleet.host(target).client.batch_start(items)
        except grpc.RpcError as e:  # it may have started them: at-least-once
            if e.code() not in ROUTER_TROUBLE:
                raise RouterRefused(Refused(target, e)) from None
            self._fleet.refused(target)
            self._warn(f"{target} did not take {len(attempts)} jobs ({e.code().name}); they go elsewhere")
            self._again(attempts)
            return
        self._fleet.answered(target)
        started, refused = [], []
        for attempt, result in zip(attempts, results, strict=True):
            attempt.started = sent
            if result.code == 0:
                self._running[attempt.exec_id] = attempt
                started.append(attempt.exec_id)
            elif result.code in REFUSED:
                refused.append(attempt)
            else:
                reason = f"{CODE_NAMES.get(result.code, result.code)}: {result.message}"
                self._ended(attempt, Outcome(not_started=reason), b"", b"", sent, sent)
        if refused:  # draining, handing over, full: none until a probe finds it ready
            self._fleet.refused(target)
            self._again(refused)
        if started:
            thread = threading.Thread(target=follow, args=(self._fleet, target, started, self._events.put),
                                      daemon=True, name=f"batch-watch-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
            self._threads = [t for t in self._threads if t.is_alive()]

    # -- finishing -----------------------------------------------------------------------------

    def _collect(self, wait: bool) -> None:
        """Handle every event that has come (if `wait`, waiting a while for the first), then show progress."""
        events: list[Event] = []
        try:
            if wait:  # not long: the fleet's silence is checked between
                events.append(self._events.get(timeout=min(self._progress.interval, 2 * PROBE_SECS)))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if isinstance(event, Interrupted):
                self._interrupt(event.signal)
            elif isinstance(event, Changed):
                self._silent_jobs()
            elif isinstance(event, Refused):
                raise RouterRefused(event)
            elif isinstance(event, Lost):
                if event.why:
                    self._fleet.set_aside(event.target, event.why)
                self._lost(event.exec_ids)
            else:
                self._finished(event)
        self._progress.show(self._done, self._failed, len(self._running))

    def _lost(self, exec_ids: Iterable[str]) -> None:
        """Those still running (not killed by --halt or a signal) run again elsewhere."""
        attempts = [a for i in exec_ids if (a := self._running.pop(i, None)) is not None and i not in self._killed]
        if not self._stopping:
            self._again(attempts)

    def _silent_jobs(self) -> None:
        """The jobs of every router set aside for its silence run again elsewhere."""
        self._lost([i for i, a in self._running.items() if self._fleet.host(a.target).silent])

    def _finished(self, event: Finished) -> None:
        attempt = self._running.get(event.exec_id)
        if attempt is None:  # run again elsewhere already
            return
        if event.exit.cause in ROUTER_ENDED:
            if event.exit.cause == ec.EXIT_CAUSE_LOST:
                self._fleet.set_aside(attempt.target, "it lost a job (restarted)")
            self._lost([event.exec_id])
            return
        del self._running[event.exec_id]
        if event.exec_id not in self._killed:
            started = event.started or event.ended or attempt.started  # no STARTED event: runtime 0
            self._ended(attempt, Outcome.of(event.exit), event.stdout, event.stderr, started, event.ended or started)

    def _ended(self, attempt: Attempt, outcome: Outcome, stdout: bytes, stderr: bytes, started: float,
               ended: float) -> None:
        job = attempt.job
        if outcome.not_started:
            self._progress.clear()
            print(f"router batch: job {job.seq} did not start on {attempt.target}: "
                  f"{outcome.not_started}", file=self._err, flush=True)
        if outcome.failed and job.attempts < self._options.attempts and not self._stopping:
            job.failed_on.add(attempt.target)
            self._pending.appendleft(job)  # retried next, as parallel does
            return
        self._report(job, outcome, stdout, stderr)
        if self._joblog is not None:
            self._joblog.row(job.seq, attempt.target, started, max(0.0, ended - started),
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

    def _warn(self, line: str) -> None:
        self._progress.clear()
        print(f"router batch: {line}", file=self._err, flush=True)

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
        failing: set[str] = set()
        for exec_id, attempt in list(self._running.items()):
            if exec_id in self._killed or attempt.target in failing:
                continue
            self._killed.add(exec_id)
            try:
                self._fleet.host(attempt.target).client.kill(exec_id, KILL_GRACE_SECS, timeout=KILL_GRACE_SECS + 10)
            except (grpc.RpcError, ValueError):  # ValueError: its channel is closed
                failing.add(attempt.target)  # (Kill of an exec that has exited answers its exit)


def widen_pipe(stream: BinaryIO) -> None:
    """If `stream` is a pipe, make its buffer PIPE_BYTES: with the default 64 KiB each job's output
    waits for the reader to take it, a round trip between the two processes per 64 KiB."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # not a pipe, or no fd
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def run(fleet: Fleet, source: BinaryIO, options: Options, out: BinaryIO | None = None,
        err: TextIO | None = None) -> int:
    """Read the jobs (skipping those in the joblog, with --resume) and run them; the exit status.
    The caller closes the fleet after."""
    skip = Joblog.logged(options.joblog) if options.resume and options.joblog else set()
    jobs = read_jobs(source, skip)
    out = out or sys.stdout.buffer
    widen_pipe(out)
    runner = Batch(fleet, jobs, options, out, err or sys.stderr)
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only it may handle signals
        previous = {sig: signal.signal(sig, runner.interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fleet.close()  # ends the Watch threads still waiting on a router set aside
        runner.join()


def cmd_batch(args: argparse.Namespace) -> int:
    if args.target_timeout is None:  # an explicit --give-up shorter than the default holds here too
        args.target_timeout = min(DEFAULT_TARGET_TIMEOUT, args.give_up)
    if args.resume and not args.joblog:
        print("router batch: --resume needs --joblog", file=sys.stderr)
        return ROUTER_FAILED
    options = Options(jobs=args.jobs, timeout_secs=args.timeout, attempts=args.retries, halt=args.halt,
                      joblog=args.joblog, results=args.results, resume=args.resume)

    def client(address: str) -> RouterClient:  # no retries: the fleet moves the jobs of a router that fails
        return connect(args, retries=0, target=address, give_up=args.target_timeout, reconnect_secs=RECONNECT_SECS)

    try:
        if not args.target and not args.targets_file:
            with client("") as local:  # the local server's address, as `router exec` finds it
                args.target = [local.target]
        targets = Targets(args.target or (), args.targets_file or ())
    except TargetError as e:
        print(f"router batch: {e}", file=sys.stderr)
        return ROUTER_FAILED
    fleet = Fleet(targets, client, args.target_timeout, sys.stderr)
    fleet.start()
    within = min(args.connect_timeout, args.target_timeout)
    if not fleet.wait_answer(within):
        fleet.close()
        where = ", ".join(fleet.addresses()) or "any target (none resolved)"
        print(f"router batch: cannot reach {where} (within {within:g} s)", file=sys.stderr)
        return ROUTER_FAILED
    try:
        with open(args.file, "rb") if args.file != "-" else contextlib.nullcontext(sys.stdin.buffer) as source:
            return run(fleet, source, options)
    except (BatchError, OSError) as e:
        print(f"router batch: {e}", file=sys.stderr)
        return ROUTER_FAILED
    except RouterRefused as e:
        print(f"router batch: {failure(e.error, fleet.host(e.target).client, None)}", file=sys.stderr)
        return ROUTER_FAILED
    except KeyboardInterrupt:  # a second Ctrl-C while the first was killing the jobs
        print("router batch: interrupted again; jobs may be left running", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        fleet.close()
