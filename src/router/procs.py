"""Signalling what an exec started: its leader, its process group, and for terminals its session."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable


def processes_in(groups: set[int], sessions: set[int]) -> list[int]:
    """Pids whose process group is in `groups` or whose session is in `sessions` (one /proc scan)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # comm may hold spaces and parentheses: fields resume after the last ')'.
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pgrp, session = int(fields[2]), int(fields[3])
        if pgrp in groups or session in sessions:
            found.append(int(name))
    return found


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
