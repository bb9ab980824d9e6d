"""A serving process's side of the keeper (KeeperLink) and of a handover: giving its running execs
to a successor (`give`), and taking them from the process it succeeds (`take`)."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import grpc

from router import __version__
from router.engine.adoption import Carried
from router.errors import RouterError

from . import listeners, messages, wire
from .keeper import RESTART

logger = logging.getLogger(__name__)

# How long a successor may take to say Hello (it imports and reads its configuration first), then
# to commit once it has the execs, then to serve once committed (it replays the journal).
HELLO_SECS, COMMIT_SECS, SERVING_SECS = 60.0, 30.0, 300.0
# Tests make a successor fail on purpose: "version" (it speaks another protocol), "before-commit"
# (it dies with the execs in hand), or dawdle: "slow-commit" (2 s before it commits).
FAILPOINT = "ROUTER_HANDOVER_FAILPOINT"
# A spawn in flight when a handover starts finishes before the loop freezes, within this.
SPAWNS_SECS = 5.0


class HandoverFailed(Exception):
    pass


class KeeperLink:
    """The socket to the keeper: exit statuses of adopted leaders in, handover requests in,
    Adopt/Release/Serving out. A thread reads it; anything may send."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._adopted = threading.Event()
        self._watched: dict[int, Callable[[bool, int], None]] = {}
        self._ended: dict[int, tuple[bool, int]] = {}
        self._call_soon: Callable[..., None] | None = None  # the engine loop's
        self.on_handover: Callable[[socket.socket], None] | None = None
        self._thread = threading.Thread(target=self._read, name="router-keeper", daemon=True)

    def start(self, call_soon: Callable[..., None]) -> None:
        self._call_soon = call_soon
        self._thread.start()

    def send(self, msg: object) -> None:
        with self._send_lock:
            wire.send(self._sock, msg)

    # -- engine.adoption.Exits (loop thread) --------------------------------------------------------

    def watch(self, pid: int, on_exit: Callable[[bool, int], None]) -> None:
        ended = self._ended.pop(pid, None)
        if ended is not None:
            on_exit(*ended)
        else:
            self._watched[pid] = on_exit

    def release(self, pid: int) -> None:
        try:
            self.send(messages.Release(pid))
        except OSError as e:
            logger.error("cannot ask the keeper to reap %d: %s", pid, e)

    def adopt(self, pids: list[int], timeout: float = 30.0) -> None:
        self._adopted.clear()
        self.send(messages.Adopt(pids))
        if not self._adopted.wait(timeout):
            raise HandoverFailed("the keeper did not answer Adopt")

    # -- the reader thread -------------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                msg, fds = wire.recv(self._sock, messages.from_keeper)
            except EOFError:
                return  # the keeper is gone (PDEATHSIG ends this process too)
            except (OSError, ValueError) as e:
                logger.error("a bad message from the keeper: %s", e)
                continue
            if isinstance(msg, messages.Adopted):
                self._adopted.set()
            elif isinstance(msg, messages.Exited):
                assert self._call_soon is not None
                self._call_soon(self._exited, msg.pid, msg.normally, msg.value)
            elif isinstance(msg, messages.HandOver) and fds and self.on_handover is not None:
                successor = socket.socket(fileno=fds[0])
                wire.close_all(fds[1:])
                threading.Thread(target=self.on_handover, args=(successor,), name="router-handover",
                                 daemon=True).start()
            else:
                wire.close_all(fds)

    def _exited(self, pid: int, normally: bool, value: int) -> None:
        on_exit = self._watched.pop(pid, None)
        if on_exit is None:
            self._ended[pid] = (normally, value)
        else:
            on_exit(normally, value)


# -- the old process ---------------------------------------------------------------------------------

def give(sock: socket.socket, listen: str, journaled: bool,
         hand_over: Callable[[Callable[[list[Carried]], None]], None], refuse: Callable[[RouterError | None], None],
         starting: Callable[[], int], handed_over: Callable[[], None]) -> None:
    """Hand the running execs to the successor at the other end of `sock`. Returns if it failed (the
    execs go on here); once the successor commits, never (`handed_over` ends this process; so does
    a successor that dies after committing, exiting with keeper.RESTART)."""
    sock.settimeout(HELLO_SECS)
    try:
        hello, fds = wire.recv(sock, messages.from_successor)
        wire.close_all(fds)
        if not isinstance(hello, messages.Hello) or hello.version != messages.VERSION:
            version = hello.version if isinstance(hello, messages.Hello) else "none"
            raise HandoverFailed(f"the new process speaks handover protocol {version}, this one {messages.VERSION}")
        if not journaled:
            raise HandoverFailed("this router runs without a journal (--no-journal): nothing can take it over")
        refuse(RouterError(grpc.StatusCode.UNAVAILABLE, "the router is handing over to a new process: retry"))
        try:
            _wait_for_spawns(starting)
            port = _port(listen)
            listeners.reuse_port(port, True)
            try:
                hand_over(lambda carried: _send(sock, listen, carried, handed_over))
            finally:
                listeners.reuse_port(port, False)
        finally:
            refuse(None)
    except (HandoverFailed, OSError, EOFError, ValueError) as e:
        logger.error("handover failed, serving on: %s", e)
        try:
            wire.send(sock, messages.Refused(str(e)))
        except OSError:
            pass
    finally:
        sock.close()


def _send(sock: socket.socket, listen: str, carried: list[Carried], handed_over: Callable[[], None]) -> None:
    """On the frozen loop thread: the execs out, then wait for the successor."""
    wire.send(sock, messages.Frozen(listen, len(carried)))
    for running, pending, fds in carried:
        for i in range(0, len(pending), wire.CHUNK):
            wire.send(sock, messages.StdinChunk(running.exec_id, pending[i:i + wire.CHUNK]))
        wire.send(sock, messages.Running(running), fds)
    wire.send(sock, messages.End())
    sock.settimeout(COMMIT_SECS)
    commit, fds = wire.recv(sock, messages.from_successor)
    wire.close_all(fds)
    if not isinstance(commit, messages.Commit):
        raise HandoverFailed(f"the new process said {type(commit).__name__}, not Commit")
    logger.info("handover: %d running execs given to the new process", len(carried))
    sock.settimeout(SERVING_SECS)
    try:
        serving, fds = wire.recv(sock, messages.from_successor)
        wire.close_all(fds)
        ok = isinstance(serving, messages.Serving)
    except (OSError, EOFError, ValueError):
        ok = False
    if not ok:
        logger.error("handover: the new process failed after taking the journal: restarting from it")
        os._exit(RESTART)
    handed_over()
    threading.Event().wait()  # the loop stays frozen: this process only ends now


def _wait_for_spawns(starting: Callable[[], int]) -> None:
    deadline = time.monotonic() + SPAWNS_SECS
    while starting():
        if time.monotonic() > deadline:
            raise HandoverFailed(f"spawns did not finish within {SPAWNS_SECS}s")
        time.sleep(0.005)


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# -- the new process ---------------------------------------------------------------------------------

def take(sock: socket.socket) -> tuple[str, list[Carried]]:
    """From the old process: the address it listens on and its running execs. HandoverFailed if it
    refuses (it serves on)."""
    sock.settimeout(COMMIT_SECS)
    failpoint = os.environ.get(FAILPOINT, "")
    wire.send(sock, messages.Hello(messages.VERSION + (failpoint == "version"), __version__))
    frozen, fds = wire.recv(sock, messages.from_old)
    wire.close_all(fds)
    if isinstance(frozen, messages.Refused):
        raise HandoverFailed(f"the serving process refused: {frozen.reason}")
    if not isinstance(frozen, messages.Frozen):
        raise HandoverFailed(f"the serving process said {type(frozen).__name__}")
    carried: list[Carried] = []
    pending: dict[str, list[bytes]] = {}
    while True:
        msg, fds = wire.recv(sock, messages.from_old)
        if isinstance(msg, messages.StdinChunk):
            pending.setdefault(msg.exec_id, []).append(msg.data)
        elif isinstance(msg, messages.Running):
            carried.append((msg.exec, b"".join(pending.pop(msg.exec.exec_id, [])), fds))
            continue
        elif isinstance(msg, messages.End):
            break
        wire.close_all(fds)
    if failpoint == "before-commit":
        os._exit(3)  # as a successor that crashes with the execs in hand
    if failpoint == "slow-commit":
        time.sleep(2)  # as a successor on a loaded machine: the old process waits, frozen
    return frozen.listen, carried
