"""The keeper: what `router serve` runs as. It holds the state directory's lock, is the subreaper of
every exec, and starts the serving process (`router serve` again, with ROUTER_KEEPER_FD set),
passing signals on to it. On SIGUSR2 it starts a successor from the code installed now, which takes
the running execs over from the serving process (give.py, take.py); the keeper itself never exits
during a handover, so a systemd unit or a container whose PID 1 it is keeps running.

A leader whose serving process handed it over becomes the keeper's child once that process exits:
the keeper tells the serving process its exit status (Exited) and reaps it when told (Release).
Any other child that is not a serving process is an orphan, reaped at once. One thread, one
selector: signals arrive as bytes on a pipe (signal.set_wakeup_fd).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import selectors
import signal
import socket
import sys
import time

from router import config
from router.engine import procs

from . import messages, wire

logger = logging.getLogger(__name__)

KEEPER_FD = "ROUTER_KEEPER_FD"
HANDOVER_FD = "ROUTER_HANDOVER_FD"
LOCK_FD = "ROUTER_LOCK_FD"  # the state directory's lock, held by the keeper for every serving process
HANDOVER_STATUS = "handover"  # in STATE_DIR: "started: PID", "serving: PID" or "failed: why"
# A serving process that exits with this lost its execs' state mid-handover: start a fresh one
# (it restores from the journal, as after a crash).
RESTART = 75
# A serving process that crashes (dies of a signal) is restarted, at most this often.
RESTARTS, RESTART_WINDOW_SECS = 3, 60.0
# A successor that has not served by then (the old process gives up on it well before) is killed.
SUCCESSOR_SECS = 420.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class ServingProcess:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.started = time.monotonic()
        self.serving = False  # said Serving (a successor, once it has taken over)


class Keeper:
    def __init__(self, argv: list[str], lock: int, state_dir: pathlib.Path) -> None:
        self._argv = argv
        self._lock = lock
        self._state_dir = state_dir
        self._selector = selectors.DefaultSelector()
        self.current: ServingProcess | None = None
        self._successor: ServingProcess | None = None
        self._retired: set[int] = set()  # serving processes that handed over, not yet exited
        # Leaders handed over, each with the serving process that adopted it last: told of its exit
        # (once per adoption: a successor adopting it again is told again), reaped when it says.
        self._adopted: dict[int, ServingProcess] = {}
        self._reported: set[int] = set()
        self._restarts: list[float] = []
        self._exit_code: int | None = None
        self._deferred: list[int] = []  # signals that came during a handover: for whoever serves after it

    # -- processes -------------------------------------------------------------------------------

    def _start(self, handover: socket.socket | None = None, extra: tuple[str, ...] = ()) -> ServingProcess:
        ours, theirs = wire.pair()
        env = dict(os.environ, **{KEEPER_FD: str(theirs.fileno()), LOCK_FD: str(self._lock)})
        passed = [theirs.fileno()]
        if handover is not None:
            env[HANDOVER_FD] = str(handover.fileno())
            passed.append(handover.fileno())
        argv = [sys.executable, "-m", "router.cli", *self._argv, *extra]
        keeper = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child execs at once)
            try:
                os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the keeper, which passes it on once
                procs.prctl(procs.PR_SET_PDEATHSIG, signal.SIGKILL)  # a killed keeper takes its server along
                if os.getppid() != keeper:
                    os._exit(1)
                for fd in passed:
                    os.set_inheritable(fd, True)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        theirs.close()
        if handover is not None:
            handover.close()
        proc = ServingProcess(pid, ours)
        self._selector.register(ours, selectors.EVENT_READ, proc)
        return proc

    def _hand_over(self) -> None:
        current = self.current
        if current is None or self._successor is not None:
            logger.warning("SIGUSR2: a handover is under way already (or nothing serves): ignored")
            return
        old_end, new_end = wire.pair()
        self._successor = self._start(new_end, self._last_listen())
        logger.info("handover: started pid %d to take over from pid %d", self._successor.pid, current.pid)
        self._status(f"started: {self._successor.pid}")
        try:
            wire.send(current.sock, messages.HandOver(), [old_end.fileno()])
        except OSError as e:
            logger.error("handover: cannot reach the serving process: %s", e)
        finally:
            old_end.close()

    def _on_message(self, proc: ServingProcess) -> None:
        try:
            msg, fds = wire.recv(proc.sock, messages.to_keeper)
        except EOFError:
            self._selector.unregister(proc.sock)
            return
        except (OSError, ValueError) as e:
            logger.error("keeper: a bad message from pid %d: %s", proc.pid, e)
            return
        wire.close_all(fds)
        if isinstance(msg, messages.Adopt):
            for pid in msg.pids:
                self._adopted[pid] = proc
                self._reported.discard(pid)  # an exit its predecessor was told, frozen, and never handled
            self._send(proc, messages.Adopted())
            self._reap()
        elif isinstance(msg, messages.Release):
            if self._adopted.get(msg.pid) is proc:  # only its owner's word (not any process's)
                del self._adopted[msg.pid]
                self._reported.discard(msg.pid)
                _reap_quietly(msg.pid)
        elif isinstance(msg, messages.Serving) and proc is self._successor:
            old, self.current, self._successor = self.current, proc, None
            proc.serving = True
            if old is not None:
                self._retired.add(old.pid)
            logger.info("handover: pid %d serves", proc.pid)
            self._status(f"serving: {proc.pid}")
            self._replay()

    def _reap(self) -> None:
        children = _children()
        serving = {proc.pid for proc in (self.current, self._successor) if proc is not None} | self._retired
        for pid in children:  # serving processes first: an exit below goes to whoever owns it now
            if pid in serving:
                try:
                    ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
                except ChildProcessError:
                    continue
                if ended is not None:
                    self._serving_exited(pid, ended)
        for pid in children:
            if pid in serving:
                continue
            owner = self._adopted.get(pid)
            if owner is None:
                _reap_quietly(pid)  # an orphan
            elif pid not in self._reported:
                try:
                    ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    continue
                if ended is not None:
                    self._reported.add(pid)
                    self._send(owner, messages.Exited(pid, ended.si_code == os.CLD_EXITED, ended.si_status))

    def _send(self, proc: ServingProcess, msg: object) -> None:
        """To a serving process; one that is gone is seen gone at its exit (its socket is closed then)."""
        try:
            wire.send(proc.sock, msg)
        except (OSError, ValueError) as e:
            logger.warning("keeper: cannot tell pid %d: %s", proc.pid, e)

    def _serving_exited(self, pid: int, ended: os.waitid_result) -> None:
        code = ended.si_status if ended.si_code == os.CLD_EXITED else 128 + ended.si_status
        if pid in self._retired:
            self._retired.discard(pid)
            logger.info("handover: the old serving process %d has exited", pid)
            self._reap()  # its adopted leaders are ours now
            return
        successor = self._successor
        if successor is not None and pid == successor.pid:
            self._close(successor)
            self._successor = None
            logger.error("handover failed: the new serving process %d exited (%d) before serving", pid, code)
            self._status(f"failed: the new serving process {pid} exited ({code}) before serving")
            if self.current is None:  # the old one is gone too: start afresh from the journal
                self._adopted.clear()
                self._reported.clear()
                self.current = self._start(extra=self._last_listen())
            self._replay()
            return
        assert self.current is not None
        self._close(self.current)
        self.current = None
        if self._successor is not None:
            # It died during a handover: the successor carries on (or, if it fails too, a fresh start).
            logger.error("the serving process %d ended (%d) during a handover", pid, code)
            self._retired.discard(pid)
            return
        crashed = ended.si_code != os.CLD_EXITED or code == RESTART
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_SECS]
        if crashed and len(self._restarts) < RESTARTS:
            self._restarts.append(now)
            logger.error("the serving process %d ended (%d): starting a new one", pid, code)
            self._adopted.clear()  # the new one restores them as lost: orphans now
            self._reported.clear()
            self.current = self._start(extra=self._last_listen())
        else:
            self._exit_code = code

    def _last_listen(self) -> tuple[str, ...]:
        """The address the router serves (a port 0 was chosen once): the next serving process's."""
        info = config.read_server_info(self._state_dir)
        return ("--listen", info.listen) if info is not None else ()

    def _status(self, line: str) -> None:
        """The last handover's outcome, for `router serve --takeover` (STATE_DIR/handover)."""
        try:
            config.write_private(self._state_dir / HANDOVER_STATUS, f"{line}\n".encode())
        except OSError as e:
            logger.warning("keeper: cannot write %s: %s", HANDOVER_STATUS, e)

    def _replay(self) -> None:
        deferred, self._deferred = self._deferred, []
        for sig in deferred:
            self._on_signal(sig)

    def _close(self, proc: ServingProcess) -> None:
        if proc.sock.fileno() >= 0:
            try:
                self._selector.unregister(proc.sock)
            except (KeyError, ValueError):
                pass
            proc.sock.close()

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        procs.prctl(procs.PR_SET_CHILD_SUBREAPER, 1)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w)
        for sig in (*FORWARDED, signal.SIGUSR2, signal.SIGCHLD):
            # SIGHUP and SIGQUIT ignored as started (nohup) stay so, here and below; SIGINT and
            # SIGTERM always stop it (a script's background job starts with SIGINT ignored).
            if sig in (signal.SIGINT, signal.SIGTERM) or signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, lambda *_: None)
        self._selector.register(r, selectors.EVENT_READ, None)
        self.current = self._start()
        while self._exit_code is None:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is None:
                    for signum in os.read(r, 256):
                        self._on_signal(signum)
                else:
                    self._on_message(key.data)
            self._reap()  # SIGCHLD, and every second for a missed one
            successor = self._successor
            if successor is not None and time.monotonic() - successor.started > SUCCESSOR_SECS:
                logger.error("handover: pid %d did not serve within %ss: killed", successor.pid, SUCCESSOR_SECS)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(successor.pid, signal.SIGKILL)
        return self._exit_code

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGUSR2:
            self._hand_over()
        elif sig in FORWARDED and self._successor is not None:
            self._deferred.append(sig)  # the old process is frozen: a stop waits for the outcome
        elif sig in FORWARDED and self.current is not None:
            try:
                os.kill(self.current.pid, sig)
            except ProcessLookupError:
                pass


def passed_fd(name: str) -> int:
    """In a serving process: the descriptor the keeper passed in the environment variable `name`,
    made close-on-exec (execs must not inherit it)."""
    fd = int(os.environ.pop(name))
    os.set_inheritable(fd, False)
    return fd


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def keep(argv: list[str], state_dir: pathlib.Path) -> int:
    """`router serve` as the keeper: lock the state directory, then serve through child processes."""
    try:
        lock = config.lock_state_dir(state_dir)
    except config.StateDirBusy as e:
        print(f"router serve: {e}", file=sys.stderr)
        return 1
    os.set_inheritable(lock, True)  # the serving processes hold it too: the lock outlives a handover
    return Keeper(argv, lock, state_dir).run()
