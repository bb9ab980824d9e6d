"""This process's children, and whether a process is still alive."""
from __future__ import annotations

import contextlib
import os


def children() -> list[int]:
    """Live and zombie children of this process (any thread's)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
