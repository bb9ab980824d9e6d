"""The engine: starts execs and sees them through to the end, on one loop thread.

It wires the parts together: the registry admits an exec, the loop thread spawns it (spawn.py)
with its stdio (child_stdio.py), watches its leader (child.py), drains its output (output.py) and feeds
its stdin (stdin.py). RPC code calls `begin_exec`, `get` and `offer_stdin` from any thread and
waits on the `Exec` (execs.py); it never touches loop objects.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import pathlib
import threading
import time
from collections.abc import Callable

import grpc

from router._fastio import SegmentedLog, SegmentStore
from router.errors import RETRY_AFTER_SECS, RouterError, throttled

from . import adoption, procs, shutdown, signals, spawn, spawn_slots
from .child import Child
from .durability import Durability
from .execs import Exec
from .finished import close_empty_log, close_logs, settle
from .journal import Journal
from .journal_format import Begun, Exited, Forgotten, Record, Spawned, Stdin
from .journaling import ExecJournal
from .limits import base_environment
from .log_space import LogSpace, OnLogFull, remove_arenas, trim
from .loop import LoopThread
from .oom import OomKills
from .output import OutputPipes, exec_outputs
from .records import ExecSpec, ExitStatus
from .registry import Registry
from .restore import restore
from .retention import Retention
from .spawn_threads import Spawner
from .watch import Watcher

logger = logging.getLogger(__name__)

# How often orphans are reaped when the router inherits them (PID 1 or a subreaper).
ORPHAN_REAP_SECS = 1.0
# posix_spawn callers at once: four gave BatchStart its best exec rate among the counts measured
# (benchmarks/HISTORY.md, "Spawning off the loop, without the GIL"; again in "One message for the
# events ready together").
SPAWN_THREADS = 4
# A start that fails with these (and no file named) lacked resources: a retry may work.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOSPC}


class Engine:
    def __init__(self, log_dir: pathlib.Path, *, segment_size: int, stdin_buffer_limit: int,
                 kill_grace_secs: float = 0.0, max_running_execs: int = 0, reap_orphans: bool = False,
                 retention: Retention = Retention(), journal_path: pathlib.Path | None = None,
                 max_exec_output: int = 0, exec_user: spawn.ExecUser | None = None,
                 on_log_full: OnLogFull = "trim", durability: Durability = "process") -> None:
        self._log_dir = log_dir
        self._exec_user = exec_user
        self._segment_size = segment_size
        self._stdin_limit = stdin_buffer_limit
        self._kill_grace = kill_grace_secs
        self._reap_orphans = reap_orphans
        self._retention = retention
        self._max_exec_output = max_exec_output  # 0: as much as retention keeps in all
        self._journal_path, self._durability = journal_path, durability
        self._journal: ExecJournal | None = None
        self._slots: spawn_slots.SpawnSlots | None = None  # with a journal: where spawns note their pids
        self._spawned_record = threading.local()  # a spawner thread's last Spawned: its number in the journal
        self._boot_id = procs.boot_id()
        self._store: SegmentStore | None = None
        self.registry = Registry(max_running_execs)
        self.loop = LoopThread("router-engine")
        self._space = LogSpace(log_dir, self.loop, on_log_full, lambda: self.registry.finished_bytes, self._expire,
                               lambda: self._journal.flush() if self._journal is not None else None)
        self.base_env = base_environment()
        if exec_user is not None:
            self.base_env.update(exec_user.environment())
        # Process groups that outlived their exec (background jobs); stop() ends them. Loop thread only.
        self._lingering_groups: set[int] = set()
        self._watchers: set[Watcher] = set()  # Watch calls; offered each exec as it starts and finishes
        self._oom: OomKills | None = None  # opened at start
        # Threads that run posix_spawn (see _spawn).
        self._spawner: Spawner[Exec, spawn.Started] = Spawner(self.loop, SPAWN_THREADS, self._start_process,
                                                              self._spawned)
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, adopting: adoption.Adoption | None = None) -> None:
        """`adopting`: the running execs a handover brings (router.handover), taken over once the journal is read."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        if self._journal_path is None:
            remove_arenas(self._log_dir)  # without a journal nothing can read what a previous run left
        # Every stream's segments are slots in a few shared files: no file creation per exec.
        self._store = self._space.open_store(self._segment_size)  # segments sized to a small filesystem
        self._retention = self._retention.resolved(str(self._log_dir))
        if self._max_exec_output <= 0:
            self._max_exec_output = self._retention.bytes
        # Keep the head segment and at least two more, so a reader that keeps up is never cut.
        self._max_exec_output = max(self._max_exec_output, 3 * self._store.segment_size)
        if self._journal_path is not None:
            journal, state = Journal.open(self._journal_path)
            slots = self._journal_path.parent / "spawning"
            spawning = spawn_slots.read(slots)  # before SpawnSlots touches the files
            self._slots = spawn_slots.SpawnSlots(slots, self._boot_id, SPAWN_THREADS)
            self._journal = ExecJournal(journal, self.loop, self._store, lambda: self.registry.running,
                                        self._durability)
            adopted = adopting.rebuild(state.execs, self._store, self._stdin_limit) if adopting else []
            restore(state.execs, self._journal.journal, self._store, self.registry, self._stdin_limit,
                    self._boot_id, spawning)
        self._oom = OomKills()
        self.loop.start()
        if self._journal is not None:
            self._journal.start()
        self._spawner.start()
        if adopting is not None:
            self.loop.run(adopting.attach, adopted, self._adopt, timeout=30)
        self.loop.call_soon(self._expire_periodically)
        if self._reap_orphans:
            main_thread_id = threading.main_thread().native_id
            assert main_thread_id is not None
            self.loop.call_soon(self._reap, main_thread_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Kill everything every exec started, reap, close pipes and logs, end the loop thread."""
        execs = self.registry.close()
        if execs is None or self._store is None:
            return
        try:
            self.end_execs(timeout, execs)
            self.loop.run(self._close_all, execs, timeout=timeout)
        finally:
            self.loop.stop(timeout)
            for ex in execs:
                close_logs(ex)
                ex.abandon_waiters()  # their loop has stopped; the aio server ended them first
                ex.notify()
            close_empty_log(self._store)
            self._store.close()
            if self._oom is not None:
                self._oom.close()
            if self._journal is not None:
                self._journal.stop()
                assert self._slots is not None
                self._slots.close()
                self._journal.journal.close(fsync=True)  # the next run serves what this one had
            else:
                remove_arenas(self._log_dir)
                with contextlib.suppress(OSError):
                    self._log_dir.rmdir()  # only if nothing else lives there

    def end_execs(self, timeout: float = 10.0, execs: list[Exec] | None = None) -> None:
        """Kill every exec (cause `shutdown`) and wait until their ends are published, the loop
        still running so that calls waiting on them are answered: at a stop, or a drain's end."""
        self._stopping = True
        shutdown.end_execs(self.loop, self._spawner, self.registry.all() if execs is None else execs,
                           self._lingering_groups, self._forget, timeout)

    # -- any thread ------------------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        return self.registry.running

    @property
    def retention(self) -> Retention:
        return self._retention

    @property
    def journaled(self) -> bool:
        return self._journal is not None

    @property
    def log_full(self) -> bool:
        """The log filesystem is full: room is being made (log_space.py)."""
        return self._space.full

    def on_state_full(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(full)` (loop thread) when new execs start or stop being refused for want
        of room for the journal (journaling.py), and at once with how it is now; after start()."""
        if self._journal is not None:  # on the loop thread: a change meanwhile cannot overtake the first call
            self.loop.run(self._journal.listen_full, listener, timeout=10)

    def get(self, exec_id: str) -> Exec:
        return self.registry.get(exec_id)

    def begin_exec(self, exec_id: str, fingerprint: bytes, spec: ExecSpec) -> Exec:
        """Start an exec, or return the one already started with this id and the same request.
        The loop thread spawns it; its `started` future says when, or raises why the start failed."""
        if self._journal is not None and self._journal.full:
            raise throttled(f"the state filesystem is full: the journal {self._journal.journal.path} keeps its room "
                            "for the exits of running execs", retry_after=RETRY_AFTER_SECS)
        return self.registry.begin(exec_id, fingerprint, lambda: self._new_exec(exec_id, fingerprint, spec),
                                    lambda ex: self.loop.call_soon(self._spawn, ex))

    def _new_exec(self, exec_id: str, fingerprint: bytes, spec: ExecSpec) -> Exec:
        assert self._store is not None
        has_stdout, has_stderr = spec.logged_streams()
        stdout = SegmentedLog(self._store) if has_stdout else None
        stderr = SegmentedLog(self._store) if has_stderr else None
        ex = Exec(exec_id, fingerprint, spec, stdout, stderr, self._stdin_limit)
        if self._journal is not None:
            ex.hold_output_for_journal()
        return ex

    def execs(self) -> list[Exec]:
        """Every exec the router knows, oldest start first."""
        return self.registry.all()

    def signal(self, ex: Exec, sig: int, target: str) -> None:
        """`sig` to the exec's group, leader or terminal session (signals.py), on the loop thread."""
        self.loop.run(functools.partial(signals.send_signal, ex, sig, target), timeout=10)

    def kill(self, ex: Exec, grace: float) -> None:
        """TERM, then KILL after `grace` (at once without one), to the group; the caller waits."""
        self.loop.run(lambda: signals.start_kill(ex, grace, self.loop.loop), timeout=10)

    def resize(self, ex: Exec, rows: int, cols: int) -> None:
        self.loop.run(functools.partial(signals.resize_terminal, ex, rows, cols), timeout=10)

    def watch(self, watcher: Watcher) -> None:
        """Offer `watcher` every exec that started or finished already, then each as it does."""
        def add() -> None:
            self._watchers.add(watcher)
            for ex in self.registry.all():
                if ex.complete:
                    watcher.offer(ex)
                elif ex.child is not None:
                    watcher.offer_started(ex)
        self.loop.run(add, timeout=10)

    def unwatch(self, watcher: Watcher) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): so are the watchers
            self.loop.call_soon(self._watchers.discard, watcher)

    def offer_stdin(self, ex: Exec, offset: int, data: bytes, eof: bool) -> bool:
        """Accept stdin bytes at `offset`, skipping what a retry repeats. False, taking nothing,
        if the buffer has no room yet: offer again once the exec changes."""
        accepted, flush = ex.stdin.offer(offset, data, eof)
        if flush:
            self.loop.call_soon(ex.stdin.flush)
        return accepted

    # -- loop thread: start ----------------------------------------------------------------------

    def _record(self, record: Record) -> None:
        if self._journal is not None:
            self._journal.record(record)

    def _once_written(self, then: Callable[[], None]) -> None:
        """Call `then` once the journal holds every record so far (at once without a journal)."""
        if self._journal is None:
            then()
        else:
            self._journal.when_written(then)

    def _spawn(self, ex: Exec) -> None:
        """To a spawner thread once its Begun is written: a retried start after a crash never runs it
        twice. Pipes exist only inside a spawn: a batch never holds more than SPAWN_THREADS' child ends."""
        self._record(Begun.from_spec(ex.exec_id, ex.fingerprint, ex.spec, ex.started_at, self.base_env))
        self._once_written(lambda: self._submit(ex))

    def _submit(self, ex: Exec) -> None:
        if not self._spawner.submit(ex):
            self._forget(ex, RouterError(grpc.StatusCode.UNAVAILABLE, "the router is stopping"))

    def _start_process(self, ex: Exec) -> spawn.Started:
        """A spawner thread (fixed fields only): the pid to its slot at once (spawn_slots.py), Spawned next."""
        pid_fd = -1
        if self._journal is not None and self._slots is not None:
            # This thread's slot names its last child until that child's Spawned is written.
            with contextlib.suppress(OSError):  # not written: the slot goes on to this spawn all the same
                self._journal.journal.written_through(getattr(self._spawned_record, "number", 0))
            pid_fd = self._slots.claim(ex.exec_id)
        started = spawn.start_process(ex.spec, ex.stdout is not None, ex.stderr is not None, self._exec_user, pid_fd)
        if self._journal is not None and not isinstance(started, Exception):
            self._spawned_record.number = self._journal.journal.append(
                Spawned(ex.exec_id, started.pid, ex.spec.pty is not None, time.time(), self._boot_id))
        return started

    def _spawned(self, outcomes: list[tuple[Exec, spawn.Started | Exception]]) -> None:
        self.registry.spawned(outcomes)
        for ex, outcome in outcomes:
            try:
                self._start_child(ex, outcome)
            except RouterError as e:
                self._forget(ex, e)
            except Exception as e:  # a bug: fail this start loudly, keep the loop alive
                logger.exception("spawning exec %s failed", ex.exec_id)
                self._forget(ex, RouterError(grpc.StatusCode.INTERNAL, f"spawn failed: {e!r}"))
            else:
                self._once_written(functools.partial(self._started, ex))

    def _started(self, ex: Exec) -> None:
        """Its start is journaled: answer it."""
        ex.answer_started()  # and log it (exec_log.py)
        if ex.child is not None:  # not when it failed to start (it has finished instead)
            for watcher in list(self._watchers):
                watcher.offer_started(ex)

    def hand_over(self, give: Callable[[list[adoption.Carried]], None]) -> None:
        """Freeze the loop thread and `give` every running exec to a new process (adoption.py)."""
        assert self._journal is not None
        self.loop.run(adoption.frozen, self.registry, self._journal, self._durability, give)

    def _adopt(self, ex: Exec, started: spawn.Started, child: Child) -> None:
        """Loop thread: an exec a handover brought, watched and drained as if spawned here."""
        self.registry.adopt(ex, ex.leader_status is None)
        self._start_child(ex, started, child)
        child.rearm(self.loop.loop, self._kill_grace)
        self._on_output(ex)

    def _start_child(self, ex: Exec, started: spawn.Started | Exception, adopted: Child | None = None) -> None:
        if isinstance(started, OSError):
            if started.errno in _RESOURCE_ERRNOS and started.filename is None:
                raise throttled(f"cannot start process: {started.strerror}", retry_after=RETRY_AFTER_SECS)
            self._fail_start(ex, started)
            return
        if isinstance(started, Exception):
            raise started
        loop = self.loop.loop
        child = ex.child = adopted or Child(started.pid, started.pidfd, ex.spec.pty is not None)
        child.watch(self.loop.readers, lambda: self._on_exit(ex))
        outputs = exec_outputs(ex, started)
        ex.output = OutputPipes(ex.exec_id, loop, self.loop.readers, outputs, ex.spec.pty is not None,
                                lambda: self._on_output(ex), lambda: self._on_output_done(ex), self._space,
                                self.registry.stats)
        if ex.spec.timeout_secs is not None and adopted is None:
            child.arm_timeout(loop, ex.spec.timeout_secs, self._kill_grace)
        ex.stdin.attach(loop, started.stdin_writer, self.registry.stats)

    def _fail_start(self, ex: Exec, e: OSError) -> None:
        self._set_status(ex, spawn.failed_start_output(ex.spec, ex.logs(), ex.stdout, ex.stderr, e))
        self._on_finished(ex)

    def _forget(self, ex: Exec, error: RouterError) -> None:
        """A start that failed for lack of resources leaves no exec behind, so a retry can run it."""
        self.registry.forget(ex)
        self._record(Forgotten(ex.exec_id))
        close_logs(ex)
        self._once_written(functools.partial(ex.fail, error))

    # -- loop thread: the end --------------------------------------------------------------------

    def _on_exit(self, ex: Exec) -> None:
        """The leader exited: publish its status, but leave it unreaped until the exec is finished."""
        assert ex.child is not None and ex.output is not None
        if (status := ex.child.exit_status()) is None:
            return  # spurious wake-up, or already seen
        ex.stdin.close()
        ex.output.leader_exited()
        self._set_status(ex, status)
        if ex.finished:
            self._on_finished(ex)

    def _on_output(self, ex: Exec) -> None:
        """New output (or an end of stream): wake readers, cap what a running exec keeps, and
        journal where the output is at the next flush."""
        for log in ex.logs():
            if log.held_bytes > self._max_exec_output:
                trim(log, self._max_exec_output)
        if self._journal is None:
            ex.notify()
        else:
            self._journal.output_changed(ex)  # readers get it once it is journaled

    def _on_output_done(self, ex: Exec) -> None:
        if ex.finished:
            self._on_finished(ex)

    def _set_status(self, ex: Exec, status: ExitStatus) -> None:
        """The leader ended: journal how, and once that is written tell the clients."""
        ex.leader_status = status
        cause, ended_at = signals.exit_cause(ex, status, self._oom, self._stopping), time.time()
        self.registry.exited(cause, ended_at - ex.started_at)
        with ex.cond:
            ex.stdin.drop()
        self._record(Exited(ex.exec_id, status, ended_at, cause))
        self._once_written(functools.partial(ex.publish_exit, status, cause, ended_at))

    def _release(self, ex: Exec) -> None:
        if ex.child is not None and ex.child.release():  # background jobs outlive it: stop() ends them
            self._lingering_groups.add(ex.child.pid)

    def _on_finished(self, ex: Exec) -> None:
        """Nothing of the exec runs on: reap it, journal where its output and stdin ended, then
        let it be complete."""
        self._release(ex)
        if self._journal is not None:
            self._journal.output_changed(ex)
            self._journal.record(Stdin(ex.exec_id, ex.stdin.written, ex.stdin.eof))
        self._once_written(functools.partial(self._complete, ex))

    def _complete(self, ex: Exec) -> None:
        """Its last records are written: a Kill, Watch and retention may have it."""
        with ex.cond:
            ex.usage = ex.child.usage if ex.child is not None else None
            ex.complete = True
        ex.notify()  # a Kill waits for this
        if self._journal is not None:
            ex.all_output_journaled()
        settle(ex)  # trimmed to what a finished exec answers with
        self.registry.finished(ex, ex.held_bytes())
        for watcher in list(self._watchers):
            watcher.offer(ex)
        self._expire()

    def _expire(self, need: int = 0) -> None:
        for ex in self.registry.expire(self._retention.releasing(need, self.registry.finished_bytes)):
            self._record(Forgotten(ex.exec_id))
            close_logs(ex)  # slots go back to the store once the last reader is out of the log
            ex.notify()

    def _expire_periodically(self) -> None:
        self._expire()  # next often enough that age is honoured to within a quarter of the limit
        self.loop.loop.call_later(min(max(self._retention.secs / 4, 0.05), 60.0), self._expire_periodically)

    # -- loop thread: shutdown -------------------------------------------------------------------

    def _close_all(self, execs: list[Exec]) -> None:
        for ex in execs:
            if ex.output is not None:
                ex.output.close()
            ex.stdin.close()
            if ex.child is not None and ex.child.held:
                self._on_exit(ex)  # collects the status if the pidfd's wake-up has not run yet
            if ex.child is not None and ex.child.held:
                # Its output ended only now, so nothing finished it yet (or it survived SIGKILL).
                if ex.leader_status is not None:
                    self._on_finished(ex)
                else:
                    self._release(ex)
        if self._journal is not None:
            self._journal.flush()  # the last records, before the loop stops

    def _reap(self, main_thread_id: int) -> None:
        """As init of a container (or a subreaper), reap the orphans an exec's children leave."""
        procs.reap_orphans(main_thread_id)
        self.loop.loop.call_later(ORPHAN_REAP_SECS, self._reap, main_thread_id)
