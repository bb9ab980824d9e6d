"""Running execs carried from one serving process to the next (a live handover, router.handover):
what the old process exports from its frozen loop thread, and how the new one rebuilds and adopts
them. Their logs come from the journal (the old process flushed it last); the descriptors (pidfd,
pipes or terminal, stdin) and what the journal does not hold (stdin not yet written, timers) come
beside it. The new process is not the parent of an adopted leader: the keeper is (it is their
subreaper once the old process exits), so exits and reaping go through it (`Exits`)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import msgspec

from router._fastio import SegmentStore

from . import procs
from .child import Child
from .durability import Durability
from .execs import Exec
from .journal_format import JournaledExec
from .journaling import ExecJournal
from .records import ExitStatus, exit_status
from .registry import Registry
from .restore import rebuilt
from .spawn import Started
from .stdin_buffer import CarriedStdin, StdinBuffer

logger = logging.getLogger(__name__)


class Exits(Protocol):
    """Exit statuses of processes this one did not start (the keeper's children). Loop thread."""

    def watch(self, pid: int, on_exit: Callable[[bool, int], None]) -> None:
        """Call on_exit(exited normally, code or signal) once `pid` has ended, unreaped."""

    def release(self, pid: int) -> None:
        """Reap `pid` (after its exit was seen): its pid and group id may be reused after this."""


class RunningExec(msgspec.Struct, frozen=True):
    """One running exec as a handover carries it. Descriptors are indexes into the list sent beside
    it (-1: none); times are monotonic (one clock for every process of the machine)."""

    exec_id: str
    pid: int
    terminal: bool
    pidfd: int
    stdout: int = -1  # a stream still open (an ended one is complete in the journal)
    stderr: int = -1
    master: int = -1  # a terminal's master kept after its output ended, until the leader exits
    stdin: int = -1
    stdin_written: int = 0
    stdin_eof: bool = False
    stdin_dropping: bool = False
    stdin_eof_queued: bool = False
    stdin_last: bytes = b""
    timeout_at: float | None = None
    timed_out: bool = False
    kill_at: float | None = None
    kill_requested: bool = False


# What a handover carries of one exec: its state, its stdin not yet written, its descriptors.
Carried = tuple[RunningExec, bytes, list[int]]


def frozen(registry: Registry, journal: ExecJournal, durability: Durability,
           give: Callable[[list[Carried]], None]) -> None:
    """On the loop thread, which stays here while `give` runs (nothing drains, reaps or times out):
    the journal holds every exec as it is, then `give` hands the running ones over. `give` returns
    only if the handover failed (then everything goes on here); once it succeeded it never does."""
    running = [ex for ex in registry.all() if ex.child is not None and ex.child.held]
    for ex in running:
        journal.output_changed(ex)
    journal.flush()  # the Output records, and the answers that waited for records
    journal.journal.flush(fsync=durability == "machine")  # what those answers appended (a Forgotten of an expired exec)
    journal.journal.settle()  # no compaction in flight: the new process opens the file next
    try:
        give([export(ex) for ex in running])
    finally:
        for ex in running:
            thaw(ex)


def export(ex: Exec) -> Carried:
    """Loop thread, frozen: the exec's state, its stdin not yet written, and its descriptors (still
    this process's: it keeps serving with them if the handover fails). Freezes its stdin."""
    child, output = ex.child, ex.output
    assert child is not None and output is not None
    fds = [child.pidfd]

    def index(fd: int) -> int:
        if fd < 0:
            return -1
        fds.append(fd)
        return len(fds) - 1

    streams, master = output.descriptors()
    by_log = {id(log): fd for fd, log in streams.items()}
    with ex.cond:
        stdin = _buffer(ex).freeze()
    running = RunningExec(
        ex.exec_id, child.pid, child.terminal, 0,
        stdout=index(by_log.get(id(ex.stdout), -1)), stderr=index(by_log.get(id(ex.stderr), -1)),
        master=index(master), stdin=index(stdin.fd), stdin_written=stdin.written, stdin_eof=stdin.eof,
        stdin_dropping=stdin.dropping, stdin_eof_queued=stdin.eof_queued, stdin_last=stdin.last,
        timeout_at=child.timeout_at, timed_out=child.timed_out, kill_at=child.kill_at,
        kill_requested=ex.kill_requested)
    return running, stdin.pending, fds


def thaw(ex: Exec) -> None:
    """The handover failed: the exec goes on here."""
    with ex.cond:
        _buffer(ex).thaw()


def _buffer(ex: Exec) -> StdinBuffer:
    assert isinstance(ex.stdin, StdinBuffer)  # a running exec's
    return ex.stdin


def rebuild(journaled: dict[str, JournaledExec], carried: dict[str, Carried], store: SegmentStore,
            stdin_limit: int) -> list[Exec]:
    """The carried execs, taken out of `journaled` (before the restore of the rest), each with its
    logs at their journaled length and still open where a pipe comes with it. ValueError if the
    journal does not know one (the old process did not flush it: the handover cannot go on)."""
    execs = []
    for exec_id, (running, pending, _) in carried.items():
        je = journaled.pop(exec_id, None)
        if je is None or je.spawned is None:
            raise ValueError(f"exec {exec_id} is not in the journal")
        open_streams = tuple(name for name, fd in (("stdout", running.stdout), ("stderr", running.stderr)) if fd >= 0)
        ex = rebuilt(je, store, stdin_limit, open_streams)
        ex.hold_output_for_journal()
        lengths = {}
        for name, log in ex.named_logs():
            ex.journaled_output[name] = (log.committed, log.eof)
            lengths[name] = log.committed
        ex.output_journaled(lengths)
        ex.kill_requested = running.kill_requested
        _buffer(ex).carry_on(CarriedStdin(-1, running.stdin_written, running.stdin_eof, pending,
                                       running.stdin_dropping, running.stdin_eof_queued, running.stdin_last))
        if je.exited is not None:  # the old process saw the leader exit; its output goes on
            ex.leader_status = ex.status = je.exited.status
            ex.cause, ex.ended_at = je.exited.cause, je.exited.ended_at
            with ex.cond:
                ex.stdin.drop()
        ex.started.set_result(None)
        execs.append(ex)
    return execs


class Adoption:
    """The new process's side: what the old one sent, rebuilt once the journal is read (`rebuild`),
    then taken over on the loop thread (`attach`)."""

    def __init__(self, carried: list[Carried], exits: Exits) -> None:
        self.carried = {running.exec_id: (running, pending, fds) for running, pending, fds in carried}
        self.exits = exits

    def rebuild(self, journaled: dict[str, JournaledExec], store: SegmentStore, stdin_limit: int) -> list[Exec]:
        return rebuild(journaled, self.carried, store, stdin_limit)

    def attach(self, execs: list[Exec], adopt: Callable[[Exec, Started, Child], None]) -> None:
        for ex in execs:
            running, _, fds = self.carried[ex.exec_id]
            fd = [*fds, -1]  # index -1: none
            child = AdoptedChild(running, fds[running.pidfd], self.exits, ex.leader_status)
            adopt(ex, Started(running.pid, fd[running.pidfd], fd[running.stdin], fd[running.stdout],
                              fd[running.stderr]), child)
            if ex.output is not None:
                if running.master >= 0:
                    ex.output.keep_master(fds[running.master])
                if ex.leader_status is not None:  # the old process saw it exit: no terminal to keep
                    ex.output.leader_exited()


class AdoptedChild(Child):
    """A leader started by an earlier serving process: signalled through its pidfd as any, but its
    exit seen and its reaping done by the keeper (`exits`)."""

    def __init__(self, running: RunningExec, pidfd: int, exits: Exits, leader_status: ExitStatus | None) -> None:
        super().__init__(running.pid, pidfd, running.terminal)
        self._exits = exits
        self._ended: tuple[bool, int] | None = None
        self.exited = leader_status is not None
        self.timeout_at, self.timed_out, self.kill_at = running.timeout_at, running.timed_out, running.kill_at

    def watch(self, readers: object, on_exit: Callable[[], None]) -> None:
        def ended(normally: bool, value: int) -> None:
            self._ended = (normally, value)
            on_exit()
        self._exits.watch(self.pid, ended)

    def exit_status(self) -> ExitStatus | None:
        if self._ended is None or self.exited or not self.held:
            return None
        self.exited = True
        return exit_status(*self._ended)

    def release(self) -> bool:
        if not self.held:
            self.drop()
            return False
        if self.exited:
            self._exits.release(self.pid)
        else:
            logger.error("leader %d survived SIGKILL; leaving it unreaped", self.pid)
        self.drop()
        return procs.group_exists(self.pid)
