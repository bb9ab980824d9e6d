"""Signalling what an exec started: its leader, its process group, and for terminals its session."""
from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 1, 36, 37


def _stats() -> Iterable[tuple[int, list[bytes]]]:
    """(pid, the fields of /proc/pid/stat after comm) of every process (one /proc scan)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # comm may hold spaces and parentheses: fields resume after the last ')'.
                yield int(name), f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue


def processes_in(groups: set[int], sessions: set[int]) -> list[int]:
    """Pids whose process group is in `groups` or whose session is in `sessions` (one /proc scan)."""
    return [pid for pid, fields in _stats() if int(fields[2]) in groups or int(fields[3]) in sessions]


def started_between(earliest: float, latest: float) -> list[tuple[int, int]]:
    """(pid, process group) of the processes that started (wall clock, to a clock tick) in the window."""
    boot, hz = _boot_time(), os.sysconf("SC_CLK_TCK")
    return [(pid, int(fields[2])) for pid, fields in _stats() if earliest <= boot + int(fields[19]) / hz <= latest]


def command_line(pid: int) -> list[str] | None:
    """`pid`'s argv (None if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [arg.decode(errors="surrogateescape") for arg in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def environment_names(pid: int) -> set[str] | None:
    """The names of `pid`'s environment variables (None if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return {entry.split(b"=", 1)[0].decode(errors="replace") for entry in f.read().split(b"\0") if entry}
    except OSError:
        return None


def start_time(pid: int) -> float | None:
    """When `pid` started, on the wall clock to a clock tick (None if there is no such process).
    Costly right after a spawn (the kernel waits for the exec): read it only when needed."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    """The boot's wall-clock time to the microsecond (/proc/stat's btime is whole seconds, which
    would make a process look up to a second older than it is)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id: pids and start times mean something only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def killpg_quietly(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_exists(pgid: int) -> bool:
    """Whether a process group still has members (signal 0 checks without sending)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_pidfd(pidfd: int, sig: int) -> None:
    """Signal a process through its pidfd: never another process that reused the pid."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass


def kill_sessions(sessions: Iterable[int], sig: int) -> None:
    """Signal every process of these sessions: a terminal's shell puts each job in its own group."""
    wanted = set(sessions)
    if wanted:
        for pid in processes_in(set(), wanted):
            kill_quietly(pid, sig)


def inherits_orphans() -> bool:
    """True when orphaned processes are re-parented to this one: PID 1 of a container, or a
    child subreaper (prctl PR_SET_CHILD_SUBREAPER, kept across exec)."""
    if os.getpid() == 1:
        return True
    flag = ctypes.c_int(0)
    return _libc().prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0


def prctl(option: int, value: int) -> None:
    """prctl(2) with one integer argument (PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER); OSError if it fails."""
    if _libc().prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (a zombie does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def is_router_serve(pid: int) -> bool:
    """Whether `pid` runs `router serve` (a stale file may name a pid now someone else's)."""
    argv = command_line(pid)
    return argv is not None and "serve" in argv and any("router" in arg for arg in argv)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def reap_orphans(thread_id: int) -> int:
    """Reap the exited processes among one thread's children; returns how many.

    Orphans are re-parented to the main thread of their reaper, while the engine's own children
    are its loop thread's, so looking only at the main thread's never touches an exec's leader
    (which the engine leaves unreaped on purpose)."""
    try:
        with open(f"/proc/self/task/{thread_id}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return 0
    reaped = 0
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        reaped += done != 0
    return reaped
