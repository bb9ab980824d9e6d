"""The engine: one uvloop event loop, in its own thread, owns every child process, pipe and timer.

Callers on other threads never touch loop objects: they hand work to the loop with
`call_soon_threadsafe`, then wait on the exec's condition variable (threads) or await an
`Exec.changed()` future of their own loop (the grpc.aio server's loop). The loop wakes both
whenever output lands, stdin drains or the exec exits.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import resource
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from typing import Literal

import grpc
import msgspec
import uvloop

from . import procs
from ._fastio import SegmentedLog, SegmentStore
from .errors import RouterError, throttled

log = logging.getLogger(__name__)

# One drain call takes at most this much from one pipe, so that one loud exec cannot starve the rest.
DRAIN_BUDGET = 4 * 1024 * 1024
PIPE_SIZE = 1024 * 1024
# After a failed write to a log, reading that pipe waits this long: the pipe holds the child back.
DRAIN_RETRY_SECS = 0.5
# How often orphans are reaped when the router inherits them (PID 1 or a subreaper).
ORPHAN_REAP_SECS = 1.0
# Descriptors each running exec may hold: stdin, stdout, stderr, pidfd.
FDS_PER_EXEC = 4
FDS_RESERVED = 1024
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOSPC}


class PtySpec(msgspec.Struct, frozen=True):
    rows: int
    cols: int


class ExecSpec(msgspec.Struct, frozen=True):
    """A validated request to run a command; `env` is the child's whole environment."""

    args: list[str]
    env: dict[str, str]
    workdir: str | None = None
    stdout: Literal["devnull", "pipe"] = "pipe"
    stderr: Literal["devnull", "pipe", "stdout"] = "pipe"
    timeout_secs: int | None = None
    pty: PtySpec | None = None


class ExitStatus(msgspec.Struct, frozen=True):
    code: int | None = None
    signal: int | None = None


class Exec:
    """One exec's state. Fields below `cond` are guarded by it; `_`-fields belong to the loop thread."""

    def __init__(self, exec_id: str, fingerprint: bytes, spec: ExecSpec, stdout: SegmentedLog | None,
                 stderr: SegmentedLog | None) -> None:
        self.exec_id = exec_id
        self.fingerprint = fingerprint
        self.spec = spec
        # Where output lands; None when discarded or merged into stdout. See `stream()`.
        self.stdout = stdout
        self.stderr = stderr
        self.started: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Running from the start, so no caller can cancel it (a cancelled TaskExecStart must not
        # leave the exec's id unusable for its retries).
        self.started.set_running_or_notify_cancel()
        self.cond = threading.Condition()
        self.status: ExitStatus | None = None
        self.stdin_written = 0  # bytes accepted so far, the offset the next write continues from
        self.stdin_eof = False
        self.stdin_pending: collections.deque[memoryview] = collections.deque()
        self.stdin_pending_bytes = 0
        self.stdin_dropping = False  # the child is gone or closed its stdin: accept and drop
        self.stdin_last = b""  # the last byte accepted, to end a terminal's input cleanly
        self.failed: RouterError | None = None  # set if the start failed and the exec was dropped
        self._pid = -1
        self._proc: subprocess.Popen[bytes] | None = None
        # Held from spawn until the exec is finished: while it is open the leader stays unreaped
        # once it exits (a zombie), so its pid and process group id cannot be reused.
        self._pidfd = -1
        self._stdin_fd = -1
        self._eof_queued = False
        self._stdin_writer = False
        self._async_waiters: list[asyncio.Future[None]] = []
        self._output_fds: list[int] = []
        self._held_master = -1  # a terminal's master, kept open until the leader exits
        self._timers: list[object] = []
        self._is_pty = spec.pty is not None

    def stream(self, which: Literal["stdout", "stderr"]) -> SegmentedLog | None:
        """The log a reader of `which` gets, or None if that stream is discarded or merged."""
        if which == "stderr":
            return self.stderr
        return self.stdout if self.spec.stdout == "pipe" else None

    @property
    def running(self) -> bool:
        return self.status is None

    @property
    def finished(self) -> bool:
        """The leader exited and every output stream is complete: nothing of it can run on."""
        return self.status is not None and not self._output_fds

    def notify(self) -> None:
        """Wake every waiter: threads on `cond`, and coroutines awaiting `changed()` futures, each
        on its own loop. Callable from any thread."""
        with self.cond:
            self.cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        if waiters:
            _wake(waiters)

    def changed(self) -> asyncio.Future[None]:
        """A future of the running loop that the next notify() completes. Register it, then check
        the condition, then await it: a change in between is not missed."""
        fut = asyncio.get_running_loop().create_future()
        with self.cond:
            self._async_waiters.append(fut)
        return fut

    def forget_waiter(self, fut: asyncio.Future[None]) -> None:
        """Drop a waiter whose call ended first, so a quiet exec does not collect them."""
        with self.cond:
            try:
                self._async_waiters.remove(fut)
            except ValueError:
                pass


def base_environment() -> dict[str, str]:
    """The router's environment less its own settings and credentials (ROUTER_*)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}


def default_max_running_execs() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft - FDS_RESERVED) // FDS_PER_EXEC)


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Engine:
    def __init__(self, log_dir: pathlib.Path, *, segment_size: int, stdin_buffer_limit: int,
                 kill_grace_secs: float = 0.0, max_running_execs: int = 0, reap_orphans: bool = False) -> None:
        self._log_dir = log_dir
        self._reap_orphans = reap_orphans
        self._store: SegmentStore | None = None
        self._segment_size = segment_size
        self._stdin_limit = stdin_buffer_limit
        self._kill_grace = kill_grace_secs
        self._max_running = max_running_execs or default_max_running_execs()
        self._lock = threading.Lock()
        self._execs: dict[str, Exec] = {}
        self._running = 0
        self._closing = False
        self._loop: uvloop.Loop | None = None
        self._loop_ident = -1
        self._thread: threading.Thread | None = None
        self._setsid = shutil.which("setsid")
        self.base_env = base_environment()
        self._lingering_groups: set[int] = set()  # loop thread only

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        # Logs of a previous run that crashed: nothing can read them (exec records do not survive yet).
        self._remove_logs()
        # Every stream's segments are slots in a few shared files: no file creation per exec.
        self._store = SegmentStore(str(self._log_dir), self._segment_size)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="router-engine", daemon=True)
        self._thread.start()
        ready.wait()

    def _run_loop(self, ready: threading.Event) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._loop_ident = threading.get_ident()
        if self._reap_orphans:
            main_thread_id = threading.main_thread().native_id
            assert main_thread_id is not None
            loop.call_soon(self._reap, main_thread_id)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Kill everything every exec started, reap, close pipes and logs, end the loop thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            execs = list(self._execs.values())
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._kill_all, execs)
            deadline = time.monotonic() + timeout
            for ex in execs:
                with ex.cond:
                    while ex.running and ex.failed is None and time.monotonic() < deadline:
                        ex.cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            done = concurrent.futures.Future[None]()
            loop.call_soon_threadsafe(self._close_all, execs, done)
            done.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(timeout)
            for ex in execs:
                for stream in (ex.stdout, ex.stderr):
                    if stream is not None:
                        stream.close()
                ex._async_waiters.clear()  # their loop has stopped; the aio server ended them first
                ex.notify()
            if self._store is not None:
                self._store.close()
            self._remove_logs()
            with contextlib.suppress(OSError):
                self._log_dir.rmdir()  # only if nothing else lives there

    def _remove_logs(self) -> None:
        """Delete the arena files, and nothing else: the log directory may be shared (--log-dir)."""
        for path in self._log_dir.glob("arena-*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _kill_all(self, execs: list[Exec]) -> None:
        for pgid in self._lingering_groups:
            procs.killpg_quietly(pgid, signal.SIGKILL)
        live = [ex for ex in execs if ex._pidfd >= 0]
        for ex in live:
            self._signal_exec(ex, signal.SIGKILL, sessions=False)
        # One /proc scan for every terminal session, rather than one per exec.
        procs.kill_sessions((ex._pid for ex in live if ex._is_pty), signal.SIGKILL)

    def _close_all(self, execs: list[Exec], done: concurrent.futures.Future[None]) -> None:
        try:
            for ex in execs:
                for fd in list(ex._output_fds):
                    self._close_output(ex, fd)
                self._close_stdin(ex)
                self._close_held_master(ex)
                if ex._pidfd >= 0:
                    self._on_exit(ex)  # collects the status if the pidfd's wake-up has not run yet
                    self._release(ex)
        finally:
            done.set_result(None)

    def _reap(self, main_thread_id: int) -> None:
        """As init of a container (or a subreaper), reap the orphans an exec's children leave."""
        procs.reap_orphans(main_thread_id)
        assert self._loop is not None
        self._loop.call_later(ORPHAN_REAP_SECS, self._reap, main_thread_id)

    # -- lookups -----------------------------------------------------------------------------

    def on_loop(self) -> bool:
        return threading.get_ident() == self._loop_ident

    def _submit(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        """Run fn(*args) on the loop thread: now if already there, else as soon as the loop can."""
        if self.on_loop():
            fn(*args)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(fn, *args)

    def get(self, exec_id: str) -> Exec:
        ex = self._execs.get(exec_id)
        if ex is None:
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"exec {exec_id!r} not found")
        return ex

    @property
    def running_count(self) -> int:
        return self._running

    # -- start ---------------------------------------------------------------------------------

    def begin_exec(self, exec_id: str, fingerprint: bytes, spec: ExecSpec) -> Exec:
        """Start an exec, or return the one already started with this id and the same request.
        The loop spawns it (at once when called on the loop); its `started` future says when, or
        raises why the start failed."""
        on_loop = self.on_loop()
        spawn_now = False
        with self._lock:
            if self._closing:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, "router is shutting down")
            ex = self._execs.get(exec_id)
            if ex is None:
                if self._running >= self._max_running:
                    raise throttled(f"too many running execs ({self._running})", retry_after=1.0)
                ex = self._new_exec(exec_id, fingerprint, spec)
                self._execs[exec_id] = ex
                self._running += 1
                if on_loop:
                    spawn_now = True
                else:
                    # Queued under the lock, so stop() (which takes it) sees it before killing.
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._spawn, ex)
            elif ex.fingerprint != fingerprint:
                raise RouterError(grpc.StatusCode.ALREADY_EXISTS,
                                  f"exec {exec_id!r} already exists with a different request")
        if spawn_now:
            self._spawn(ex)
        return ex

    def _new_exec(self, exec_id: str, fingerprint: bytes, spec: ExecSpec) -> Exec:
        stdout = self._new_log() if spec.stdout == "pipe" or spec.pty is not None else None
        stderr = self._new_log() if spec.stderr == "pipe" and spec.pty is None else None
        return Exec(exec_id, fingerprint, spec, stdout, stderr)

    def _new_log(self) -> SegmentedLog:
        assert self._store is not None
        return SegmentedLog(self._store)

    def _forget(self, ex: Exec, error: RouterError) -> None:
        """A start that failed for lack of resources leaves no exec behind, so a retry can run it."""
        with self._lock:
            if self._execs.get(ex.exec_id) is ex:
                del self._execs[ex.exec_id]
            self._running -= 1
        for stream in (ex.stdout, ex.stderr):
            if stream is not None:
                stream.close()
        with ex.cond:
            ex.failed = error
            ex.notify()
        ex.started.set_exception(error)

    # -- loop thread: spawning ---------------------------------------------------------------

    def _spawn(self, ex: Exec) -> None:
        try:
            self._spawn_child(ex)
        except RouterError as e:
            self._forget(ex, e)
        except Exception as e:  # a bug: fail this start loudly, keep the loop alive
            log.exception("spawning exec %s failed", ex.exec_id)
            self._forget(ex, RouterError(grpc.StatusCode.INTERNAL, f"spawn failed: {e!r}"))
        else:
            ex.started.set_result(None)

    def _spawn_child(self, ex: Exec) -> None:
        spec = ex.spec
        child_fds: list[int] = []
        parent_fds: list[int] = []
        try:
            try:
                if spec.pty is not None:
                    stdin, stdout, stderr, stdin_w, reads = self._pty_pipes(ex, child_fds, parent_fds)
                else:
                    stdin, stdout, stderr, stdin_w, reads = self._plain_pipes(ex, child_fds, parent_fds)
            except OSError as e:
                raise throttled(f"cannot create pipes: {e.strerror}", retry_after=1.0) from None
            try:
                pid, proc = self._start_process(ex, stdin, stdout, stderr)
            except OSError as e:
                if e.errno in _RESOURCE_ERRNOS and e.filename is None:
                    raise throttled(f"cannot start process: {e.strerror}", retry_after=1.0) from None
                for fd in parent_fds:
                    os.close(fd)
                parent_fds.clear()
                self._fail_start(ex, e)
                return
        except BaseException:
            for fd in parent_fds:
                os.close(fd)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        ex._proc = proc
        ex._pid = pid
        try:
            ex._pidfd = os.pidfd_open(pid)
        except OSError as e:
            procs.killpg_quietly(pid, signal.SIGKILL)
            procs.kill_quietly(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if proc is not None:
                proc.returncode = -1  # reaped above
            for fd in parent_fds:
                os.close(fd)
            raise throttled(f"cannot watch process: {e.strerror}", retry_after=1.0) from None
        loop = self._loop
        assert loop is not None
        loop.add_reader(ex._pidfd, self._on_exit, ex)
        ex._stdin_fd = stdin_w
        for fd, stream in reads:
            os.set_blocking(fd, False)
            ex._output_fds.append(fd)
            loop.add_reader(fd, self._on_output, ex, stream, fd)
        os.set_blocking(stdin_w, False)
        if spec.timeout_secs is not None:
            ex._timers.append(loop.call_later(spec.timeout_secs, self._on_timeout, ex))
        self._flush_stdin(ex)

    def _start_process(self, ex: Exec, stdin: int, stdout: int, stderr: int) -> tuple[int, subprocess.Popen[bytes] | None]:
        """Start the child with vfork semantics: os.posix_spawn, or Popen (no preexec_fn) when it
        needs a working directory or a terminal, which posix_spawn cannot set up here."""
        spec = ex.spec
        if spec.pty is None and spec.workdir is None:
            return _posix_spawn(spec, stdin, stdout, stderr), None
        argv = list(spec.args)
        if spec.pty is not None:
            # Checked here so that a missing command gets the same message as without a terminal.
            if "/" not in argv[0] and shutil.which(argv[0], path=spec.env.get("PATH", os.defpath)) is None:
                raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
            if self._setsid is None:
                raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "PTY execs need setsid(1) on the router host")
            # setsid(1) makes the child a session leader with the pty as controlling terminal;
            # subprocess cannot do that without preexec_fn, which would rule out vfork.
            argv = [self._setsid, "--ctty", *argv]
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, env=spec.env, cwd=spec.workdir,
            process_group=None if spec.pty is not None else 0, close_fds=True,
        )
        return proc.pid, proc

    def _plain_pipes(self, ex: Exec, child_fds: list[int], parent_fds: list[int]):
        def pipe() -> tuple[int, int]:
            r, w = os.pipe2(os.O_CLOEXEC)
            child_fds.append(r)
            parent_fds.append(w)
            return r, w

        def output_pipe() -> tuple[int, int]:
            r, w = os.pipe2(os.O_CLOEXEC)
            parent_fds.append(r)
            child_fds.append(w)
            try:
                fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # bigger pipes are an optimisation; the limit for unprivileged users is lower
            return r, w

        stdin_r, stdin_w = pipe()
        reads: list[tuple[int, SegmentedLog]] = []
        stdout: int = subprocess.DEVNULL
        if ex.stdout is not None:
            r, stdout = output_pipe()
            reads.append((r, ex.stdout))
        stderr: int
        if ex.spec.stderr == "stdout":
            stderr = subprocess.STDOUT
        elif ex.stderr is not None:
            r, stderr = output_pipe()
            reads.append((r, ex.stderr))
        else:
            stderr = subprocess.DEVNULL
        return stdin_r, stdout, stderr, stdin_w, reads

    def _pty_pipes(self, ex: Exec, child_fds: list[int], parent_fds: list[int]):
        spec = ex.spec.pty
        assert spec is not None
        master, slave = os.openpty()
        parent_fds.append(master)
        child_fds.append(slave)
        os.set_inheritable(master, False)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", spec.rows, spec.cols, 0, 0))
        # Writes go through their own descriptor so that closing stdin never closes the output side.
        stdin_w = os.dup(master)
        parent_fds.append(stdin_w)
        assert ex.stdout is not None  # a terminal's output is always drained, or the child would block
        return slave, slave, slave, stdin_w, [(master, ex.stdout)]

    def _fail_start(self, ex: Exec, e: OSError) -> None:
        """Like a shell: a command that cannot start exits 127 (not found) or 126, saying why."""
        code = 127 if e.errno == errno.ENOENT else 126
        if ex.spec.workdir is not None and e.filename == ex.spec.workdir:
            reason = f"router: cannot enter workdir {ex.spec.workdir}: {e.strerror}\n"
        else:
            what = "command not found" if code == 127 else e.strerror
            reason = f"router: {ex.spec.args[0]}: {what}\n"
        target = ex.stderr if ex.stderr is not None else (ex.stdout if ex.spec.stderr == "stdout" or ex._is_pty else None)
        if target is not None:
            target.append(reason.encode("utf-8", "replace"))
        for stream in (ex.stdout, ex.stderr):
            if stream is not None:
                stream.mark_eof()
        self._set_status(ex, ExitStatus(code=code))

    # -- loop thread: events -------------------------------------------------------------------

    def _on_output(self, ex: Exec, stream: SegmentedLog, fd: int) -> None:
        try:
            n, eof = stream.drain(fd, DRAIN_BUDGET)
        except OSError as e:
            # The log kept what it took from the pipe; stop reading until writing can work again.
            log.error("writing output of exec %s failed, retrying in %ss: %s", ex.exec_id, DRAIN_RETRY_SECS, e)
            assert self._loop is not None
            self._loop.remove_reader(fd)
            ex._timers.append(self._loop.call_later(DRAIN_RETRY_SECS, self._resume_output, ex, stream, fd))
            return
        if eof:
            self._close_output(ex, fd)
        if n or eof:
            ex.notify()

    def _resume_output(self, ex: Exec, stream: SegmentedLog, fd: int) -> None:
        if fd in ex._output_fds:
            assert self._loop is not None
            self._loop.add_reader(fd, self._on_output, ex, stream, fd)

    def _close_output(self, ex: Exec, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_reader(fd)
        ex._output_fds.remove(fd)
        if ex._is_pty and ex.status is None:
            # Closing the master hangs the terminal up (SIGHUP): a program that closes its
            # terminal descriptors just before exiting (cat does) must be left to exit.
            ex._held_master = fd
        else:
            os.close(fd)
        for stream in (ex.stdout, ex.stderr):
            if stream is not None and not stream.eof and not ex._output_fds:
                stream.mark_eof()
        if ex.finished:
            self._release(ex)

    def _on_exit(self, ex: Exec) -> None:
        """The leader exited: publish its status, but leave it unreaped until the exec is finished."""
        if ex.status is not None:
            return
        info = os.waitid(os.P_PIDFD, ex._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return  # spurious wake-up
        assert self._loop is not None
        self._loop.remove_reader(ex._pidfd)
        self._close_stdin(ex)
        self._close_held_master(ex)
        if info.si_code == os.CLD_EXITED:
            self._set_status(ex, ExitStatus(code=info.si_status))
        else:
            self._set_status(ex, ExitStatus(signal=info.si_status))
        if ex.finished:
            self._release(ex)

    @staticmethod
    def _close_held_master(ex: Exec) -> None:
        if ex._held_master >= 0:
            os.close(ex._held_master)
            ex._held_master = -1

    def _release(self, ex: Exec) -> None:
        """Reap the leader and drop the pidfd: after this its pid and group id may be reused."""
        for timer in ex._timers:
            timer.cancel()  # type: ignore[attr-defined]
        ex._timers.clear()
        if ex._pidfd < 0:
            return
        assert self._loop is not None
        self._loop.remove_reader(ex._pidfd)
        if ex.status is not None:
            os.waitid(os.P_PIDFD, ex._pidfd, os.WEXITED | os.WNOHANG)
        else:
            log.error("exec %s: leader %d survived SIGKILL; leaving it unreaped", ex.exec_id, ex._pid)
        if ex._proc is not None:
            ex._proc.returncode = -1  # reaped here: Popen must never wait for it again
        os.close(ex._pidfd)
        ex._pidfd = -1
        ex._proc = None
        if procs.group_exists(ex._pid):
            # Background processes that closed their output outlive the exec; stop() ends them.
            # (Linux keeps a group's id from reuse while it has members.)
            self._lingering_groups.add(ex._pid)

    def _set_status(self, ex: Exec, status: ExitStatus) -> None:
        with self._lock:
            self._running -= 1
        with ex.cond:
            ex.status = status
            ex.stdin_dropping = True
            ex.stdin_pending.clear()
            ex.stdin_pending_bytes = 0
            ex.notify()

    def _on_timeout(self, ex: Exec) -> None:
        if ex._pidfd < 0:
            return
        if self._kill_grace > 0:
            self._signal_exec(ex, signal.SIGTERM)
            assert self._loop is not None
            ex._timers.append(self._loop.call_later(self._kill_grace, self._signal_exec, ex, signal.SIGKILL))
        else:
            self._signal_exec(ex, signal.SIGKILL)

    def _signal_exec(self, ex: Exec, sig: int, sessions: bool = True) -> None:
        """Signal the exec's process group, its leader (even if it left the group) and, for a
        terminal, its whole session. Safe while the pidfd is held: the ids cannot be reused."""
        if ex._pidfd < 0:
            return
        procs.killpg_quietly(ex._pid, sig)
        if ex.status is None:
            procs.signal_pidfd(ex._pidfd, sig)
        if sessions and ex._is_pty:
            procs.kill_sessions([ex._pid], sig)

    # -- stdin -----------------------------------------------------------------------------------

    def offer_stdin(self, ex: Exec, offset: int, data: bytes, eof: bool) -> bool:
        """Accept stdin bytes at `offset`, skipping what a retry repeats. False, taking nothing,
        if the buffer has no room yet: call again once the exec changes."""
        view = memoryview(data)
        with ex.cond:
            if offset > ex.stdin_written:
                raise RouterError(grpc.StatusCode.OUT_OF_RANGE,
                                  f"offset {offset} is past the {ex.stdin_written} bytes written so far")
            new = view[ex.stdin_written - offset:]
            if ex.stdin_eof:
                if len(new):
                    raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "stdin is already closed")
                return True
            pending = ex.stdin_pending_bytes
            if not (ex.stdin_dropping or not pending or pending + len(new) <= self._stdin_limit):
                return False
            ex.stdin_written += len(new)
            ex.stdin_eof = eof
            if len(new):
                ex.stdin_last = bytes(new[-1:])
            dropping = ex.stdin_dropping
            if not dropping and len(new):
                ex.stdin_pending.append(new)
                ex.stdin_pending_bytes += len(new)
        if not dropping:
            self._submit(self._flush_stdin, ex)
        return True

    def write_stdin(self, ex: Exec, offset: int, data: bytes, eof: bool, deadline: float | None,
                    is_active=lambda: True) -> None:
        """offer_stdin from a thread, waiting for room until `deadline` while the call is active."""
        while not self.offer_stdin(ex, offset, data, eof):
            with ex.cond:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or not is_active():
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "stdin buffer stayed full until the deadline")
                if ex.stdin_pending_bytes:
                    ex.cond.wait(1.0 if remaining is None else min(remaining, 1.0))

    def _flush_stdin(self, ex: Exec) -> None:
        fd = ex._stdin_fd
        if fd < 0:
            return
        with ex.cond:
            if ex._is_pty and ex.stdin_eof and not ex._eof_queued and not ex.stdin_dropping:
                ex._eof_queued = True
                eof_bytes = _terminal_eof(fd, ex.stdin_last)
                ex.stdin_pending.append(memoryview(eof_bytes))
                ex.stdin_pending_bytes += len(eof_bytes)
            while ex.stdin_pending:
                chunk = ex.stdin_pending[0]
                try:
                    n = os.write(fd, chunk)
                except BlockingIOError:
                    break
                except OSError:
                    # EPIPE: the child closed its stdin. What is left can never be delivered.
                    ex.stdin_dropping = True
                    ex.stdin_pending.clear()
                    ex.stdin_pending_bytes = 0
                    break
                ex.stdin_pending_bytes -= n
                if n < len(chunk):
                    ex.stdin_pending[0] = chunk[n:]
                    break
                ex.stdin_pending.popleft()
            more = bool(ex.stdin_pending)
            close = not more and (ex.stdin_eof or ex.stdin_dropping)
            ex.notify()
        assert self._loop is not None
        if more and not ex._stdin_writer:
            self._loop.add_writer(fd, self._flush_stdin, ex)
            ex._stdin_writer = True
        elif not more and ex._stdin_writer:
            self._loop.remove_writer(fd)
            ex._stdin_writer = False
        if close:
            self._close_stdin(ex)

    def _close_stdin(self, ex: Exec) -> None:
        fd, ex._stdin_fd = ex._stdin_fd, -1
        if fd < 0:
            return
        if ex._stdin_writer:
            assert self._loop is not None
            self._loop.remove_writer(fd)
            ex._stdin_writer = False
        os.close(fd)


# Python ignores these; a child must start with the defaults, as Popen(restore_signals=True) does.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _posix_spawn(spec: ExecSpec, stdin: int, stdout: int, stderr: int) -> int:
    """posix_spawn into its own process group, stdio as given (subprocess.DEVNULL/STDOUT understood).
    Every descriptor of the router is close-on-exec (PEP 446), so only these three are inherited."""
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, stdin, 0)]
    for fd, target in ((stdout, 1), (stderr, 2)):
        if fd == subprocess.DEVNULL:
            actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_WRONLY, 0))
        elif fd == subprocess.STDOUT:
            actions.append((os.POSIX_SPAWN_DUP2, 1, target))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    argv = spec.args
    path = spec.env.get("PATH", os.defpath)
    kwargs = {"file_actions": actions, "setpgroup": 0, "setsigdef": _RESTORED_SIGNALS, "setsigmask": ()}
    if "/" in argv[0]:
        return os.posix_spawn(argv[0], argv, spec.env, **kwargs)  # type: ignore[arg-type]
    if path == os.environ.get("PATH"):
        return os.posix_spawnp(argv[0], argv, spec.env, **kwargs)  # type: ignore[arg-type]
    # posix_spawnp searches the router's PATH; the exec's own PATH decides.
    resolved = shutil.which(argv[0], path=path)
    if resolved is None:
        raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
    return os.posix_spawn(resolved, argv, spec.env, **kwargs)  # type: ignore[arg-type]


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """Complete futures on their loops: directly on our own, through call_soon_threadsafe otherwise."""
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for fut in waiters:
        by_loop.setdefault(fut.get_loop(), []).append(fut)
    for loop, futs in by_loop.items():
        if loop is here:
            _complete(futs)
        else:
            try:
                loop.call_soon_threadsafe(_complete, futs)
            except RuntimeError:
                pass  # that loop is closed: its calls are over


def _complete(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)


def _terminal_eof(fd: int, last: bytes) -> bytes:
    """What ends a terminal's input: its EOF character, twice unless at the start of a line
    (the first only pushes out a partial line). A terminal in raw mode has no end of input."""
    attrs = termios.tcgetattr(fd)
    if not attrs[3] & termios.ICANON:
        return b""
    veof = attrs[6][termios.VEOF]
    return veof if last in (b"", b"\n") else veof * 2
