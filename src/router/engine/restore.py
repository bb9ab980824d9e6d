"""Execs rebuilt from the journal after a restart (or a crash): records, logs and exit statuses.

A finished exec comes back as it was: pollable, waitable, readable from any offset. An exec that
was running when its router died is reported finished with SIGKILL (cause "lost"), its output up to
the last journaled commit readable, and its process group killed if it is still the same group.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator

from router._fastio import SegmentedLog, SegmentStore

from . import exec_log, procs
from .execs import Exec
from .finished import NO_ENV, RestoredStdin, settle
from .journal import Journal
from .journal_format import Exited, JournaledExec, Output, Record
from .records import ExecSpec, ExitCause, ExitStatus
from .registry import Registry
from .spawn_slots import Slot

logger = logging.getLogger(__name__)

LOST = ExitStatus(signal=signal.SIGKILL)
# A process that started this close to when the leader was spawned is the leader: pids cycle
# through tens of thousands before one is reused.
SAME_PROCESS_SECS = 1.0
# /proc gives a process's start to the clock tick (10 ms), and file times lag by about as much.
TICK_SECS = 0.05
# A spawn's child starts this soon after its spawner noted it (spawn_slots.py), at the latest.
SPAWN_SECS = 1.0


def restore(journaled: dict[str, JournaledExec], journal: Journal, store: SegmentStore, registry: Registry,
            stdin_limit: int, boot_id: str, spawning: dict[str, Slot]) -> None:
    """Execs of the previous run into `registry`, finished (or lost, if it died while they ran),
    oldest first; what that adds to the journal is written (and synced) before anything runs."""
    for ex, records in restored_execs(journaled, store, stdin_limit, boot_id, spawning):
        registry.restore(ex, ex.held_bytes())
        for record in records:
            journal.append(record)
            if isinstance(record, Exited):  # lost just now, not at an earlier restart
                registry.stats.exited(ExitCause.LOST, None)
    store.finish_restore()
    journal.flush(fsync=True)
    logger.info("restored %d execs from the journal", registry.finished_count,
                extra={"event": "journal_restored", "execs": registry.finished_count})


def restored_execs(journaled: dict[str, JournaledExec], store: SegmentStore, stdin_limit: int,
                   boot_id: str, spawning: dict[str, Slot]) -> Iterator[tuple[Exec, list[Record]]]:
    """Each journaled exec rebuilt, oldest first, with the records to journal for it: an Exited for
    one that was lost, the end of each stream whose end was never journaled. Slots no exec claims
    are left for the caller's `store.finish_restore()`. An exec whose logs cannot be restored is
    skipped, loudly."""
    for je in journaled.values():
        incomplete = not _output_complete(je)
        if je.exited is None or incomplete:
            # Lost, or its leader exited while something it started still held its output open:
            # nothing of it may run on unwatched (once: what is journaled below says it is over).
            _kill_lost_group(je, boot_id, spawning.get(je.exec_id))
        try:
            ex = rebuilt(je, store, stdin_limit)
        except ValueError as e:
            logger.error("exec %s cannot be restored from the journal, dropped: %s", je.exec_id, e,
                         extra={"event": "exec_restore_failed", "exec_id": je.exec_id})
            continue
        records: list[Record] = []
        if incomplete:
            records += [Output(ex.exec_id, name, log.segments, log.committed, True) for name, log in ex.named_logs()]
        if je.exited is None:
            lost = Exited(je.exec_id, LOST, time.time(), ExitCause.LOST)
            records.append(lost)
            ex.status = LOST
            ex.cause, ex.ended_at = ExitCause.LOST, lost.ended_at
            ex.exited_at = time.monotonic()
            exec_log.ended(ex)
        else:
            ex.status = je.exited.status
            ex.cause, ex.ended_at = je.exited.cause, je.exited.ended_at
            # Retention's age counts from the exit, not from the restart.
            ex.exited_at = time.monotonic() - max(0.0, time.time() - je.exited.ended_at)
        ex.leader_status = ex.status
        ex.complete = True
        ex.started.set_result(None)
        settle(ex)
        # How much stdin it took last is not journaled: a write at any offset is taken for a
        # retry of one acknowledged before (and dropped), never called a gap.
        ex.stdin = RestoredStdin(ex.stdin.written, ex.stdin.eof)
        yield ex, records


def _output_complete(je: JournaledExec) -> bool:
    """Whether no stream the journal recorded was still open (one never recorded, or recorded
    empty and complete, replays as None: taken as complete, so that the group of every finished
    exec is not killed again at every restart, when its id may be someone else's)."""
    return all(out is None or out.eof for out in (je.stdout, je.stderr))


def rebuilt(je: JournaledExec, store: SegmentStore, stdin_limit: int, open_streams: tuple[str, ...] = ()) -> Exec:
    """The exec as journaled, its logs at their journaled length: complete, but for the streams in
    `open_streams` whose end was not journaled (a handover brings their pipes: adoption.py).
    ValueError if a log cannot be restored."""
    b = je.begun
    spec = ExecSpec(args=b.args, env=NO_ENV, workdir=b.workdir, stdout=b.stdout, stderr=b.stderr,
                    timeout_secs=b.timeout_secs, pty=b.pty)
    has_stdout, has_stderr = spec.logged_streams()
    stdout = _restored_log(store, je.stdout, "stdout" in open_streams) if has_stdout else None
    try:
        stderr = _restored_log(store, je.stderr, "stderr" in open_streams) if has_stderr else None
    except ValueError:
        if stdout is not None:
            stdout.close()
        raise
    ex = Exec(b.exec_id, b.fingerprint, spec, stdout, stderr, stdin_limit)
    ex.started_at = b.started_at
    if je.stdin is not None:
        ex.stdin.written, ex.stdin.eof = je.stdin.written, je.stdin.eof
    return ex


def _restored_log(store: SegmentStore, out: Output | None, open_: bool) -> SegmentedLog:
    """The log as journaled (a stream never journaled had no output yet), complete unless `open_`."""
    if out is None:
        return SegmentedLog.restore(store, [], 0, not open_)
    return SegmentedLog.restore(store, list(out.slots), out.committed, out.eof or not open_)


def _kill_lost_group(je: JournaledExec, boot_id: str, slot: Slot | None) -> None:
    """Kill what a lost exec started, unless its ids may now name someone else's processes."""
    spawned = je.spawned
    if spawned is None:
        _kill_unjournaled_child(je, boot_id, slot)
        return
    if spawned.boot_id != boot_id:
        return  # a reboot ended it (and ids may be reused)
    pid = spawned.pid
    started = procs.start_time(pid)
    if started is not None and abs(started - spawned.spawned_at) > SAME_PROCESS_SECS:
        return  # the pid, and so the group id, belongs to a newer process
    _kill_group(pid, started is not None, spawned.terminal)


def _kill_unjournaled_child(je: JournaledExec, boot_id: str, slot: Slot | None) -> None:
    """The router died between the spawn and the journal's Spawned: its spawner's slot
    (spawn_slots.py) names the child, which started after the exec began and before the slot's
    pid was written."""
    if slot is None or slot.boot_id != boot_id:
        return  # never spawned, or a reboot ended it
    if slot.pid == 0:
        _kill_child_of_unfinished_spawn(je, slot)
        return
    started = procs.start_time(slot.pid)
    if started is not None and not je.begun.started_at - TICK_SECS <= started <= slot.written_at + TICK_SECS:
        return  # the pid belongs to another process
    _kill_group(slot.pid, started is not None, je.begun.pty is not None)


def _kill_child_of_unfinished_spawn(je: JournaledExec, slot: Slot) -> None:
    """The router died inside a spawn (most of a millisecond: the child runs up to its exec before
    the call returns with its pid). The child, or what it started at once (it may have exited since),
    started just after the slot was written, in a group of its own, and has the exec's environment
    variables (or, with none of its own, its command line): end that group."""
    ours = os.getpgrp()
    for pid, group in procs.started_between(slot.written_at - TICK_SECS, slot.written_at + SPAWN_SECS):
        if group in (0, 1, ours):
            continue
        names = procs.environment_names(pid)
        if (names is not None and je.begun.env_names and names.issuperset(je.begun.env_names)) \
                or procs.command_line(pid) == je.begun.args:
            logger.warning("exec %s was being spawned when its router died: ending group %d", je.exec_id, group,
                           extra={"event": "lost_spawn_ended", "exec_id": je.exec_id, "group": group})
            _kill_group(group, group == pid, je.begun.pty is not None)


def _kill_group(pid: int, leader_alive: bool, terminal: bool) -> None:
    # The leader itself, or its group without it (a group id is not reused while it has members).
    procs.killpg_quietly(pid, signal.SIGKILL)
    if leader_alive:
        procs.kill_quietly(pid, signal.SIGKILL)
    if terminal:
        procs.kill_sessions([pid], signal.SIGKILL)

